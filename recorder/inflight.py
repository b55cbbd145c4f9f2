"""The in-flight log: recordings whose clients have their answer, not yet in the database.

SPEC 6: a response a client received in full is already recorded, across a `kill -9`. Waiting
for the writer process to commit it before the answer's last bytes go out costs each request
a round trip between two processes and, one client at a time, a SQLite transaction of its own
(+0.5-0.8 ms). In record mode the proxy instead writes the finished recording into this file
and answers at once: a write into the page cache (no wait for the disk), which outlives any
process that dies (not a power cut, which SQLite's WAL at `synchronous=NORMAL` does not
survive either). The writer process stores it as before, and its acknowledgement frees the
room. (Written with `pwrite`, not through a shared mapping: on a full disk a write fails and
the recording is waited for as before, where a mapped page would kill the proxy with SIGBUS.)
Whoever finds entries that were never acknowledged stores them first: the next `llmtap serve`
on the database, the writer process whose proxy died, and any reading command (`settle`).

The file (`<db>-inflight`): a header page, then entries in a ring. An entry is a 24-byte head
(length, kind, epoch, sequence number) and the recording's values, pickled without any class
(`_PlainUnpickler` refuses to load one: the file may come from elsewhere). The payload is
written before the head, so an entry cut short by a kill is not found. The header names the
oldest entry not acknowledged (`tail`); each start of the file (a new `epoch`) disowns every
entry of the ones before. One proxy at a time appends to it, under an exclusive `flock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import pickle
import struct
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import orjson

log = logging.getLogger("llmtap.inflight")

SIZE = 8 << 20
"""Bytes of the ring. A recording larger than `LARGEST` or one that finds it full is waited
for as before (its commit acknowledged); the proxy puts 64 in it at most (a few KB each)."""
LARGEST = 2 << 20
_HEADER = 4096
_MAGIC = b"LLMTAPIF"
_VERSION = 1
_HEAD = struct.Struct("<IIQQ")  # length, kind, epoch, sequence number
_ENTRY, _WRAP = 1, 2
_FIELDS = struct.Struct("<8sIIQQQI")  # magic, version, (spare), epoch, tail, tail seq, config
_TAIL_AT = 24
_TAIL = struct.Struct("<QQ")  # offset, sequence number
_ROOM_LEFT = 4
"""A log is made only on a disk with room for this many of it: the last megabytes of a nearly
full disk are the database's."""
_OWN_FIELDS = ("spool_dir", "inflight", "recover_from", "log_level")
"""A proxy's own settings, not its capture switches: not kept for whoever stores its entries."""
_SETTLE_FOR_S = 5.0
"""How long a reading command waits for a running proxy's writer to store what is in flight."""


def inflight_path(db: str) -> str:
    return f"{db}-inflight"


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    values: list[Any]
    """What `pack_recording` made of the recording."""


