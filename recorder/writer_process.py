"""The writer process: owns the database; the proxy sends it finished recordings.

Why a process and not a thread: building a record (decompression, SSE decoding, reassembly)
and SQLite are CPU work, and a thread doing it fights the event loop for the GIL (issue 3's
measurements: ~130 us a request of hand-off and contention alone). A child process runs on
the other core; the event loop only pickles each recording onto a socket.

Protocol (length-prefixed pickle frames, `llmtap.recorder.frames`), proxy -> writer:
  first: `WriterConfig`; then lists of
  - `("chunks", exchange_id, head, pieces, times)`: a running stream's pieces so far. `head`,
    `(method, path, response headers, started_ns, on_file)`, comes with the first of them;
    `on_file` is not 0 for a stream whose first pieces a writer process that died had put on
    file (`PieceSpool.adopt` takes them over);
  - `("record", seq, pack_recording(r, had), had, keep)`: a record that leaves out the `had`
    pieces sent along; `keep`: the stream stays open here (it is on file, and pieces after
    `[DONE]` may come) until `("drop", exchange_id)`, which also ends a stream never handed
    over;
  - `("quit",)`.
Writer -> proxy: `("ready", recovered)` or `("failed", message)` once the store is open
(`recovered`: False when what the in-flight log held could not be stored, and is kept); then
`("done", [(seq, written, trace_id)], health)` after each transaction, `("health", ...)`
when idle tidying changed it (a database deleted under the proxy, a failed checkpoint), and
`("on file", exchange_id, pieces)` when a stream's first `pieces` are on file (the proxy lets
go of them).

The writer acknowledges a recording only after its transaction committed, so what the proxy
was told is durable is durable. On end of input (the proxy quit, crashed or was killed) it
writes everything it received and exits: it never outlives the proxy.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import pickle
import re
import select
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from llmtap.recorder.batch_writer import LOCKED_WAITS, BatchWriter
from llmtap.recorder.chunk_times import ChunkTimes
from llmtap.recorder.frames import FrameDecoder, encode
from llmtap.recorder.inflight import store_entries, store_if_unheld
from llmtap.recorder.memory import return_freed_memory
from llmtap.recorder.recording import Recording
from llmtap.recorder.records import Batch, RequestContext
from llmtap.recorder.secret_headers import redacted_query
from llmtap.recorder.spool import KEEP_IN_MEMORY, PieceSpool

log = logging.getLogger("llmtap.writer")
request_log = logging.getLogger("llmtap.requests")

LINGER = 0.002
"""Seconds the writer waits for more after a write before it counts as idle."""
MAX_BATCH = 512
"""Recordings per transaction at most: a longer wait for the first of them buys little."""


@dataclass(frozen=True, slots=True)
class WriterConfig:
    db: str
    log_traces: bool = True
    prices_file: str | None = None
    log_models: bool = False
    log_model_signatures: bool = False
    log_input_examples: bool = False
    registered_model_name: str | None = None
    log_level: int = logging.WARNING
    """Set by the proxy when it starts the writer: the level of its own `llmtap` loggers."""
    spool_after: int = KEEP_IN_MEMORY
    """Bytes of a running stream held in memory before its pieces go to a file."""
    spool_dir: str | None = None
    """Where those files go, one per stream (named by exchange id); set by the proxy, which
    removes it when it stops. None: unnamed files (nothing can take them over)."""
    locked_waits: int = LOCKED_WAITS
    """Busy timeouts a batch waits for a database another process keeps locked."""
    inflight: str | None = None
    """The proxy's in-flight log (`llmtap.recorder.inflight`), once it answers from it: what
    the log holds when the proxy dies is stored by this process before it exits. (Told later
    by the message `("inflight", path)` to the process started before the log was.)"""
    recover_from: str | None = None
    """A log to store before saying ready: what a killed llmtap left (the proxy's first start
    of this process, with the log's lock held)."""


_NOT_SENT = ("dropped", "summariser", "spool", "chunks_json")  # one process's own
_RECORDING_FIELDS = tuple(f.name for f in fields(Recording) if f.name not in _NOT_SENT)
_CONTEXT_AT = _RECORDING_FIELDS.index("context")
_CHUNKS_AT = _RECORDING_FIELDS.index("chunks")
_TIMES_AT = _RECORDING_FIELDS.index("chunk_times_ns")
_QUERY_AT = _RECORDING_FIELDS.index("query")
_recording_values = operator.attrgetter(*_RECORDING_FIELDS)
_context_values = operator.attrgetter(*(f.name for f in fields(RequestContext)))


def pack_recording(rec: Recording, had: int = 0) -> list[Any]:
    """The recording as plain values: pickling them is a quarter of what pickling the
    dataclasses costs (their state goes through Python code), and it runs on the event loop.
    `had`: the writer process has the first `had` pieces of the response already."""
    values = list(_recording_values(rec))
    values[_CONTEXT_AT] = _context_values(rec.context)
    if had:
        held = had - rec.dropped  # (the proxy holds the pieces after the `dropped` first)
        values[_CHUNKS_AT] = rec.chunks[held:]
        values[_TIMES_AT] = rec.chunk_times_ns[held:]
    return values


def pack_for_log(rec: Recording) -> bytes:
    """The whole recording pickled for the in-flight log, a file: its query's credentials
    (`?sig=`, `?api-key=`) are masked already, as the store masks them (masking again is a
    no-op), since no secret may reach a file."""
    values = pack_recording(rec)
    if rec.query:
        values[_QUERY_AT] = redacted_query(rec.query)
    return pickle.dumps(values, protocol=pickle.HIGHEST_PROTOCOL)


def unpack_recording(values: list[Any]) -> Recording:
    rec = object.__new__(Recording)
    for name, value in zip(_RECORDING_FIELDS, values, strict=True):
        object.__setattr__(rec, name, value)
    rec.context = RequestContext(*values[_CONTEXT_AT])
    rec.dropped, rec.summariser, rec.spool, rec.chunks_json = 0, None, None, None
    return rec


def request_line(batch: Batch) -> str:
    """`POST /v1/chat/completions 200 123.4 ms gpt-4o-mini 25 tokens` (and the error, if any)."""
    x = batch.exchange
    span = batch.spans[-1] if batch.spans else None
    parts = [
        x.method,
        f"/v1{x.path}",
        str(x.status or "-"),
        f"{(x.ended_ns - x.started_ns) / 1e6:.1f} ms",
    ]
    if span is not None:
        usage = span.attributes.get("usage") or {}
        parts.append(str(span.attributes.get("model") or "-"))
        parts.append(f"{usage.get('total_tokens', '-')} tokens")
    if x.error:
        parts.append(f"({x.error})")
    # the path and the model are the client's: a line break in them would start a line that
    # reads as llmtap's own, an escape sequence would move a terminal's cursor
    return _CONTROL.sub(_escaped, " ".join(parts))


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")  # `\n`, `\x1b`, `\u2028`


def open_batch_writer(config: WriterConfig) -> BatchWriter:
    # imported here: the proxy imports this module for WriterConfig, the child needs the rest
    from llmtap.recorder.prices import load_prices
    from llmtap.recorder.sqlite import SqliteStore
    from llmtap.recorder.tracing import Tracer, raw_batch

    tracer = Tracer(
        log_traces=config.log_traces,
        prices=load_prices(config.prices_file),
        log_models=config.log_models,
        log_model_signatures=config.log_model_signatures,
        log_input_examples=config.log_input_examples,
        registered_model_name=config.registered_model_name,
    )
    return BatchWriter(
        SqliteStore(config.db), tracer.build, raw_batch, locked_waits=config.locked_waits
    )


class _OpenStream:
    """A stream still running in the proxy: its pieces so far (in memory, or on file once
    large: `PieceSpool`), reassembled as they came, and their times as the row keeps them."""

    __slots__ = ("spool", "summariser", "times")

    def __init__(self, spool: PieceSpool, summariser: Any, started_ns: int) -> None:
        self.spool = spool
        self.summariser = summariser
        """A `StreamSummariser`, or None for a stream that is not traced (or whose
        summariser was handed to a record while the stream goes on)."""
        self.times: ChunkTimes | None = None if spool.on_file else ChunkTimes(started_ns)
        """None once the pieces are on file: then they are made from the file's index, a
        block at a time, at the end (as JSON they would be ~15 bytes a piece in memory)."""

    def feed(self, chunks: list[bytes], times: list[int]) -> bool:
        """Says whether pieces went to the file."""
        spilled = self.spool.extend(chunks, times)
        if self.times is not None:
            if self.spool.on_file:
                self.times = None
            else:
                self.times.add(chunks, times)
        self.summarise(chunks, times)
        return spilled

    def summarise(self, chunks: list[bytes], times: list[int]) -> None:
        if self.summariser is not None:
            try:
                self.summariser.feed(chunks, times)
            except Exception:  # never here: the build does it all again, from the pieces
                log.exception("reassembling a running stream failed")
                self.summariser = None

    def complete(self, rec: Recording, keep: bool) -> bool:
        """`rec`, which left out the pieces this has, whole again; `keep`: the stream goes on
        (pieces after `[DONE]` may come), so `rec` gets a snapshot of the pieces so far."""
        spilled = self.feed(rec.chunks, rec.chunk_times_ns)
        spool = self.spool.snapshot() if keep else self.spool
        if spool.on_file:
            rec.chunks, rec.chunk_times_ns, rec.spool = [], [], spool
        else:
            rec.chunks, rec.chunk_times_ns = spool.held(), spool.times.tolist()
            if self.times is not None:  # made now: later pieces of a kept stream are not its
                rec.chunks_json = self.times.json()
        rec.summariser = self.summariser
        if keep:  # finished with this record: a later copy reassembles from the pieces again
            self.summariser = None
        return spilled


class _Streams:
    """The running streams the proxy sends along, by exchange id."""

    def __init__(
        self,
        traced: bool,
        spool_dir: str | None = None,
        spool_after: int = KEEP_IN_MEMORY,
        on_file: Callable[[str, int], None] = lambda xid, pieces: None,
    ) -> None:
        # imported here: the proxy imports this module for WriterConfig, the child needs these
        from llmtap.recorder.endpoints import endpoint_for
        from llmtap.recorder.stream_summary import StreamSummariser
        from llmtap.recorder.tracing import header

        self._endpoint_for = endpoint_for if traced else lambda path: None
        self._summariser = StreamSummariser
        self._header = header
        self.open: dict[str, _OpenStream] = {}
        self.spool_dir = spool_dir
        """Where a long stream's pieces go (see `PieceSpool`); None: unnamed files."""
        self.spool_after = spool_after
        self.on_file = on_file
        """Told (exchange id, pieces) each time more of a stream's first pieces are on a file
        a writer process started after this one could take over: the proxy lets go of them."""

    def on_message(self, item: tuple[Any, ...]) -> None:
        if item[0] == "chunks":
            _, xid, head, chunks, times = item
            stream = self.open.get(xid)
            if stream is None:
                if head is None:
                    return  # (never: a new writer process gets every stream from its start)
                stream = self.open[xid] = self._open(xid, *head)
            self._fed(xid, stream, stream.feed(chunks, times))
        else:  # ("drop", xid)
            stream = self.open.pop(item[1], None)
            if stream is not None:
                stream.spool.close()

    def _open(
        self,
        xid: str,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        started_ns: int,
        on_file: int,
    ) -> _OpenStream:
        """A stream the proxy starts sending; `on_file`: its first pieces are on the file a
        writer process that died left (the proxy let go of them)."""
        endpoint = self._endpoint_for(path) if method == "POST" else None
        content_type = self._header(headers, "content-type") or ""
        summariser = None
        if endpoint is not None and content_type.startswith("text/event-stream"):
            encoding = self._header(headers, "content-encoding")
            summariser = self._summariser(endpoint, encoding, started_ns)
        path_on_disk = os.path.join(self.spool_dir, xid) if self.spool_dir else None
        if not on_file:
            return _OpenStream(PieceSpool(path_on_disk, self.spool_after), summariser, started_ns)
        try:
            if path_on_disk is None:
                raise OSError("pieces on file, but no spool directory")
            spool = PieceSpool.adopt(path_on_disk, on_file, self.spool_after)
        except OSError as exc:  # the record finds its first pieces missing, and says so
            log.error("the first %d pieces of %s %s are lost: %s", on_file, method, path, exc)
            return _OpenStream(PieceSpool(path_on_disk, self.spool_after), None, started_ns)
        stream = _OpenStream(spool, summariser, started_ns)
        for pieces, times in spool.batches():  # reassembled again from the file
            stream.summarise(pieces, times)
        return stream

    def _fed(self, xid: str, stream: _OpenStream, spilled: bool) -> None:
        if spilled and stream.spool.path is not None:
            self.on_file(xid, stream.spool.file_pieces)

    def recording(self, values: list[Any], had: int, keep: bool) -> Recording:
        rec = unpack_recording(values)
        if had:
            xid = rec.exchange_id
            stream = self.open.get(xid) if keep else self.open.pop(xid, None)
            if stream is None or len(stream.spool.lengths) != had:  # never, by the protocol
                log.error("the first pieces of %s %s were lost", rec.method, rec.path)
                rec.error = rec.error or "llmtap lost the first pieces of this response"
            else:
                self._fed(xid, stream, stream.complete(rec, keep))
        return rec


_RECEIVE_AT_MOST = 16 << 20
"""Bytes read before the messages so far are handled: a proxy that sends faster than they
are (a long stream in bulk) must not have all of it decoded here at once."""


class _Channel:
    """The socket to the proxy: blocking receive, non-blocking drain, framed send."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = FrameDecoder()
        self.closed = False

    def receive(self, wait: float | None) -> list[Any]:
        """Every message that has arrived, after waiting up to `wait` seconds for the first
        (None: as long as it takes; 0: not at all)."""
        if wait != 0 and not self.closed:
            try:
                ready, _, _ = select.select([self.sock], [], [], wait)
            except InterruptedError:
                ready = []
            if not ready:
                return []
        messages: list[Any] = []
        taken = 0
        while not self.closed and taken < _RECEIVE_AT_MOST:
            try:
                data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                self.closed = True
                break
            taken += len(data)
            messages.extend(self.decoder.feed(data))
        return messages

    def send(self, message: Any) -> None:
        try:
            self.sock.sendall(encode(message))
        except OSError:
            self.closed = True  # the proxy is gone; what is left is still written


def serve(sock: socket.socket) -> int:
    """Run the writer on a connected socket until the proxy quits or goes away."""
    channel = _Channel(sock)
    config = next(iter(channel.receive(None)), None)
    if not isinstance(config, WriterConfig):
        return 2
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    try:
        writer = open_batch_writer(config)
    except Exception as exc:  # noqa: BLE001 - the proxy says it, with the path
        channel.send(("failed", f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)))
        return 1
    recovered = True
    if config.recover_from is not None:
        try:  # what a proxy killed before on this database had answered (the proxy holds the lock)
            recovered = store_entries(config.db, config.recover_from)
        except Exception as exc:  # noqa: BLE001 - said, and the proxy starts all the same
            log.error(
                "llmtap could not store what was in flight in %s: %s", config.recover_from, exc
            )
            recovered = False
    channel.send(("ready", recovered))
    writer.on_locked = lambda: channel.send(("locked", writer.health.as_dict()))
    lines = request_log.isEnabledFor(logging.INFO)
    streams = _Streams(
        config.log_traces,
        config.spool_dir,
        config.spool_after,
        lambda xid, pieces: channel.send(("on file", xid, pieces)),
    )
    waiting: list[tuple[int, Recording]] = []
    highest = -1  # the highest sequence number written
    inflight = [config.inflight]  # the proxy's log, once it answers from it
    quitting = False
    tidy = False  # written since the last idle(): tidy up once nothing is waiting
    freed = 0  # response bytes written (and let go of) since memory was last given back
    last_health = writer.health.as_dict()
    try:
        while True:
            # just written: the proxy sends the next frame once it has the answer, so wait a
            # moment for it before tidying up (a stat of the file, a checkpoint asked for, memory
            # given back: nothing that frame's commit should wait behind)
            wait = 0.0 if waiting or quitting else (LINGER if tidy else None)
            quitting = _take(channel.receive(wait), waiting, streams, inflight) or quitting
            if waiting:
                batch, waiting = waiting[:MAX_BATCH], waiting[MAX_BATCH:]
                highest = max(highest, max(seq for seq, _ in batch))
                freed += sum(_response_bytes(rec) for _, rec in batch)
                acks = _write(writer, batch, lines)
                _close_spools(batch)
                del batch  # (a long stream's pieces: let go of before the writer idles)
                last_health = writer.health.as_dict()
                channel.send(("done", acks, last_health))
                tidy = True
                continue
            if quitting:
                return 0
            if channel.closed:  # the proxy died: what it had answered and not sent goes in too
                if inflight[0] is not None:
                    _store_orphaned(writer, config.db, inflight[0], highest)
                return 0
            if tidy:
                tidy = False
                writer.idle()
                if freed > _TRIM_AFTER:
                    freed = 0
                    return_freed_memory()
                health = writer.health.as_dict()
                if health != last_health:
                    last_health = health
                    channel.send(("health", health))
    finally:
        writer.close()


_TRIM_AFTER = 16 << 20
"""Bytes of recordings written, after which an idle writer gives freed memory back."""


def store_recovered(writer: BatchWriter, db: str, recordings: list[list[Any]]) -> bool:
    """Store recordings found in an in-flight log, as `pack_recording` made them; says whether
    every one is in the database now. One whose version is there already (committed before a
    kill took its acknowledgement) is left alone: written again, agent linking, which has
    forgotten its run, would move it out of its trace."""
    from llmtap.recorder.sqlite import connect_for_reading

    batch = []
    for values in recordings:
        try:
            batch.append((len(batch), unpack_recording(values)))
        except Exception as exc:  # noqa: BLE001 - another llmtap version's: the rest still go
            log.error("an in-flight recording could not be read: %s", exc)
    last = {rec.exchange_id: (i, rec) for i, rec in batch}  # an exchange's last version wins
    with contextlib.closing(connect_for_reading(db)) as conn:
        stored = {
            row[0]: (row[1], row[2])
            for xid in last
            for row in conn.execute(
                "SELECT exchange_id, ended_ns, error FROM exchanges WHERE exchange_id = ?", [xid]
            )
        }
    batch = [(i, r) for i, r in sorted(last.values()) if not _stored_already(r, stored)]
    ok = True
    for start in range(0, len(batch), MAX_BATCH):
        acks = _write(writer, batch[start : start + MAX_BATCH], False)
        ok = ok and all(written for _, written, _ in acks)
    return ok


def _stored_already(rec: Recording, stored: dict[str, tuple[int | None, str | None]]) -> bool:
    """This version of the exchange is in the database, or a later one is (ended later)."""
    if rec.exchange_id not in stored:
        return False
    ended, error = stored[rec.exchange_id]
    mine = rec.ended_ns or 0
    return (ended, error) == (rec.ended_ns, rec.error) or (ended or 0) > mine


def _store_orphaned(writer: BatchWriter, db: str, path: str, highest: int) -> None:
    """The proxy died: the entries of its log this process never got (it writes in order,
    so those numbered above the last it wrote), unless a new proxy has taken the log over."""
    store_if_unheld(db, path, 1.0, after=highest, writer=writer)


def _response_bytes(rec: Recording) -> int:
    """What a written recording lets go of: its response, and its request (a 31 MB upload)."""
    held = rec.spool.size if rec.spool is not None else sum(map(len, rec.chunks))
    return held + len(rec.request_body)


def _take(
    messages: list[Any],
    waiting: list[tuple[int, Recording]],
    streams: _Streams,
    inflight: list[str | None],
) -> bool:
    """The proxy's messages handled: recordings onto `waiting`, stream pieces to `streams`.
    Says whether one of them was "quit". (A function of its own, so that no loop variable of
    the writer's main loop keeps the last message alive while it idles: a 31 MB upload.)"""
    quit_seen = False
    for item in [item for message in messages for item in message]:
        kind = item[0]
        if kind == "record":
            values = item[2] if isinstance(item[2], list) else pickle.loads(item[2])
            waiting.append((item[1], streams.recording(values, item[3], item[4])))
        elif kind == "quit":
            quit_seen = True
        elif kind == "inflight":
            inflight[0] = item[1]
        else:
            streams.on_message(item)
    return quit_seen


def _close_spools(batch: list[tuple[int, Recording]]) -> None:
    for _, rec in batch:
        if rec.spool is not None:
            rec.spool.close()


def _write(
    writer: BatchWriter, batch: list[tuple[int, Recording]], lines: bool
) -> list[tuple[int, bool, str]]:
    recordings = [rec for _, rec in batch]
    written = writer.write(recordings)
    if lines:
        for stored in written:
            if stored is not None:
                request_log.info(request_line(stored))
    # the trace a recording joined (agent linking may move it): a fuller copy sent later lands
    # in the same trace
    return [
        (seq, stored is not None, rec.trace_id)
        for (seq, rec), stored in zip(batch, written, strict=True)
    ]


def main(argv: list[str]) -> int:
    # Ctrl-C, and a SIGTERM to the process group (systemd, `timeout`, `kill -- -PGID`), reach
    # the writer too: the proxy shuts down and sends "quit" (or dies, and the writer reads the
    # end of its socket); the writer must live until it has written what it was given
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[1]))
    try:
        return serve(sock)
    finally:
        sock.close()


if __name__ == "__main__":
    # run as `python -m`: this file is `__main__`, and the pickled config names the module
    from llmtap.recorder import writer_process

    sys.exit(writer_process.main(sys.argv))
