"""A running stream's pieces in the writer process: in memory while small, on file once large.

A stream is stored whole (its raw bytes are what replay serves), but its size has no bound: a
1,000,000-event stream is 266 MB of SSE for 9.9 MB of reassembled output. The writer
reassembles a stream as it runs (`StreamSummariser`), so past `KEEP_IN_MEMORY` bytes it needs the
pieces only to store them at the end: they go to an unnamed temporary file beside the
database (not /tmp, often memory itself), and the store copies them into the row a block at a
time (`SqliteStore`, incremental blob I/O). What stays in memory is 16 bytes a piece (its
length and arrival time).

Nothing here outlives the writer process: a writer that dies takes its files with it, and the
proxy sends the new one every running stream again from its first piece.
"""

from __future__ import annotations

import os
import tempfile
from array import array
from collections.abc import Iterator
from typing import BinaryIO

BLOCK = 1 << 20
"""Bytes read from the file at a time."""
KEEP_IN_MEMORY = 8 << 20
"""Bytes of a stream's pieces held in memory before they go to a file."""


class PieceSpool:
    """`extend(pieces, times)` any number of times; read back with `blocks()` or `batches()`."""

    __slots__ = ("directory", "keep_in_memory", "size", "lengths", "times", "_held", "_file")

    def __init__(self, directory: str | None = None, keep_in_memory: int = KEEP_IN_MEMORY) -> None:
        self.directory = directory
        """Where the file goes (the database's directory); None: the system's temporary one."""
        self.keep_in_memory = keep_in_memory
        self.size = 0
        self.lengths = array("q")
        self.times = array("q")
        self._held: list[bytes] = []
        self._file: BinaryIO | None = None

    def __len__(self) -> int:
        return self.size

    @property
    def on_file(self) -> bool:
        return self._file is not None

    def extend(self, pieces: list[bytes], times: list[int]) -> None:
        self.lengths.extend(map(len, pieces))
        self.times.extend(times)
        self.size += sum(map(len, pieces))
        if self._file is not None:
            self._file.writelines(pieces)
            return
        self._held += pieces
        if self.size > self.keep_in_memory:
            # closed in close(), when the recording is written or the stream dropped
            self._file = tempfile.TemporaryFile(  # noqa: SIM115
                dir=self.directory, prefix="llmtap-stream-"
            )
            self._file.writelines(self._held)
            self._held = []

    def held(self) -> list[bytes]:
        """The pieces, while they are all in memory (not `on_file`)."""
        assert self._file is None, "on file: read it with blocks() or batches()"
        return self._held

    def blocks(self, size: int = BLOCK) -> Iterator[bytes]:
        """The whole body, in order, `size` bytes at a time (held pieces as they are)."""
        if self._file is None:
            yield from self._held
            return
        self._file.flush()
        fd, offset = self._file.fileno(), 0
        while offset < self.size:
            block = os.pread(fd, min(size, self.size - offset), offset)
            if not block:
                raise OSError(f"the stream's spool file ends at {offset} of {self.size} bytes")
            offset += len(block)
            yield block

    def batches(self, size: int = BLOCK) -> Iterator[tuple[list[bytes], list[int]]]:
        """The pieces again as they came, with their arrival times, about `size` bytes of
        them at a time (for a summariser that has to start over)."""
        if self._file is None:
            yield self._held, list(self.times)
            return
        data, at, piece, count = b"", 0, 0, len(self.lengths)
        for block in self.blocks(size):
            data = data[at:] + block if at < len(data) else block
            at, start = 0, piece
            while piece < count and at + self.lengths[piece] <= len(data):
                at += self.lengths[piece]
                piece += 1
            if piece > start:
                pieces, pos = [], 0
                for length in self.lengths[start:piece]:
                    pieces.append(data[pos : pos + length])
                    pos += length
                yield pieces, list(self.times[start:piece])
        if piece < count:  # (only zero-length pieces can be left: nothing was read for them)
            yield [b""] * (count - piece), list(self.times[piece:])

    def close(self) -> None:
        """Let go of the pieces (the file is deleted: it never had a name)."""
        self._held = []
        if self._file is not None:
            self._file.close()
            self._file = None
