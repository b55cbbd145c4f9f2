"""Writer: one thread owns the database; the event loop hands it finished recordings.

Whatever is waiting when the thread wakes is built and written in one transaction (group
commit: ~7 us a row batched against ~250 us for a commit per row), then each waiting request
is released. Building a batch (decompression, SSE decoding, reassembly) happens here too, so
the event loop never parses a response.

A store that fails (locked, disk full, deleted) never fails a request: `commit()` returns
False, the failure is counted and kept in `health`, and the proxy goes on forwarding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmtap.recorder.recording import Recording
from llmtap.recorder.records import Batch

log = logging.getLogger("llmtap.writer")

MAX_BATCH = 512


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
    batches: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "written": self.written,
            "failed": self.failed,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }


_Item = tuple[Recording, "asyncio.Future[bool] | None"]
# what the queue carries: a recording to write, an event to set once everything before it is
# written (flush), or None to stop
_Message = _Item | threading.Event | None


@dataclass
class Writer:
    sink_factory: Callable[[], Sink]
    build: Callable[[Recording], Batch]
    fallback: Callable[[Recording], Batch] | None = None
    """The raw exchange alone, for a recording whose full batch cannot be built or stored:
    what the traffic meant may be lost, the exchange itself is not."""
    on_written: Callable[[list[Batch]], None] | None = None
    """Called in the writer thread with the batches that reached the store."""
    health: WriterHealth = field(default_factory=WriterHealth)
    _queue: queue.SimpleQueue[_Message] = field(default_factory=queue.SimpleQueue)
    _thread: threading.Thread | None = None
    _started: threading.Event = field(default_factory=threading.Event)
    _start_error: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="llmtap-writer", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    async def commit(self, recording: Recording) -> bool:
        """Write the recording; returns once it is durable (True) or could not be (False)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.put((recording, future))
        return await future

    def submit_nowait(self, recording: Recording) -> None:
        """Queue a recording from a path that cannot wait (cancellation, disconnects)."""
        self._queue.put((recording, None))

    def close(self, timeout: float = 30.0) -> None:
        """Drain everything queued, then stop the thread."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def flush(self, timeout: float = 10.0) -> None:
        """Block until everything queued so far is written (for tests and the CLI)."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    # --- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            sink = self.sink_factory()
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        try:
            while True:
                first = self._queue.get()
                items = [first]
                while len(items) < MAX_BATCH:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                self._handle(sink, [i for i in items if isinstance(i, tuple)])
                for item in items:
                    if isinstance(item, threading.Event):
                        item.set()
                if any(item is None for item in items):
                    return
                if self._queue.empty():
                    self._idle(sink)
        finally:
            sink.close()

    def _handle(self, sink: Sink, items: list[_Item]) -> None:
        if not items:
            return
        batches = [self._build(r) for r, _ in items]
        ok = self._write(sink, batches)
        for i, (recording, _) in enumerate(items):
            if not ok[i] and self.fallback is not None:
                raw = self._build(recording, self.fallback)
                if raw is not None and self._write_one(sink, raw):
                    ok[i], batches[i] = True, raw
        self.health.written += sum(ok)
        if self.on_written is not None:
            self.on_written([b for b, good in zip(batches, ok, strict=True) if good and b])
        self.health.batches += 1
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bool], bool]]] = {}
        for (_, future), result in zip(items, ok, strict=True):
            if future is not None:
                by_loop.setdefault(future.get_loop(), []).append((future, result))
        for loop, results in by_loop.items():
            # the loop may have closed while we wrote: then nobody is waiting any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, results)

    def _idle(self, sink: Sink) -> None:
        try:
            sink.idle()
        except Exception as exc:  # a checkpoint that fails is retried at the next idle
            self._note_failure(str(exc))

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
                self._note_failure(f"could not build a record: {exc!r}")
            return None

    def _write(self, sink: Sink, batches: list[Batch | None]) -> list[bool]:
        good = [b for b in batches if b is not None]
        try:
            if good:
                sink.write(good)
            self.health.ok = True
            return [b is not None for b in batches]
        except Exception as exc:
            if len(good) == 1:
                self._note_failure(str(exc))
                return [False] * len(batches)
        # one poison record must fail only itself: retry the batch one record at a time
        return [b is not None and self._write_one(sink, b) for b in batches]

    def _write_one(self, sink: Sink, batch: Batch) -> bool:
        try:
            sink.write([batch])
            return True
        except Exception as exc:
            self._note_failure(str(exc))
            return False

    def _note_failure(self, message: str) -> None:
        self.health.failed += 1
        self.health.ok = False
        self.health.last_error = message
        self.health.last_error_at = time.time()
        log.error("recording failed: %s", message)


def _resolve(results: list[tuple[asyncio.Future[bool], bool]]) -> None:
    for future, ok in results:
        if not future.done():
            future.set_result(ok)
