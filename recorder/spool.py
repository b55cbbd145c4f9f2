"""A running stream's pieces in the writer process: in memory while small, on file once large.

A stream is stored whole (its raw bytes are what replay serves), but its size has no bound: a
1,000,000-event stream is 266 MB of SSE for 9.4 MB of reassembled output. The writer
reassembles a stream as it runs (`StreamSummariser`), so it needs the pieces only to store
them at the end: past `KEEP_IN_MEMORY` bytes they go to a file, `KEEP_IN_MEMORY` at a time,
and the store copies them into the row a block at a time (`SqliteStore`, incremental blob
I/O). What stays in memory is at most `KEEP_IN_MEMORY` of pieces and 16 bytes a piece.

The file is named (`path`, beside the database, with an index of the pieces' lengths and
times at `path.index`), so that the proxy can let go of the pieces it holds once they are on
file (`Writer`), and a writer process started after one that died can take the file over
(`adopt`). A file that cannot be written (a full disk) is not a lost stream: the pieces stay
in memory, as they would have without a file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from array import array
from collections.abc import Iterator

log = logging.getLogger("llmtap.writer")

BLOCK = 1 << 20
"""Bytes read from the file at a time."""
KEEP_IN_MEMORY = 8 << 20
"""Bytes of a stream's pieces held in memory before they go to a file."""
_PAIR = 16  # an index entry: length and arrival time, two int64