class InflightLog:
    """The proxy's side: append a recording before its client gets the end of its answer;
    `acknowledged` once the writer process stored it."""

    def __init__(self, path: str, fd: int, size: int = SIZE) -> None:
        self.path = path
        self._fd = fd
        self._size = size
        self._epoch = 0
        self._head = _HEADER
        self._live: deque[tuple[int, int]] = deque()
        """(sequence number, offset) of every entry not acknowledged, oldest first."""
        self._next_seq = 0

    @classmethod
    def take(cls, db: str, wait: float = 0.5, size: int = SIZE) -> InflightLog | None:
        """The database's log, locked for this proxy; None when another llmtap holds it past
        `wait` seconds (a second proxy on the same database waits for its commits instead;
        the wait is for a writer process storing what its killed proxy left, 64 recordings
        at most)."""
        path = inflight_path(db)
        if not os.path.exists(path) and _free_bytes(path) < _ROOM_LEFT * size:
            log.warning("the disk of %s is nearly full: responses wait for their commit", db)
            return None
        deadline = time.monotonic() + wait
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:  # a folder llmtap may write the database in, and no more
                log.warning("no in-flight log (%s): responses wait for their commit", exc)
                return None
            try:
                if not try_lock(fd, max(0.0, deadline - time.monotonic())):
                    os.close(fd)
                    return None
                if same_file(fd, path):  # (not one a stopping proxy removed meanwhile)
                    return cls(path, fd, size)
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def start(self, config: Any, first_seq: int) -> None:
        """Disown what the file held (the writer process stored it before it said ready) and
        take the file into use; the writer's config is kept in the header, for whoever stores
        what this proxy leaves."""
        kept = {k: v for k, v in asdict(config).items() if k not in _OWN_FIELDS}
        blob = orjson.dumps(kept)
        if _FIELDS.size + len(blob) > _HEADER:
            blob = b""  # (paths of ~4 KB) a recovery then uses the default capture switches
        self._epoch = int.from_bytes(os.urandom(8), "little") or 1
        self._head, self._next_seq = _HEADER, first_seq
        fields = _FIELDS.pack(_MAGIC, _VERSION, 0, self._epoch, _HEADER, first_seq, len(blob))
        header = (fields + blob).ljust(_HEADER, b"\0")
        # the whole file written once: its blocks exist, so a write on a request's path never
        # needs the disk to find room (OSError here, on a full disk: no log, commits waited for)
        zeros = bytes(1 << 20)
        for at in range(_HEADER, self._size, len(zeros)):
            os.pwrite(self._fd, zeros[: self._size - at], at)
        os.pwrite(self._fd, header, 0)

    def append(self, seq: int, payload: bytes) -> bool:
        """Copy the entry in; False when it does not fit (too large, or the ring is full)."""
        need = _HEAD.size + len(payload)
        if len(payload) > LARGEST:
            return False
        at = self._place(need)
        if at is None:
            return False
        fd = self._fd
        try:
            if at != self._head and self._head + _HEAD.size <= self._size:
                _write_all(fd, _HEAD.pack(0, _WRAP, self._epoch, seq), self._head)
            _write_all(fd, payload, at + _HEAD.size)  # the payload first: see the module's doc
            _write_all(fd, _HEAD.pack(len(payload), _ENTRY, self._epoch, seq), at)
        except OSError as exc:  # (a full disk on a copy-on-write file system)
            log.warning("the in-flight log could not be written (%s): commits are waited for", exc)
            return False
        if not self._live:
            self._set_tail(at, seq)
        self._live.append((seq, at))
        self._head, self._next_seq = at + need, seq + 1
        return True

    def _place(self, need: int) -> int | None:
        """Where an entry of `need` bytes goes: at the head, or at the ring's start."""
        if not self._live:
            self._head = _HEADER  # (the tail follows the first entry appended)
            return _HEADER if _HEADER + need <= self._size else None
        tail = self._live[0][1]
        if self._head > tail:  # free: head..end, then start..tail
            if self._head + need <= self._size:
                return self._head
            return _HEADER if _HEADER + need <= tail else None
        # wrapped (or full: the head at the tail); an entry may end where the tail begins,
        # the walk stopping at an entry numbered below it
        return self._head if self._head + need <= tail and self._head != tail else None

    def acknowledged(self, pending: Any, kept: Any = ()) -> None:
        """Let go of the oldest entries no longer in `pending` (sequence numbers the writer
        process has not acknowledged yet) nor in `kept` (given up by this proxy: the log
        keeps them for whoever stores it next)."""
        live = self._live
        if not live or live[0][0] in pending or live[0][0] in kept:
            return
        while live and live[0][0] not in pending and live[0][0] not in kept:
            live.popleft()
        if live:
            self._set_tail(live[0][1], live[0][0])
        else:  # the next entry appended becomes the tail
            self._set_tail(self._head, self._next_seq)

    def _set_tail(self, offset: int, seq: int) -> None:
        # one write of 16 bytes in one page, which a kill does not tear; were it torn (the
        # offset new, the number old), the tail's entry has a number above the header's, which
        # `_walk` accepts (an older one never is)
        with contextlib.suppress(OSError):
            os.pwrite(self._fd, _TAIL.pack(offset, seq), _TAIL_AT)

    def holds(self, seq: int) -> bool:
        return any(s == seq for s, _ in self._live)

    @property
    def in_flight(self) -> int:
        return len(self._live)

    def close(self, stored: bool) -> None:
        """Let go of the file; `stored`: every entry is in the database (it is removed)."""
        if stored:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        os.close(self._fd)  # (the lock goes with it)


