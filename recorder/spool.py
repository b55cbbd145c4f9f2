"""A running stream's pieces in the writer process: in memory while small, on file once large.

A stream is stored whole (its raw bytes are what replay serves), but its size has no bound: a
1,000,000-event stream is 266 MB of SSE for 9.9 MB of reassembled output. The writer
reassembles a stream as it runs (`StreamSummariser`), so it needs the pieces only to store
them at the end: past `KEEP_IN_MEMORY` bytes they go to an unnamed temporary file beside the
database (not /tmp, often memory itself), `KEEP_IN_MEMORY` at a time, and the store copies
them into the row a block at a time (`SqliteStore`, incremental blob I/O). What stays in
memory is at most `KEEP_IN_MEMORY` of pieces and 16 bytes a piece (its length and time).

A file that cannot be written (a full disk) is not a lost stream: the pieces stay in memory,
as they would have without the file. Nothing here outlives the writer process: a writer that
dies takes its files with it, and the proxy sends the new one every running stream again from
its first piece.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from array import array
from collections.abc import Iterator
from typing import BinaryIO

log = logging.getLogger("llmtap.writer")

BLOCK = 1 << 20
"""Bytes read from the file at a time."""
KEEP_IN_MEMORY = 8 << 20
"""Bytes of a stream's pieces held in memory before they go to a file."""


class PieceSpool:
    """`extend(pieces, times)` any number of times; read back with `blocks()` or `batches()`.
    The body is the file's bytes (the first `_file_pieces` pieces), then the held pieces."""

    __slots__ = (
        "directory",
        "keep_in_memory",
        "size",
        "lengths",
        "times",
        "_held",
        "_held_bytes",
        "_file",
        "_file_bytes",
        "_file_pieces",
        "_file_failed",
    )

    def __init__(self, directory: str | None = None, keep_in_memory: int = KEEP_IN_MEMORY) -> None:
        self.directory = directory
        """Where the file goes (the database's directory); None: the system's temporary one."""
        self.keep_in_memory = keep_in_memory
        self.size = 0
        self.lengths = array("q")
        self.times = array("q")
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._file: BinaryIO | None = None
        self._file_bytes = 0
        self._file_pieces = 0
        self._file_failed = False

    def __len__(self) -> int:
        return self.size

    @property
    def on_file(self) -> bool:
        return self._file is not None

    def extend(self, pieces: list[bytes], times: list[int]) -> None:
        count = sum(map(len, pieces))
        self.lengths.extend(map(len, pieces))
        self.times.extend(times)
        self.size += count
        self._held += pieces
        self._held_bytes += count
        if self._held_bytes > self.keep_in_memory and not self._file_failed:
            self._spill()

    def _spill(self) -> None:
        try:
            if self._file is None:
                # closed in close(), when the recording is written or the stream dropped
                self._file = tempfile.TemporaryFile(  # noqa: SIM115
                    dir=self.directory, prefix="llmtap-stream-"
                )
            self._file.seek(self._file_bytes)
            self._file.writelines(self._held)
            self._file.flush()
        except OSError as exc:
            log.warning("a long stream stays in memory: its spool file failed (%s)", exc)
            self._file_failed = True
            if self._file is not None:
                with contextlib.suppress(OSError):
                    self._file.truncate(self._file_bytes)
            return
        self._file_bytes += self._held_bytes
        self._file_pieces += len(self._held)
        self._held, self._held_bytes = [], 0

    def held(self) -> list[bytes]:
        """The pieces, while they are all in memory (not `on_file`)."""
        assert self._file is None, "on file: read it with blocks() or batches()"
        return self._held

    def blocks(self, size: int = BLOCK) -> Iterator[bytes]:
        """The whole body, in order: the file's `size` bytes at a time, then the held pieces."""
        if self._file is not None:
            fd, offset = self._file.fileno(), 0
            while offset < self._file_bytes:
                block = os.pread(fd, min(size, self._file_bytes - offset), offset)
                if not block:
                    raise OSError(f"a stream's spool file ends at {offset} bytes, not {self.size}")
                offset += len(block)
                yield block
        yield from self._held

    def batches(self, size: int = BLOCK) -> Iterator[tuple[list[bytes], list[int]]]:
        """The pieces again as they came, with their arrival times, about `size` bytes of
        them at a time (for a summariser that has to start over)."""
        data, at, piece, count = b"", 0, 0, self._file_pieces
        if self._file is not None:
            fd, offset = self._file.fileno(), 0
            while piece < count:
                block = os.pread(fd, min(size, self._file_bytes - offset), offset)
                offset += len(block)
                data = data[at:] + block if at < len(data) else block
                at, start, pos = 0, piece, 0
                while piece < count and at + self.lengths[piece] <= len(data):
                    at += self.lengths[piece]
                    piece += 1
                if not block and piece == start:
                    raise OSError(f"a stream's spool file ends at {offset} bytes")
                if piece > start:
                    pieces = []
                    for length in self.lengths[start:piece]:
                        pieces.append(data[pos : pos + length])
                        pos += length
                    yield pieces, self.times[start:piece].tolist()
        if self._held:
            yield self._held, self.times[count:].tolist()

    def close(self) -> None:
        """Let go of the pieces (the file is deleted: it never had a name)."""
        self._held = []
        if self._file is not None:
            self._file.close()
            self._file = None
