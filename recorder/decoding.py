"""Content-Encoding decoders: a copy of what the upstream sent, read to understand it.

The client gets the upstream's bytes as sent (but for a stream compressed although llmtap asked
for it uncompressed, to take out the usage it added: `proxy/decoded_stripping.py`); llmtap
decodes a copy to record it (and the proxy, to see where a compressed stream ends:
`proxy/stream_end.py`).
Each decoder is incremental (`decompress(chunk)` then `flush()`), so a compressed stream is
still decoded chunk by chunk and each SSE event keeps its arrival time. Every reader bounds what
it decodes (`at_most`, `PIECE_AT_MOST`): what an upstream sends is not to be trusted to inflate
to a sane size.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Protocol

import brotli
import zstandard


class DecodedTooLarge(ValueError):
    """A body or a piece decodes to more than its reader allows: a few KB of brotli can be
    gigabytes (a compression bomb, from a hostile or broken upstream)."""


DECODING_ERRORS = (zlib.error, brotli.error, zstandard.ZstdError, ValueError)
"""What the decoders raise on bytes that do not decode (`DecodedTooLarge` is a ValueError)."""


class Decoder(Protocol):
    def decompress(self, data: bytes, at_most: int = 0) -> bytes:
        """`data` decoded; with `at_most`, DecodedTooLarge rather than more than that many
        bytes (never produced in full first)."""
        ...

    def flush(self) -> bytes: ...


DECODED_AT_MOST = 64 << 20
"""A compressed body is read decoded up to this size: 32 MB of gzipped zeros would be 32 GB, and
a 1.6 KB brotli answer 1 GB (a writer process killed by the kernel, three times, before the
recording is given up). The exchange keeps the bytes as sent either way."""

PIECE_AT_MOST = 16 << 20
"""What one piece of a stream may decode to: a read of a compressed SSE stream is a few KB to a
few hundred KB, ~5-20x that decoded; a brotli bomb of 1.6 KB is 1 GB."""


def _check(out: bytes, at_most: int) -> bytes:
    if at_most and len(out) > at_most:
        raise DecodedTooLarge(f"decodes to more than {at_most:,} bytes")
    return out


class Identity:
    def decompress(self, data: bytes, at_most: int = 0) -> bytes:
        return data  # (no bigger than what came: nothing to bound)

    def flush(self) -> bytes:
        return b""


class Zlib:
    def __init__(self, wbits: int) -> None:
        self._d = zlib.decompressobj(wbits)

    def decompress(self, data: bytes, at_most: int = 0) -> bytes:
        # max_length stops zlib at the bound; what is left waits in unconsumed_tail, unread
        return _check(self._d.decompress(data, at_most + 1 if at_most else 0), at_most)

    def flush(self) -> bytes:
        return self._d.flush()


class Deflate(Zlib):
    """`deflate` is zlib-wrapped by the RFC but raw in the wild; try both, as browsers do."""

    def __init__(self) -> None:
        super().__init__(zlib.MAX_WBITS)
        self._raw_tried = False

    def decompress(self, data: bytes, at_most: int = 0) -> bytes:
        try:
            return super().decompress(data, at_most)
        except zlib.error:
            if self._raw_tried:
                raise
            self._raw_tried = True
            self._d = zlib.decompressobj(-zlib.MAX_WBITS)
            return super().decompress(data, at_most)


class Brotli:
    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def decompress(self, data: bytes, at_most: int = 0) -> bytes:
        if not at_most:
            return bytes(self._d.process(data))
        out = bytes(self._d.process(data, output_buffer_limit=at_most + 1))
        if not self._d.can_accept_more_data():  # stopped at the bound, more to come
            raise DecodedTooLarge(f"decodes to more than {at_most:,} bytes")
        return _check(out, at_most)

    def flush(self) -> bytes:
        return b""


class Zstd:
    STEP = 256
    """Bytes fed at a time under a bound: zstd's decompressor has none of its own, and a block
    (at least 4 bytes) may stand for 128 KB, so a step makes at most 8 MB."""

    def __init__(self) -> None:
        # every frame: a server may end one per flush (as curl, Go and httpx2 read them all)
        self._d = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)

    def decompress(self, data: bytes, at_most: int = 0) -> bytes:
        if not at_most or len(data) <= self.STEP:
            return _check(self._d.decompress(data), at_most)
        parts, size = [], 0
        for at in range(0, len(data), self.STEP):
            part = self._d.decompress(data[at : at + self.STEP])
            size += len(part)
            if size > at_most:
                raise DecodedTooLarge(f"decodes to more than {at_most:,} bytes")
            parts.append(part)
        return b"".join(parts)

    def flush(self) -> bytes:
        return b""


def is_identity(content_encoding: str | None) -> bool:
    """No Content-Encoding or `identity`: the bytes as sent (`decoder_for` gives `Identity`)."""
    return content_encoding is None or content_encoding.strip().lower() in ("", "identity")


def decoder_for(content_encoding: str | None) -> Decoder:
    """The decoder for a Content-Encoding value; ValueError for one we cannot read."""
    encodings = [e.strip().lower() for e in (content_encoding or "").split(",") if e.strip()]
    if len(encodings) > 1:
        raise ValueError(f"stacked content encodings are not decoded: {content_encoding}")
    name = encodings[0] if encodings else "identity"
    if name == "identity":
        return Identity()
    if name in ("gzip", "x-gzip"):
        return Zlib(zlib.MAX_WBITS | 16)
    if name == "deflate":
        return Deflate()
    if name == "br":
        return Brotli()
    if name == "zstd":
        return Zstd()
    raise ValueError(f"unknown content encoding: {content_encoding}")


def readable(content_encoding: str | None) -> bool:
    """Whether `decoder_for` reads this Content-Encoding (identity included)."""
    try:
        decoder_for(content_encoding)
    except ValueError:
        return False
    return True


def encoded(data: bytes, content_encoding: str | None) -> bytes:
    """`data` encoded again in a coding `decoder_for` reads: a body changed after decoding
    (a key masked) that must still be what its Content-Encoding says."""
    name = (content_encoding or "").strip().lower()
    if name in ("gzip", "x-gzip"):
        return gzip.compress(data)
    if name == "deflate":
        return zlib.compress(data)
    if name == "br":
        return brotli.compress(data)
    if name == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def decode_at_most(body: bytes, content_encoding: str | None, at_most: int) -> bytes | None:
    """`body` decoded, or None when it decodes to more than `at_most` bytes (a few KB of gzipped
    zeros are gigabytes), found without making more than that: fed 256 bytes at a time, so
    that no step makes more than a few MB (one call for all of it held its output twice at the
    end). Raises as `decoder_for` and the decoders do for what does not decode."""
    decompressor = decoder_for(content_encoding)
    parts, size = [], 0
    try:
        for at in range(0, len(body), 256):
            part = decompressor.decompress(body[at : at + 256], at_most - size + 1)
            size += len(part)
            if size > at_most:
                return None
            parts.append(part)
        parts.append(decompressor.flush())
    except DecodedTooLarge:
        return None
    if size + len(parts[-1]) > at_most:
        return None
    return b"".join(parts)