def _free_bytes(path: str) -> int:
    try:
        stat = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return 0
    return stat.f_bavail * stat.f_frsize


def _write_all(fd: int, data: bytes, at: int) -> None:
    if os.pwrite(fd, data, at) != len(data):  # (a short write: no room left)
        raise OSError("a short write")


def same_file(fd: int, path: str) -> bool:
    """The open file is the one at `path` now (not one removed, another made in its place)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def try_lock(fd: int, wait: float) -> bool:
    """Take the log's lock, waiting up to `wait` seconds for whoever holds it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        except OSError as exc:  # no locks on this file system (ENOLCK, EOPNOTSUPP): no log
            log.warning("the in-flight log cannot be locked: %s", exc)
            return False


class _PlainUnpickler(pickle.Unpickler):
    """Loads lists, tuples, dicts, strings, bytes and numbers, and refuses every class or
    function: unpickling a file found beside a database can then run no code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"the in-flight log holds a {module}.{name}: refused")


def plain_loads(data: bytes | memoryview) -> Any:
    return _PlainUnpickler(io.BytesIO(data)).load()


def read_log(path: str) -> tuple[dict[str, Any] | None, list[Entry]]:
    """The writer config and the entries not acknowledged, oldest first, of the log at
    `path` (none when it is missing or not a log). Only the header and those entries are
    read, not the whole ring: a writer process whose proxy died is quick about it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None, []
    try:
        size = os.fstat(fd).st_size
        header = os.pread(fd, _HEADER, 0)
        if size < _HEADER or len(header) < _HEADER:
            return None, []
        magic, version, _, epoch, tail, tail_seq, config_len = _FIELDS.unpack_from(header, 0)
        if magic != _MAGIC or version != _VERSION:
            return None, []
        config = None
        if config_len:
            with contextlib.suppress(orjson.JSONDecodeError):
                config = orjson.loads(header[_FIELDS.size : _FIELDS.size + config_len])
        entries = []
        # (the ring's size at most: a file grown past it, or a crafted sparse one of a
        # terabyte, is walked no further)
        for seq, payload in _walk(fd, min(size, SIZE), epoch, tail, tail_seq):
            try:
                entries.append(Entry(seq, plain_loads(payload)))
            except Exception as exc:  # noqa: BLE001 - one bad entry is no reason to lose the rest
                log.error("an in-flight recording could not be read: %s", exc)
        return config, entries
    except OSError:
        return None, []
    finally:
        os.close(fd)


def _walk(fd: int, size: int, epoch: int, at: int, first_seq: int) -> Iterator[tuple[int, bytes]]:
    """The entries from the tail on: numbers rise from one to the next (the proxy numbers the
    recordings it waits for too), so an entry of the ring's last lap, left after the head, ends
    the walk; a wrap mark carries the number of the entry it sends to the ring's start."""
    after, exact = first_seq - 1, None  # the next number must be above `after`, or `exact`
    walked = 0
    while walked <= size:
        if at < _HEADER or at + _HEAD.size > size:
            at = _HEADER
            walked += _HEAD.size
            continue
        head = os.pread(fd, _HEAD.size, at)
        if len(head) < _HEAD.size:
            return
        length, kind, entry_epoch, seq = _HEAD.unpack(head)
        if entry_epoch != epoch or (seq != exact if exact is not None else seq <= after):
            return
        if kind == _WRAP:
            if at == _HEADER or exact is not None:
                return  # a wrap mark at the start, or right after one: not the proxy's
            at, exact = _HEADER, seq
            walked += _HEAD.size
            continue
        if kind != _ENTRY or at + _HEAD.size + length > size:
            return
        payload = os.pread(fd, length, at + _HEAD.size)
        if len(payload) < length:
            return
        yield seq, payload
        at += _HEAD.size + length
        walked += _HEAD.size + length
        after, exact = seq, None