class PieceSpool:
    """`extend(pieces, times)` any number of times; read back with `blocks()` or `batches()`.
    The body is the file's bytes (its first `file_pieces` pieces), then the held pieces."""

    __slots__ = (
        "path",
        "keep_in_memory",
        "size",
        "lengths",
        "times",
        "file_pieces",
        "_held",
        "_held_bytes",
        "_fd",
        "_index_fd",
        "_file_bytes",
        "_file_failed",
        "_owner",
    )

    def __init__(self, path: str | None = None, keep_in_memory: int = KEEP_IN_MEMORY) -> None:
        self.path = path
        """Where the file goes once there is one (its directory is made then); None: an
        unnamed file in the system's temporary directory, which nothing can take over."""
        self.keep_in_memory = keep_in_memory
        self.size = 0
        self.lengths = array("q")
        self.times = array("q")
        self.file_pieces = 0
        """Pieces on file, the first ones."""
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._fd: int | None = None
        self._index_fd: int | None = None
        self._file_bytes = 0
        self._file_failed = False
        self._owner = True  # close() deletes the files (a snapshot's does not)

    @classmethod
    def adopt(cls, path: str, pieces: int, keep_in_memory: int = KEEP_IN_MEMORY) -> PieceSpool:
        """The file another writer process left at `path`, cut back to its first `pieces`
        pieces (those the proxy was told are on file: it kept every later one). Raises
        OSError when the file does not hold them."""
        spool = cls(path, keep_in_memory)
        spool._fd = os.open(path, os.O_RDWR)
        try:
            spool._index_fd = os.open(path + ".index", os.O_RDWR)
            raw = os.pread(spool._index_fd, pieces * _PAIR, 0)
            if len(raw) != pieces * _PAIR:
                raise OSError(f"{path}.index holds {len(raw) // _PAIR} pieces, not {pieces}")
            pairs = array("q", raw)
            spool.lengths, spool.times = pairs[0::2], pairs[1::2]
            spool.size = spool._file_bytes = sum(spool.lengths)
            if os.fstat(spool._fd).st_size < spool.size:
                raise OSError(f"{path} is shorter than its {pieces} pieces")
            os.ftruncate(spool._fd, spool.size)
            os.ftruncate(spool._index_fd, pieces * _PAIR)
            spool.file_pieces = pieces
        except BaseException:
            spool.close()
            raise
        return spool

    def __len__(self) -> int:
        return self.size

    @property
    def on_file(self) -> bool:
        return self._fd is not None

    def extend(self, pieces: list[bytes], times: list[int]) -> bool:
        """Add pieces; says whether this moved pieces to the file."""
        count = sum(map(len, pieces))
        self.lengths.extend(map(len, pieces))
        self.times.extend(times)
        self.size += count
        self._held += pieces
        self._held_bytes += count
        if self._held_bytes > self.keep_in_memory and not self._file_failed:
            return self._spill()
        return False

    def _spill(self) -> bool:
        try:
            if self._fd is None:
                self._open()
            assert self._fd is not None and self._index_fd is not None
            # one copy of at most `keep_in_memory` bytes: one system call for thousands of pieces
            _write_all(self._fd, b"".join(self._held), self._file_bytes)
            first, last = self.file_pieces, self.file_pieces + len(self._held)
            pairs = array("q", bytes(_PAIR * (last - first)))
            pairs[0::2], pairs[1::2] = self.lengths[first:last], self.times[first:last]
            _write_all(self._index_fd, pairs.tobytes(), first * _PAIR)
        except OSError as exc:
            log.warning("a long stream stays in memory: its spool file failed (%s)", exc)
            self._file_failed = True
            return False
        self._file_bytes += self._held_bytes
        self.file_pieces += len(self._held)
        self._held, self._held_bytes = [], 0
        return True

    def _open(self) -> None:
        if self.path is None:
            self._fd, self._index_fd = _unnamed_file(), _unnamed_file()
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC
        self._fd = os.open(self.path, flags, 0o600)
        self._index_fd = os.open(self.path + ".index", flags, 0o600)

    def held(self) -> list[bytes]:
        """The pieces, while they are all in memory (not `on_file`)."""
        assert self._fd is None, "on file: read it with blocks() or batches()"
        return self._held

    def snapshot(self) -> PieceSpool:
        """The pieces so far, for a record written while the stream may still grow: the file
        only grows at its end, and the snapshot reads it up to where it ended (its own copy
        of the file's descriptor: the stream may be closed first)."""
        copy = PieceSpool(None, self.keep_in_memory)
        copy.size, copy.file_pieces = self.size, self.file_pieces
        copy.lengths, copy.times = array("q", self.lengths), array("q", self.times)
        copy._held, copy._held_bytes = list(self._held), self._held_bytes
        copy._file_bytes, copy._file_failed, copy._owner = self._file_bytes, True, False
        copy._fd = os.dup(self._fd) if self._fd is not None else None
        return copy

    def blocks(self, size: int = BLOCK) -> Iterator[bytes]:
        """The whole body, in order: the file's `size` bytes at a time, then the held pieces."""
        if self._fd is not None:
            offset = 0
            while offset < self._file_bytes:
                block = os.pread(self._fd, min(size, self._file_bytes - offset), offset)
                if not block:
                    raise OSError(f"a stream's spool file ends at {offset} bytes, not {self.size}")
                offset += len(block)
                yield block
        yield from self._held

    def batches(self, size: int = BLOCK) -> Iterator[tuple[list[bytes], list[int]]]:
        """The pieces again as they came, with their arrival times, about `size` bytes of
        them at a time (for a summariser that has to start over)."""
        data, at, piece, count = b"", 0, 0, self.file_pieces
        if self._fd is not None:
            offset = 0
            while piece < count:
                block = os.pread(self._fd, min(size, self._file_bytes - offset), offset)
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
        """Let go of the pieces, and delete the files (not a snapshot's: they are the stream's)."""
        self._held = []
        for fd in (self._fd, self._index_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = self._index_fd = None
        if self._owner and self.path is not None:
            for name in (self.path, self.path + ".index"):
                with contextlib.suppress(OSError):
                    os.unlink(name)


def _unnamed_file() -> int:
    fd, name = tempfile.mkstemp(prefix="llmtap-stream-")
    os.unlink(name)  # gone with the process
    return fd


def _write_all(fd: int, data: bytes, offset: int) -> None:
    """All of `data` at `offset` (pwrite may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        offset += written
        view = view[written:]


def new_spool_dir(db: str) -> str:
    """Where one proxy's long streams go: `<db>-spool/<pid>-<random>` (made when a stream
    first needs it). What proxies that were killed left there is removed now."""
    base = f"{db}-spool"
    with contextlib.suppress(OSError):
        for name in os.listdir(base):
            pid = name.split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                remove_spool_dir(os.path.join(base, name))
    return os.path.join(base, f"{os.getpid()}-{os.urandom(4).hex()}")


def remove_spool_dir(spool_dir: str) -> None:
    """A proxy's long-stream files, and their parent beside the database once no other
    llmtap has its own there."""
    shutil.rmtree(spool_dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(spool_dir))  # fails while another proxy has its own there


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
