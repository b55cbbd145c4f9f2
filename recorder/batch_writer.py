"""BatchWriter: from finished recordings to rows in the store, a batch per transaction.

The heart of the writer process (`llmtap.recorder.writer_process`): whatever is waiting is
built and written in one transaction (group commit: ~7 us a row batched against ~250 us for a
commit per row). A store that fails (locked, disk full, deleted) never fails a request: the
recording is reported as not written, the failure is counted and kept in `health`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmtap.recorder.recording import Recording
from llmtap.recorder.records import Batch
from llmtap.recorder.sqlite import StoreReplaced

log = logging.getLogger("llmtap.writer")

LOCKED_WAITS = 12
"""Busy timeouts (5 s each) a batch waits out while another process holds the database's write
lock, before its records are tried one at a time (and, failing, kept as raw exchanges)."""


def _locked(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED") or (
        "database is locked" in str(exc)
    )


class Sink(Protocol):
    def write(self, batches: Sequence[Batch]) -> None: ...
    def idle(self) -> None: ...
    def close(self) -> None: ...


@dataclass(slots=True)
class WriterHealth:
    written: int = 0
    failed: int = 0
    ok: bool = True
    """The last write reached the store."""
    last_error: str | None = None
    last_error_at: float | None = None
    dropped: int = 0
    """Recordings given up without being written because the writer was overloaded."""
    pending: int = 0
    """Recordings handed to the writer and not yet written."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "written": self.written,
            "failed": self.failed,
            "dropped": self.dropped,
            "pending": self.pending,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }

    def note_failure(self, message: str) -> None:
        self.failed += 1
        self.ok = False
        self.last_error = message
        self.last_error_at = time.time()
        log.error("recording failed: %s", message)

    def note_problem(self, message: str) -> None:
        """Something is wrong, and nothing has failed yet (a lock waited for)."""
        self.ok = False
        self.last_error = message
        self.last_error_at = time.time()
        log.warning("recording delayed: %s", message)


@dataclass
class BatchWriter:
    sink: Sink
    build: Callable[[Recording], Batch]
    fallback: Callable[[Recording], Batch] | None = None
    """The raw exchange alone, for a recording whose full batch cannot be built or stored:
    what the traffic meant may be lost, the exchange itself is not."""
    health: WriterHealth = field(default_factory=WriterHealth)
    locked_waits: int = LOCKED_WAITS
    on_locked: Callable[[], None] | None = None
    """Told when a write first finds the database locked by another process (the proxy then
    stops holding responses for their commit: see `Writer.commit`)."""
    _locked_out: bool = False
    """The last write gave up on a database another process kept locked."""

    def write(self, recordings: Sequence[Recording]) -> list[Batch | None]:
        """Build and store the recordings; the batch that reached the store for each one
        (None where nothing could be stored)."""
        if not recordings:
            return []
        batches = [self._build(r) for r in recordings]
        self._locked_out = False
        ok = self._write(batches)
        for i, recording in enumerate(recordings):
            # (under a lock that outlasted the waits, a raw exchange would wait for it again)
            if not ok[i] and self.fallback is not None and not self._locked_out:
                raw = self._build(recording, self.fallback)
                if raw is not None and self._write_one(raw):
                    ok[i], batches[i] = True, raw
        self.health.written += sum(ok)
        return [b if good else None for b, good in zip(batches, ok, strict=True)]

    def idle(self) -> None:
        """Nothing is waiting: the store may tidy up (a checkpoint)."""
        try:
            self.sink.idle()
        except Exception as exc:  # a checkpoint that fails is retried at the next idle
            self.health.note_failure(str(exc))

    def close(self) -> None:
        self.sink.close()

    def _build(
        self, recording: Recording, build: Callable[[Recording], Batch] | None = None
    ) -> Batch | None:
        try:
            return (build or self.build)(recording)
        except Exception as exc:
            log.warning(
                "could not build a record of %s %s: %r", recording.method, recording.path, exc
            )
            if build is not None or self.fallback is None:
                self.health.note_failure(f"could not build a record: {exc!r}")
            return None

    def _write(self, batches: list[Batch | None]) -> list[bool]:
        good = [b for b in batches if b is not None]
        waits = replaced = 0
        while True:
            try:
                if good:
                    self.sink.write(good)
                self.health.ok = True
                return [b is not None for b in batches]
            except StoreReplaced as exc:  # the store opened the new file: the batch goes there
                self.health.note_failure(str(exc))
                replaced += 1
                if replaced > 2:
                    break
            except sqlite3.OperationalError as exc:
                # another process holds the write lock (a sqlite3 shell left in a transaction):
                # the batch waits, whole, rather than lose its traces record by record
                if not _locked(exc):
                    break
                if waits >= self.locked_waits:  # no record is to blame: all fail, at once
                    self.health.note_failure(str(exc))
                    self._locked_out = True
                    return [False] * len(batches)
                waits += 1
                self.health.note_problem(
                    f"the database is locked by another process; waiting ({exc})"
                )
                if waits == 1 and self.on_locked is not None:
                    self.on_locked()
            except Exception:  # noqa: BLE001 - which record it was is found below
                break
        if len(good) == 1:
            return [self._write_one(good[0]) if b is not None else False for b in batches]
        # one poison record must fail only itself: retry the batch one record at a time
        return [b is not None and self._write_one(b) for b in batches]

    def _write_one(self, batch: Batch) -> bool:
        try:
            self.sink.write([batch])
            return True
        except Exception as exc:
            self.health.note_failure(str(exc))
            return False