def disown(path: str) -> None:
    """Every entry of the log stored: a new epoch, so that none is found again."""
    with contextlib.suppress(OSError), open(path, "r+b") as f:
        f.seek(16)
        f.write(os.urandom(8))


def settle(db: str, wait: float = _SETTLE_FOR_S) -> None:
    """Before a reading command reads `db`: what a client received in full and the database
    lacks yet gets there. A proxy that runs stores it within milliseconds (waited for, at most
    `wait` seconds: the entries there now, not those that come meanwhile); entries that no
    llmtap holds (all of it was killed) are stored here."""
    path = inflight_path(db)
    if not os.path.exists(path):
        return
    deadline = time.monotonic() + wait
    target: int | None = None
    while True:
        seqs = [e.seq for e in read_log(path)[1]]
        if target is None:
            target = max(seqs, default=-1)
        if not seqs or seqs[0] > target:
            return
        if store_if_unheld(db, path, 0) is not None:
            return  # stored here (or it could not be: the database is read all the same)
        if time.monotonic() >= deadline:
            log.warning("a running llmtap has not stored what is in flight in %.0f s", wait)
            return
        time.sleep(0.005)


def store_if_unheld(
    db: str, path: str, wait: float, after: int = -1, writer: Any = None
) -> bool | None:
    """`store_entries` once the log's lock is had (waiting up to `wait` seconds for it); None
    when another llmtap holds it, or the file at `path` is gone or a new one (not this log)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not (try_lock(fd, wait) and same_file(fd, path)):
            return None
        return store_entries(db, path, after, writer)
    except Exception as exc:  # noqa: BLE001 - a read-only database, a broken one: said
        log.warning("llmtap could not store what was in flight in %s: %s", path, exc)
        return False
    finally:
        os.close(fd)


def store_entries(db: str, path: str, after: int = -1, writer: Any = None) -> bool:
    """Store the log's entries numbered above `after` into `db` (with `writer`, else one made
    from the config the log keeps), and disown them once every one is stored; the caller
    holds the log's lock. False when some could not be (a database locked by another process,
    a full disk): the log keeps them for the next try."""
    from llmtap.recorder.writer_process import WriterConfig, open_batch_writer, store_recovered

    config_fields, entries = read_log(path)
    entries = [e for e in entries if e.seq > after]
    stored = True
    if entries:
        own = writer is None
        if own:
            known = set(WriterConfig.__dataclass_fields__)
            kept = {k: v for k, v in (config_fields or {}).items() if k in known}
            kept["locked_waits"] = 1  # a reading command tries once, not for a minute
            try:  # with the capture switches of the llmtap that answered them
                writer = open_batch_writer(WriterConfig(**{**kept, "db": db}))
            except Exception as exc:  # noqa: BLE001 - its prices file gone: the defaults'
                log.warning("stored with the default settings (%s)", exc)
                writer = open_batch_writer(WriterConfig(db=db, locked_waits=1))
        try:
            stored = store_recovered(writer, db, [e.values for e in entries])
        finally:
            if own:
                writer.close()
        if stored:
            log.warning(
                "stored %d recording(s) that a stopped llmtap had answered (%s)",
                len(entries),
                path,
            )
        else:
            log.error("recordings in %s could not be stored yet; they are kept there", path)
    if stored:
        disown(path)
    return stored
