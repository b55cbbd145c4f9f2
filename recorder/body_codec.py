"""How a request or response body is kept in the database: as sent, or zstd-compressed.

A stream's SSE repeats its envelope in every event: a 100-event answer is ~25-30 KB on the wire
and ~0.5 KB compressed. Stored as sent, those bytes were most of the database (3.7 GB for
1,000,000 traces) and most of what each commit and checkpoint wrote (8 of a stream record's
~22 WAL pages, copied again into the database file by the checkpoint): under load the
checkpoint took a third of the writer's time, and its stalls showed in the p99 latency.

A packed body is `MARKER` followed by one zstd frame (which records its own size). The marker
cannot be mistaken for a body's own first bytes: a body that starts with it is always packed,
so `unpack_body` is exact for every input. Bodies under `PACK_FROM` bytes are kept as sent
(they fit in the row's page anyway), and so is a body that does not shrink (one the upstream
compressed already).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import zstandard

MARKER = b"\x00llmtap-zstd\x00"
PACK_FROM = 1024
LEVEL = 1  # on SSE, level 1 is within 1% of level 3's size at the same speed (~10 us a 25 KB body)

_local = threading.local()  # zstandard's (de)compressors are not for sharing between threads


def pack_body(body: bytes) -> bytes:
    """The form of `body` to store: packed when that is smaller, or when it must be."""
    if len(body) < PACK_FROM and not body.startswith(MARKER):
        return body
    packed = MARKER + _compressor().compress(body)
    if len(packed) < len(body) or body.startswith(MARKER):
        return packed
    return body


def pack_blocks(blocks: Iterable[bytes], size: int, at_most: int) -> bytes | None:
    """A long body (`size` bytes, given a block at a time) packed, or None as soon as its
    packed form passes `at_most` bytes: that form is held whole, so it must stay small (a long
    stream's SSE packs ~50 to 1; one that does not is copied into its row as sent)."""
    packer = _compressor().compressobj(size=size)  # the frame records the size, for unpacking
    parts, total = [MARKER], len(MARKER)
    for block in blocks:
        part = packer.compress(block)
        total += len(part)
        if total > at_most:
            return None
        parts.append(part)
    parts.append(packer.flush())
    packed = b"".join(parts)
    return packed if len(packed) <= at_most else None


def unpack_body(stored: bytes) -> bytes:
    """The body as it was sent, from what `pack_body` stored (or from a row written before
    bodies were packed: those never start with the marker)."""
    if not stored.startswith(MARKER):
        return stored
    return _decompressor().decompress(memoryview(stored)[len(MARKER) :])


def _compressor() -> zstandard.ZstdCompressor:
    compressor = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = zstandard.ZstdCompressor(level=LEVEL)
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return decompressor
