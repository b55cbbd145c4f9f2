"""Writer: the proxy's end of the writer process (`llmtap.recorder.writer_process`).

The event loop hands over finished recordings; they leave as one pickled frame per loop
iteration, whatever the number of requests that finished in it, and the writer process builds
and stores them on the other core (group commit). `commit()` resolves when the recording is
safe from a kill: with `write_ahead` (record mode), once it is written into the in-flight log
(`llmtap.recorder.inflight`: `pwrite`s into the page cache, no wait for the disk); else,
or when the log cannot take it, when the writer process says it is in the database. Nothing
here parses a response.

What makes it hold up:
- Bounded: at most `max_pending` recordings (or `max_pending_bytes` of them) are in flight.
  Beyond that `commit()` waits for room (back-pressure on the request that would add to it)
  and `submit_nowait()` drops the recording and counts it in `health.dropped`: memory never
  grows with an overload, and the overload is visible in `/api/health`.
- A writer process that dies (killed, crashed) is started again and gets every recording it
  had not acknowledged; writes are upserts by id, so a recording written twice is one row. A
  recording whose writer died three times under it is given up as failed (it may be what kills
  it); a writer killed while it starts is started again for 30 s.
- A store that fails (locked, disk full, deleted) never fails a request: `commit()` returns
  False, and the failure is counted and kept in `health`.

Streams are sent along while they run (`track()`): every `PROGRESS_EVERY` seconds the pieces
that arrived go to the writer process, which reassembles them there and then, so that the
commit at `[DONE]` (which the client waits for) has only the last few pieces left to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from llmtap.recorder.batch_writer import WriterHealth
from llmtap.recorder.frames import FrameDecoder, encode
from llmtap.recorder.inflight import InflightLog, inflight_path
from llmtap.recorder.memory import return_freed_memory
from llmtap.recorder.recording import Recording
from llmtap.recorder.spool import new_spool_dir, remove_spool_dir
from llmtap.recorder.writer_process import WriterConfig, pack_for_log, pack_recording

log = logging.getLogger("llmtap.writer")

_GIVE_UP_AFTER = 2
"""Refusals of the store to open before the recordings waiting are reported as failed."""
_DEATHS = 3
"""Writer deaths a recording may see before it is reported as failed (it may be what kills it;
a process killed from outside now and then is no reason to lose what it held)."""
_RESTART_FOR_S = 30.0
"""How long a writer that dies while it starts is started again before the recordings waiting
are reported as failed."""


class StoreRefused(RuntimeError):
    """The writer process started, and the store would not open (its reason)."""


_START_TIMEOUT = 60.0
PROGRESS_EVERY = 0.01
"""Seconds between two sends of the pieces of running streams: a few events each, at most
100 small frames a second whatever the number of streams. Each frame wakes the writer process;
paced streams cost 7% less CPU an event with 10 ms than with 5, with the same event delays."""
HOLD_AT_MOST = 32 << 20
"""Bytes of a stream the proxy holds that the writer process has not put on file yet, past
which the stream's relay waits for it (`catch_up`): a stream that comes faster than the
writer stores it (266 MB of bulk SSE at ~100 MB/s against ~60 MB/s) is held once, bounded,
instead of whole, twice (the pieces, and their frames waiting for the socket)."""
PAUSE_AT_MOST = 1.0
"""Seconds a relay waits for the writer process to put pieces on file; a writer that does
not (its disk failed) is not waited for again, and the stream is held in memory."""
IN_FLIGHT_AT_MOST = 64
"""Recordings in the in-flight log at most; past it a commit is waited for (back-pressure). A
writer process that does not keep up must slow its clients down, as it did when every commit
was waited for: without a bound, bulk streams from 32 clients filled the 8 MB ring (~300
streams, ~180 ms of the writer's work) and waited behind all of it (stream-c32 p99 229 ms;
64: 76-88 ms)."""
_BIG = 1 << 20
"""A recording this large counts toward `TRIM_AFTER` once it is written and let go of."""
TRIM_AFTER = 64 << 20
"""Bytes of large recordings let go of, after which the proxy gives freed memory back."""
STALLED_AFTER_S = 2.0
"""How long the oldest recording may wait for its commit before health says the writer is stuck
(a commit takes milliseconds)."""
FRAME_BYTES = 4 << 20
"""Bytes of a stream's pieces in one frame at most. A stream that outruns the writer process
goes across in frames of this size, not in one frame of all of it (266 MB for a 1,000,000-
event stream) that both ends would hold twice while they encode and decode it."""


@dataclass(slots=True)
class _Pending:
    recording: Recording
    future: asyncio.Future[bool] | None
    size: int
    deaths: int = 0
    """Writer processes that died while this recording was in their hands."""
    sent: bool = False
    """In the hands of the current writer process."""
    since: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class TrackedStream:
    """A stream being relayed, and how many of its pieces the writer process has."""

    recording: Recording
    sent: int = 0
    opened: bool = False
    """The writer process was sent its head (it knows the stream)."""
    ended: bool = False
    """Its relay ended while a record of it was not acknowledged yet."""
    paused: asyncio.Future[None] | None = None
    """Set while its relay should wait for the writer process (see `HOLD_AT_MOST`)."""
    never_pause: bool = False
    held_bytes: int = 0
    """Once `on_file`: bytes of the pieces held, counted up to piece `counted` (each piece
    is counted once, not summed again every `PROGRESS_EVERY`)."""
    counted: int = 0

    @property
    def on_file(self) -> int:
        """Its first pieces the writer process put on file, which the recording let go of
        (`Recording.dropped`) and a new writer process would take over. Such a stream stays
        open in both processes after `[DONE]` until its relay ended and its records are
        acknowledged."""
        return self.recording.dropped


class Writer:
    def __init__(
        self,
        config: WriterConfig,
        on_written: Callable[[list[Recording]], None] | None = None,
        *,
        max_pending: int = 4096,
        max_pending_bytes: int = 256 << 20,
        write_ahead: bool = False,
    ) -> None:
        self.config = config
        self.write_ahead = write_ahead
        """Answer once a recording is in the in-flight log, not once it is committed."""
        self._inflight: InflightLog | None = None
        self.on_written = on_written
        """Called on the event loop with the recordings that reached the store."""
        self.health = WriterHealth()
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._link: _Link | None = None
        self._pending: dict[int, _Pending] = {}
        self._pending_bytes = 0
        self._outbox: list[tuple[Any, ...]] = []
        self._unacked = 0
        """Recordings sent to the writer process and not yet acknowledged."""
        self._next_seq = 0
        self._room: asyncio.Event | None = None
        self._streams: dict[str, TrackedStream] = {}
        """Streams being relayed, by exchange id (see `track`)."""
        self._ticking = False
        self._closing = False
        self._big_freed = 0
        self._restarting: asyncio.Task[None] | None = None
        self._base_written = 0
        self._base_failed = 0
        # flush() runs in other threads: it waits for the lowest unacknowledged sequence number
        self._low_water = 0
        self._locked = False
        """Another process holds the database locked: commits are not waited for (`_on_locked`)."""
        self._acked = threading.Condition()
        self._changed: asyncio.Event | None = None
        """Set when recordings were acknowledged (`settled` waits on it)."""
        self._kept_in_log: set[int] = set()
        """Recordings in the in-flight log that this proxy gave up on (the log keeps them)."""

    # --- the event loop's side ----------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer process; raises with its reason when the store cannot be opened."""
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Event()
        self._room.set()
        self._changed = asyncio.Event()
        if self.config.spool_dir is None:
            spool_dir = await asyncio.to_thread(new_spool_dir, self.config.db)
            self.config = replace(self.config, spool_dir=spool_dir)
        db = self.config.db
        if self.write_ahead or os.path.exists(inflight_path(db)):
            # the log, to answer from (record mode), or to store what a killed llmtap left in
            # it (every mode); a llmtap running on the database holds it: its own business
            inflight = await asyncio.to_thread(InflightLog.take, db)
            if inflight is None and self.write_ahead:
                log.warning("no in-flight log for %s: responses wait for their commit", db)
            if inflight is not None:
                await self._recover(inflight)
                return
        await self._spawn()

    async def _recover(self, inflight: InflightLog) -> None:
        """Start the writer process storing what the log holds first, then answer from the
        log (record mode) or let go of it. A writer process that dies while it stores them (an
        entry that kills it) is started again without: the log is kept for a later try."""
        try:
            recovered = await self._spawn(recover_from=inflight.path)
        except StoreRefused:
            inflight.close(stored=False)
            raise
        except Exception as exc:  # noqa: BLE001 - died while storing: start without
            log.error("storing what %s holds stopped the writer process: %s", inflight.path, exc)
            recovered = False
            try:
                await self._spawn()
            except BaseException:
                inflight.close(stored=False)
                raise
        if not recovered:
            log.error(
                "what a stopped llmtap left in %s could not be stored; it is kept there, and "
                "responses wait for their commit",
                inflight.path,
            )
            inflight.close(stored=False)
            return
        if not self.write_ahead:
            inflight.close(stored=True)
            return
        try:
            inflight.start(self.config, self._next_seq)
        except OSError as exc:  # a full disk
            log.warning("no in-flight log (%s): responses wait for their commit", exc)
            inflight.close(stored=True)  # (what it held was stored before `ready`)
            return
        self._inflight = inflight
        # from now on the writer process (and any started again) stores what the log holds
        # if this proxy dies
        self.config = replace(self.config, inflight=inflight.path)
        self._link.transport.write(encode([("inflight", inflight.path)]))  # type: ignore[union-attr]

    async def commit(self, recording: Recording) -> bool:
        """Write the recording; returns once it is durable (True) or could not be (False).
        While another process keeps the database locked it returns False at once, the
        recording handed over: it lands when the lock is let go (or fails with the batch)."""
        assert self._loop is not None and self._room is not None, "Writer.start() first"
        while not self._has_room():
            self._room.clear()
            await self._room.wait()
        if self._write_ahead(recording):
            return True  # in the in-flight log: the client may have its answer now
        if self._locked:
            self._enqueue(recording, None)
            return False
        future = self._loop.create_future()
        self._enqueue(recording, future)
        return await future

    def _write_ahead(self, recording: Recording) -> bool:
        """Copy the recording into the in-flight log and hand it over; False when it is to be
        waited for: a stream (or a long body) sent along while it ran, too large a recording,
        or a log full or holding `IN_FLIGHT_AT_MOST` already.

        Streams wait for their commit. In the log (the whole recording copied again, where
        the writer process has most of its pieces already), a `[DONE]` came ~1.5 ms sooner at
        the end of a stream a model paces over seconds, and bulk streams from 32 clients cost
        more: 1,153 us a stream (of it the event loop's process 562) against 994 (459), p99
        226 ms against 37 (full runs, before `IN_FLIGHT_AT_MOST`: 76-88 ms with it)."""
        inflight = self._inflight
        if (
            inflight is None
            or recording.exchange_id in self._streams
            or recording.dropped  # (its first pieces are in the writer process only)
            or inflight.in_flight >= IN_FLIGHT_AT_MOST
        ):
            return False
        payload = pack_for_log(recording)
        if not inflight.append(self._next_seq, payload):
            return False
        self._enqueue(recording, None, payload)
        return True

    async def settled(self, timeout: float = 5.0) -> None:
        """Wait until every recording handed over so far is stored (or given up), when
        responses do not wait for it: a client that had its answer and then reads the API
        finds its trace there."""
        if self._inflight is None or not self._pending or self._changed is None:
            return
        target = self._next_seq
        deadline = time.monotonic() + timeout
        # (not while another process keeps the database locked: nothing can be stored then,
        # and every read would wait its timeout out)
        while self._low_water < target and not self._locked:  # (the lowest not written)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def health_report(self) -> dict[str, Any]:
        """`health` as the API shows it, with how long the oldest recording not yet written has
        waited: a writer that answers nothing (a database another process keeps locked, a
        stalled disk or process) holds every request it has, and says nothing while it does."""
        report = self.health.as_dict()
        oldest = min((p.since for p in self._pending.values()), default=None)
        waited = 0.0 if oldest is None else time.monotonic() - oldest
        report["oldest_pending_s"] = round(waited, 3)
        if waited > STALLED_AFTER_S:
            report["ok"] = False
            report["last_error"] = (
                f"the writer has finished nothing for {waited:.1f} s (a database locked by "
                "another process, a stalled disk, or a stopped writer process); requests wait"
            )
        return report

    def submit_nowait(self, recording: Recording) -> None:
        """Hand over a recording from a path that cannot wait (cancellation, disconnects); an
        overloaded writer drops it, counted in `health.dropped`."""
        if not self._has_room():
            self.health.dropped += 1
            log.warning(
                "writer overloaded (%d recordings waiting): %s %s not recorded",
                len(self._pending),
                recording.method,
                recording.path,
            )
            return
        if not self._write_ahead(recording):
            self._enqueue(recording, None)

    def track(self, recording: Recording) -> TrackedStream:
        """A stream starts: send its pieces along as they come, until it is handed over. Its
        relay checks `paused` on the handle between pieces (see `catch_up`)."""
        stream = self._streams[recording.exchange_id] = TrackedStream(recording)
        if not self._ticking and self._loop is not None:
            self._ticking = True
            self._loop.call_later(PROGRESS_EVERY, self._progress)
        return stream

    async def catch_up(self, stream: TrackedStream) -> None:
        """The relay of a stream that outruns the writer process waits for it to put pieces
        on file (at most `PAUSE_AT_MOST`)."""
        paused = stream.paused
        if paused is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(paused), PAUSE_AT_MOST)
        except TimeoutError:
            log.warning("the writer process is not keeping up with a stream: held in memory")
            stream.never_pause = True
            _resume(stream)

    def untrack(self, recording: Recording) -> None:
        """The relay of a tracked stream ended; a stream never handed over is forgotten by
        the writer process too (nothing of it is written)."""
        stream = self._streams.get(recording.exchange_id)
        if stream is None:
            return
        if stream.on_file and self._has_pending(recording):
            stream.ended = True  # its file is what a new writer process would need
            return
        self._drop(stream)

    def _drop(self, stream: TrackedStream) -> None:
        _resume(stream)
        del self._streams[stream.recording.exchange_id]
        if stream.opened and self._link_up():
            self._link.transport.write(encode([("drop", stream.recording.exchange_id)]))  # type: ignore[union-attr]
        if stream.on_file and self._loop is not None:  # a long stream: its pieces are freed
            self._loop.run_in_executor(None, return_freed_memory)

    def _has_pending(self, recording: Recording) -> bool:
        return any(p.recording is recording for p in self._pending.values())

    async def close(self, timeout: float = 30.0) -> None:
        """Write everything handed over so far, then stop the writer process."""
        self._closing = True
        if self._restarting is not None:
            with contextlib.suppress(Exception):
                await self._restarting
        link, process = self._link, self._process
        if link is not None and not link.lost.done():
            # everything not sent yet, regardless of acknowledgements, then the end
            outbox, self._outbox = self._outbox, []
            link.transport.write(encode([*outbox, ("quit",)]))
            try:
                await asyncio.wait_for(asyncio.shield(link.lost), timeout)
            except TimeoutError:
                log.error("the writer process did not finish in %.0f s; stopping it", timeout)
        if process is not None:
            await asyncio.to_thread(_reap, process, 5.0)
        if self._inflight is not None:
            # removed once all of it is stored; else kept, and stored by the next start on the
            # database or by a reading command
            self._inflight.close(stored=not self._inflight.in_flight)
            self._inflight = None
        self._fail_all("llmtap stopped before this recording was written")
        self._link = self._process = None
        if self.config.spool_dir is not None:
            await asyncio.to_thread(remove_spool_dir, self.config.spool_dir)

    def flush(self, timeout: float = 10.0) -> None:
        """Block until everything handed over so far is written (for tests and the CLI).
        Call it from another thread than the event loop's."""
        target = self._next_seq
        with self._acked:
            self._acked.wait_for(lambda: self._low_water >= target, timeout)

    # --- internals ----------------------------------------------------------------------------

    def _has_room(self) -> bool:
        return (
            len(self._pending) < self.max_pending and self._pending_bytes < self.max_pending_bytes
        )

    def _link_up(self) -> bool:
        return self._link is not None and not self._link.lost.done()

    def _enqueue(
        self,
        recording: Recording,
        future: asyncio.Future[bool] | None,
        packed: bytes | None = None,
    ) -> None:
        """`packed`: the whole recording, pickled already (for the in-flight log)."""
        seq = self._next_seq
        self._next_seq += 1
        size = len(recording.request_body) + sum(map(len, recording.chunks)) + 512
        self._pending[seq] = _Pending(recording, future, size)
        self._pending_bytes += size
        self.health.pending = len(self._pending)
        stream = self._streams.get(recording.exchange_id)
        had, keep = 0, False  # pieces the writer process has already; the stream stays open
        if stream is None and recording.dropped:
            # its first pieces were on file and let go of, and nothing holds them now: a record
            # of the rest alone must say so (never, by the order `Forwarder` keeps)
            lost = "llmtap lost the first pieces of this response"
            recording.error = f"{recording.error}; {lost}" if recording.error else lost
        if stream is not None:
            keep = stream.on_file > 0
            if not keep:
                del self._streams[recording.exchange_id]
            if self._link_up() and (
                (keep and not stream.opened)  # a new writer process has not taken it over yet
                or _bytes_after(recording, stream.sent) > FRAME_BYTES
            ):
                self._send_pieces(stream)  # ahead of the record, frame by frame
            had = stream.sent
            if keep:  # the open stream gets the record's pieces too: progress must not resend
                stream.sent = recording.piece_count
        values = packed if packed is not None and not had else pack_recording(recording, had)
        self._outbox.append(("record", seq, values, had, keep))
        if len(self._outbox) == 1 and not self._unacked:
            # one frame for everything that finishes in this iteration of the loop
            self._loop.call_soon(self._send_outbox)  # type: ignore[union-attr]

    def _send_outbox(self) -> None:
        """Send what waits, unless the writer is still busy with what it was sent: it could not
        start on more before it answers, and one frame per transaction instead of one per loop
        iteration saves a system call on each side for every request (self-clocking)."""
        if self._unacked or not self._outbox:
            return
        link = self._link
        if link is None or link.lost.done():
            return  # the writer is being restarted: it gets everything pending once it is up
        outbox, self._outbox = self._outbox, []
        self._unacked = len(outbox)
        pending = self._pending
        for _, seq, *_ in outbox:
            if seq in pending:
                pending[seq].sent = True
        link.transport.write(encode(outbox))

    def _progress(self) -> None:
        """Send the pieces of running streams that arrived since the last time, in one frame."""
        streams = self._streams
        if not streams or self._closing:
            self._ticking = False
            return
        self._loop.call_later(PROGRESS_EVERY, self._progress)  # type: ignore[union-attr]
        if not self._link_up():
            return  # being restarted: the new process gets every stream from its start
        if self._link.transport.get_write_buffer_size():  # type: ignore[union-attr]
            return  # the writer process is behind: the pieces go with the record instead
        messages = []
        for stream in streams.values():
            rec = stream.recording
            if stream.on_file and stream.paused is None and not stream.never_pause:
                stream.held_bytes += _bytes_after(rec, stream.counted)
                stream.counted = rec.piece_count
                if stream.held_bytes > HOLD_AT_MOST:
                    stream.paused = self._loop.create_future()  # type: ignore[union-attr]
            if rec.piece_count > stream.sent:
                if _bytes_after(rec, stream.sent) > FRAME_BYTES:
                    self._send_pieces(stream)
                else:  # the common case: one frame for the news of every stream
                    messages.append(_pieces_message(stream, rec.piece_count))
        if messages:
            self._link.transport.write(encode(messages))  # type: ignore[union-attr]

    def _send_pieces(self, stream: TrackedStream) -> None:
        """Every piece of the stream the writer process lacks, `FRAME_BYTES` to a frame."""
        rec = stream.recording
        chunks, dropped = rec.chunks, rec.dropped
        frames = []
        # (the head goes even with no piece: a stream on file a new writer process takes over)
        while stream.sent < rec.piece_count or not stream.opened:
            end, size = stream.sent - dropped, 0
            while end < len(chunks) and (
                end == stream.sent - dropped or size + len(chunks[end]) <= FRAME_BYTES
            ):
                size += len(chunks[end])
                end += 1
            frames.append(encode([_pieces_message(stream, dropped + end)]))
        self._link.transport.writelines(frames)  # type: ignore[union-attr]

    async def _spawn(self, recover_from: str | None = None) -> bool:
        """Start a writer process; says whether it stored what the in-flight log at
        `recover_from` held, or True."""
        loop = self._loop
        assert loop is not None
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "llmtap.recorder.writer_process", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        _, link = await loop.create_unix_connection(lambda: _Link(self, loop), sock=ours)
        # the writer logs as the proxy's `llmtap` loggers are set now
        level = logging.getLogger("llmtap").getEffectiveLevel()
        config = replace(self.config, log_level=level, recover_from=recover_from)
        link.transport.write(encode(config))
        try:
            recovered = await asyncio.wait_for(asyncio.shield(link.ready), _START_TIMEOUT)
        except BaseException:
            link.transport.close()
            await asyncio.to_thread(_reap, self._process, 5.0)
            raise
        self._link = link
        return recovered is not False

    def _on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "done":
            self._on_done(message[1])
            self._apply_health(message[2])
        elif kind == "health":
            self._apply_health(message[1])
        elif kind == "locked":
            self._on_locked()
            self._apply_health(message[1])
        elif kind == "on file":
            self._on_file(message[1], message[2])

    def _on_file(self, exchange_id: str, pieces: int) -> None:
        """The writer process has the first `pieces` of a stream on file: let go of them (a
        long stream is held in memory once, in the writer process, 8 MB at most)."""
        stream = self._streams.get(exchange_id)
        if stream is None or pieces <= stream.on_file:
            return  # (handed over without `keep`: the recording keeps every piece)
        rec = stream.recording
        cut = pieces - rec.dropped
        del rec.chunks[:cut]
        del rec.chunk_times_ns[:cut]
        rec.dropped = pieces
        stream.held_bytes, stream.counted = _bytes_after(rec, pieces), rec.piece_count
        if stream.paused is not None and stream.held_bytes <= HOLD_AT_MOST // 2:
            _resume(stream)

    def _on_locked(self) -> None:
        """Another process holds the database's write lock (a sqlite3 shell or a browser left in
        a transaction). The writer waits for it up to `LOCKED_WAITS` busy timeouts (a minute);
        responses held for their commit meanwhile would hang their clients as long. They go
        out now, and later ones do not wait, until the writer has written again: SPEC 6's
        "already recorded" cannot be had while the file refuses every write, and forwarding
        goes on."""
        if not self._locked:
            log.warning(
                "the database is locked by another process: responses no longer wait for "
                "their recording until it is let go"
            )
        self._locked = True
        for pending in self._pending.values():
            if pending.future is not None and not pending.future.done():
                pending.future.set_result(False)
        if self._changed is not None:
            self._changed.set()  # reads waiting in `settled` stop waiting

    def _on_done(self, acks: list[tuple[int, bool, str]]) -> None:
        # a batch ended, written or given up: commits are waited for again (a write that meets
        # the lock again says so again, one busy timeout in). Kept until a batch was written,
        # the flag outlived a lock that failed its batch, and responses went out unrecorded
        # with the database fine again
        self._locked = False
        self._unacked = max(0, self._unacked - len(acks))
        self._send_outbox()
        written: list[Recording] = []
        for seq, ok, trace_id in acks:
            pending = self._pending.pop(seq, None)
            if pending is None:
                continue
            self._pending_bytes -= pending.size
            if pending.size > _BIG:
                self._big_freed += pending.size
            pending.recording.trace_id = trace_id
            if ok:
                written.append(pending.recording)
            if pending.future is not None and not pending.future.done():
                pending.future.set_result(ok)
        self._after_change()
        if written and self.on_written is not None:
            try:
                self.on_written(written)
            except Exception:
                log.exception("on_written failed")
        if self._big_freed > TRIM_AFTER and self._loop is not None:
            # large bodies let go of stay in the C heap (16 bodies of 31 MB left ~250 MB of RSS):
            # given back off the event loop, as after a long stream
            self._big_freed = 0
            self._loop.run_in_executor(None, return_freed_memory)

    def _after_change(self) -> None:
        # a long stream whose relay ended is let go of once no record of it waits (written,
        # or given up)
        ended = [s for s in self._streams.values() if s.ended]
        for stream in ended:
            if not self._has_pending(stream.recording):
                self._drop(stream)
        self.health.pending = len(self._pending)
        if self._inflight is not None:
            self._inflight.acknowledged(self._pending, self._kept_in_log)
            self._changed.set()  # type: ignore[union-attr]
        if self._has_room() and self._room is not None:
            self._room.set()
        low = min(self._pending) if self._pending else self._next_seq
        with self._acked:
            self._low_water = low
            self._acked.notify_all()

    def _apply_health(self, child: dict[str, Any]) -> None:
        h = self.health
        h.written = self._base_written + child["written"]
        h.failed = self._base_failed + child["failed"]
        h.ok = child["ok"]
        if child["last_error"] is not None:
            h.last_error, h.last_error_at = child["last_error"], child["last_error_at"]

    def _on_lost(self) -> None:
        if self._closing or self._loop is None:
            return
        self._restarting = self._loop.create_task(self._restart())

    async def _restart(self) -> None:
        process = self._process
        code = await asyncio.to_thread(_reap, process, 5.0) if process is not None else None
        self._base_written, self._base_failed = self.health.written, self.health.failed
        self.health.note_failure(
            f"the writer process stopped (exit code {code}); starting it again"
        )
        self._base_failed = self.health.failed
        for seq, pending in list(self._pending.items()):
            # only what the dead process had: a recording still waiting to be sent is innocent
            if pending.sent:
                pending.sent = False
                pending.deaths += 1
                if pending.deaths >= _DEATHS:
                    self._give_up(
                        seq, f"the writer process stopped {_DEATHS} times while writing it"
                    )
        self._after_change()
        for stream in self._streams.values():
            # the next process has none of their pieces, but those on file it takes over
            stream.sent, stream.opened = stream.on_file, False
            _resume(stream)
        delay, refusals, since = 0.05, 0, time.monotonic()
        while not self._closing:
            try:
                await self._spawn()
                break
            except Exception as exc:  # noqa: BLE001 - the store may come back (disk, file)
                # a store that refuses to open (its disk, its file) is asked twice; a process
                # that died before it was ready (killed again) is started again for a while
                refusals += isinstance(exc, StoreRefused)
                self.health.note_failure(f"the writer process cannot start again: {exc}")
                self._base_failed = self.health.failed
                if refusals >= _GIVE_UP_AFTER or time.monotonic() - since > _RESTART_FOR_S:
                    # the requests waiting on it are answered (unrecorded) rather than held
                    self._fail_all(str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        else:
            return
        for stream in self._streams.values():
            if stream.on_file:  # its file taken over before any record of it arrives
                self._send_pieces(stream)
        outbox = []
        for seq, p in sorted(self._pending.items()):
            rec = p.recording
            stream = self._streams.get(rec.exchange_id)
            if stream is not None and stream.recording is rec and stream.on_file:
                outbox.append(("record", seq, pack_recording(rec, stream.sent), stream.sent, True))
            elif not rec.dropped:
                outbox.append(("record", seq, pack_recording(rec), 0, False))
            else:  # (never: a stream on file stays open until its records are acknowledged)
                self._give_up(seq, "its first pieces are gone with the writer process")
        self._after_change()
        self._outbox = outbox
        self._unacked = 0
        self._send_outbox()
        self._restarting = None

    def _give_up(self, seq: int, reason: str) -> None:
        if self._inflight is not None and self._inflight.holds(seq):
            # its client had its answer: the log keeps it for the next start or reading command
            self._kept_in_log.add(seq)
        pending = self._pending.pop(seq)
        self._pending_bytes -= pending.size
        log.error(
            "not recorded: %s %s: %s", pending.recording.method, pending.recording.path, reason
        )
        if pending.future is not None and not pending.future.done():
            pending.future.set_result(False)

    def _fail_all(self, reason: str) -> None:
        for seq in list(self._pending):
            self._give_up(seq, reason)
        self._after_change()


class _Link(asyncio.Protocol):
    """The socket to the writer process."""

    def __init__(self, writer: Writer, loop: asyncio.AbstractEventLoop) -> None:
        self.writer = writer
        self.decoder = FrameDecoder()
        self.ready: asyncio.Future[bool | None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for message in self.decoder.feed(data):
            if message[0] == "ready":
                self.ready.set_result(message[1])
            elif message[0] == "failed":
                self.ready.set_exception(StoreRefused(message[1]))
            else:
                self.writer._on_message(message)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError("the writer process exited before it was ready"))
        self.lost.set_result(None)
        if self.writer._link is self:
            self.writer._on_lost()


def _resume(stream: TrackedStream) -> None:
    paused, stream.paused = stream.paused, None
    if paused is not None and not paused.done():
        paused.set_result(None)


def _bytes_after(rec: Recording, piece: int) -> int:
    """Bytes of the recording's pieces from `piece` on."""
    start = piece - rec.dropped
    return sum(map(len, rec.chunks[start:])) if start else sum(map(len, rec.chunks))


def _pieces_message(stream: TrackedStream, end: int) -> tuple[Any, ...]:
    """The stream's pieces from the first the writer process lacks to `end` (the head, if
    the process does not know the stream yet), counted as sent."""
    rec = stream.recording
    head = None
    if not stream.opened:
        head = (rec.method, rec.path, rec.response_headers, rec.started_ns, stream.on_file)
        stream.opened = True
    first, last = stream.sent - rec.dropped, end - rec.dropped
    stream.sent = end
    return ("chunks", rec.exchange_id, head, rec.chunks[first:last], rec.chunk_times_ns[first:last])


def _reap(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Wait for the process to exit (killing it after `timeout`); its exit code."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


__all__ = ["TrackedStream", "Writer", "WriterConfig", "WriterHealth"]
