"""Content-Encoding decoders: a copy of what the upstream sent, read to understand it.

The client always gets the upstream's bytes as sent; llmtap decodes a copy to record it (and the
proxy, to see where a compressed stream ends: `proxy/stream_end.py`).
Each decoder is incremental (`decompress(chunk)` then `flush()`), so a compressed stream is
still decoded chunk by chunk and each SSE event keeps its arrival time.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import brotli
import zstandard


class Decoder(Protocol):
    def decompress(self, data: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class Identity:
    def decompress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class Zlib:
    def __init__(self, wbits: int) -> None:
        self._d = zlib.decompressobj(wbits)

    def decompress(self, data: bytes) -> bytes:
        return self._d.decompress(data)

    def flush(self) -> bytes:
        return self._d.flush()


class Deflate(Zlib):
    """`deflate` is zlib-wrapped by the RFC but raw in the wild; try both, as browsers do."""

    def __init__(self) -> None:
        super().__init__(zlib.MAX_WBITS)
        self._raw_tried = False

    def decompress(self, data: bytes) -> bytes:
        try:
            return super().decompress(data)
        except zlib.error:
            if self._raw_tried:
                raise
            self._raw_tried = True
            self._d = zlib.decompressobj(-zlib.MAX_WBITS)
            return self._d.decompress(data)


class Brotli:
    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def decompress(self, data: bytes) -> bytes:
        return bytes(self._d.process(data))

    def flush(self) -> bytes:
        return b""


class Zstd:
    def __init__(self) -> None:
        self._d = zstandard.ZstdDecompressor().decompressobj()

    def decompress(self, data: bytes) -> bytes:
        return self._d.decompress(data)

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


def decode_at_most(body: bytes, content_encoding: str | None, at_most: int) -> bytes | None:
    """`body` decoded, or None when it decodes to more than `at_most` bytes (a few KB of gzipped
    zeros are gigabytes): fed 256 bytes at a time, so that no step outgrows the limit by more
    than a few MB. Raises as `decoder_for` and the decoders do for what does not decode."""
    decompressor = decoder_for(content_encoding)
    parts, size = [], 0
    for at in range(0, len(body), 256):
        part = decompressor.decompress(body[at : at + 256])
        size += len(part)
        if size > at_most:
            return None
        parts.append(part)
    parts.append(decompressor.flush())
    return b"".join(parts)
