"""SqliteStore: the one SQLite file, written by the writer process and read by the API and CLI.

WAL mode with `synchronous=NORMAL`: a commit is a write() into the WAL, which survives a
`kill -9` of the process (not a power cut), at a fraction of the cost of an fsync.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson
from sqlite_utils import Database

from llmtap.recorder.body_codec import pack_blocks, pack_body
from llmtap.recorder.model_store import link_version, record_version
from llmtap.recorder.records import Batch, Exchange, Span, SpanType, TraceHead, VersionLink
from llmtap.recorder.schema import migrate, migrations, read_key_salt
from llmtap.recorder.spool import PieceSpool


def _json(value: Any) -> str:
    return _json_bytes(value).decode()


def _json_bytes(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str)


def connect_for_writing(path: str | Path) -> sqlite3.Connection:
    """A connection with the pragmas llmtap relies on, and the schema brought up to date."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    # first: another llmtap opening the same file at the same moment holds it for a while
    # (its switch to WAL, its migrations), and that is waited for, not an error
    conn.execute("PRAGMA busy_timeout=5000")
    _switch_to_wal(conn)
    conn.execute("PRAGMA synchronous=NORMAL")
    # checkpoints run on a thread of their own (see Checkpointer), never inside a COMMIT that
    # a client is waiting for
    conn.execute("PRAGMA wal_autocheckpoint=0")
    _migrate_alone(conn)
    return conn


def key_salt_of(path: str | Path) -> bytes:
    """The database's salt for key fingerprints (`schema.key_salt`); empty when there is no
    database, or it is not readable."""
    try:
        with contextlib.closing(connect_for_reading(path)) as conn:
            return read_key_salt(conn)
    except (OSError, sqlite3.Error):
        return b""


def _switch_to_wal(conn: sqlite3.Connection, wait_s: float = 5.0) -> None:
    """WAL mode (kept in the file). SQLite answers this pragma "database is locked" at once,
    without its busy handler, while another connection switches a new file: tried again."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _migrate_alone(conn: sqlite3.Connection) -> None:
    """The schema brought up to date by one llmtap at a time. sqlite-utils checks, then
    creates its table and applies what is pending, each outside any lock: two servers started
    together on one file both applied the same migration, and one exited ("table
    _sqlite_migrations already exists", "UNIQUE constraint failed"). Under the write lock, the
    second finds nothing pending. (Each migration's own transaction is a savepoint in this.)"""
    db = Database(conn)
    if not migrations.pending(db):  # (a new file has them all pending)
        return  # up to date: no write lock taken
    conn.execute("BEGIN IMMEDIATE")
    try:
        migrate(db)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def connect_for_reading(path: str | Path) -> sqlite3.Connection:
    """A read-only connection; raises FileNotFoundError when there is no database yet."""
    if not Path(path).exists():
        raise FileNotFoundError(f"no llmtap database at {path}")
    conn = sqlite3.connect(
        f"file:{Path(path).resolve()}?mode=ro", uri=True, check_same_thread=False
    )
    conn.execute("PRAGMA busy_timeout=5000")
    conn.row_factory = sqlite3.Row
    return conn


_INSERT_EXCHANGE = """
INSERT OR REPLACE INTO exchanges (exchange_id, experiment, trace_id, span_id, method, path,
    query, match_key, request_headers, request_body, status, response_headers, response_body,
    chunks, stream, started_ns, first_byte_ns, ended_ns, error, key_fingerprint,
    usage_injected)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_INSERT_SPAN = """
INSERT OR REPLACE INTO spans (span_id, trace_id, parent_id, name, span_type, model, start_time_ns,
    end_time_ns, status_code, status_message, inputs, outputs, attributes, input_tokens,
    output_tokens, total_tokens, total_cost, exchange_id)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), ?, ?, ?,
    ?, ?)
"""
# (inputs, outputs and attributes are bound as their UTF-8 JSON, which SQLite takes as its
# text: as a Python str, a 48 MB answer holding one emoji was 192 MB more in the writer)
# a trace row is derived from its spans, so re-writing a span (a stream recorded at [DONE] and
# again at EOF) can never double-count; `WHERE true` resolves SQLite's upsert parse ambiguity
_UPSERT_TRACE = """
INSERT INTO traces (trace_id, experiment, session, status, request_time, start_time_ns,
    end_time_ns, execution_time_ms, tags, span_count, input_tokens, output_tokens, total_tokens,
    total_cost)
SELECT ?1, ?2, ?3,
    CASE WHEN max(span_type = 'AGENT') THEN
            CASE WHEN sum(span_type = 'AGENT' AND status_code = 'ERROR') THEN 'ERROR' ELSE 'OK' END
        WHEN sum(status_code = 'ERROR') > 0 THEN 'ERROR' ELSE 'OK' END,
    strftime('%Y-%m-%dT%H:%M:%fZ', min(start_time_ns) / 1e9, 'unixepoch'),
    min(start_time_ns), max(end_time_ns), (max(end_time_ns) - min(start_time_ns)) / 1e6,
    ?4, count(*), sum(input_tokens), sum(output_tokens), sum(total_tokens), sum(total_cost)
FROM spans WHERE trace_id = ?1 AND true
ON CONFLICT (trace_id) DO UPDATE SET
    session = coalesce(traces.session, excluded.session),
    status = excluded.status, request_time = excluded.request_time,
    start_time_ns = excluded.start_time_ns, end_time_ns = excluded.end_time_ns,
    execution_time_ms = excluded.execution_time_ms, tags = json_patch(traces.tags, excluded.tags),
    span_count = excluded.span_count, input_tokens = excluded.input_tokens,
    output_tokens = excluded.output_tokens, total_tokens = excluded.total_tokens,
    total_cost = excluded.total_cost
"""


def _exchange_row(
    x: Exchange,
    body: bytes,
    match_key: str,
    trace_id: str | None,
    span_id: str | None,
    stream: bool,
) -> tuple[Any, ...]:
    return (
        x.exchange_id,
        x.experiment,
        trace_id,
        span_id,
        x.method,
        x.path,
        x.query,
        match_key,
        _json(x.request_headers),
        pack_body(x.request_body),
        x.status,
        _json(x.response_headers),
        body,
        x.chunks,
        int(stream),
        x.started_ns,
        x.first_byte_ns,
        x.ended_ns,
        x.error,
        x.key_fingerprint,
        int(x.usage_injected),
    )


LONG_PACKED_AT_MOST = 8 << 20
"""A long stream's body (on file) is stored packed when that is at most this many bytes (it is
held whole on its way into the row); else it is copied into the row as sent."""


def _copy_body(conn: sqlite3.Connection, exchange_id: str, body: PieceSpool) -> None:
    """A long stream's body, into its row a block at a time: never whole in memory, and
    nothing left bound to a statement afterwards (a cached INSERT keeps its last values).
    Into `long_response_body`, the row's last column (see schema 0004)."""
    (rowid,) = conn.execute(
        "UPDATE exchanges SET long_response_body = zeroblob(?) WHERE exchange_id = ? "
        "RETURNING rowid",
        (len(body), exchange_id),
    ).fetchone()
    with conn.blobopen("exchanges", "long_response_body", rowid) as blob:
        for block in body.blocks():
            blob.write(block)


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _span_row(s: Span, exchange_id: str | None) -> tuple[Any, ...]:
    attributes = s.attributes
    usage = attributes.get("usage") or {}
    return (
        s.span_id,
        s.trace_id,
        s.parent_id,
        s.name,
        str(s.span_type),
        _text_or_none(attributes.get("model")),  # a bad request's model may be a list, a number
        s.start_time_ns,
        s.end_time_ns,
        s.status.code,
        s.status.message,
        _json_bytes(s.inputs),
        _json_bytes(s.outputs),
        _json_bytes(attributes),
        int(usage.get("input_tokens") or 0),
        int(usage.get("output_tokens") or 0),
        int(usage.get("total_tokens") or 0),
        (attributes.get("cost") or {}).get("total_cost"),
        exchange_id if s.span_type not in (SpanType.AGENT, SpanType.TOOL) else None,
    )


# a trace with no row yet has no spans but those of this transaction: its row is inserted from
# what they add up to (the aggregate below, computed here), with the same SQL for the times
_INSERT_NEW_TRACE = """
INSERT OR IGNORE INTO traces (trace_id, experiment, session, status, request_time,
    start_time_ns, end_time_ns, execution_time_ms, tags, span_count, input_tokens, output_tokens,
    total_tokens, total_cost)
VALUES (?1, ?2, ?3, ?4, strftime('%Y-%m-%dT%H:%M:%fZ', ?5 / 1e9, 'unixepoch'), ?5, ?6,
    (?6 - ?5) / 1e6, ?7, ?8, ?9, ?10, ?11, ?12)
"""


def _trace_status(rows: Iterable[tuple[Any, ...]]) -> str:
    """As `_UPSERT_TRACE` says it: an agent run's is its root's (as MLflow's trace status is
    its root span's: a run that recovered from a failed call is OK), any other trace's ERROR
    when one of its spans is."""
    rows = list(rows)
    roots = [row for row in rows if row[4] == "AGENT"]
    return "ERROR" if any(row[8] == "ERROR" for row in roots or rows) else "OK"


def _new_trace_row(
    head: TraceHead, tags: str, rows: dict[str, tuple[Any, ...]]
) -> tuple[Any, ...] | None:
    """The traces row of `_UPSERT_TRACE` for a trace whose only spans are `rows` (span rows by
    id); None when SQLite's sum would be needed (two costs: its float sum is its own)."""
    costs = [row[16] for row in rows.values() if row[16] is not None]
    if len(costs) > 1:
        return None
    values = rows.values()
    return (
        head.trace_id,
        head.experiment,
        head.session,
        _trace_status(values),
        min(row[6] for row in values),
        max(row[7] for row in values),
        tags,
        len(rows),
        sum(row[13] for row in values),
        sum(row[14] for row in values),
        sum(row[15] for row in values),
        costs[0] if costs else None,
    )


class Checkpointer:
    """Moves the WAL into the database on a thread and connection of its own.

    A checkpoint copies every page written since the last one and syncs the file twice:
    milliseconds on a VM's disk, during which a commit on the same connection waits, and a
    client waits for that commit (a stream's `[DONE]`: p99 +13.7 ms with checkpoints inline
    against +5.6 ms with none, issue 3's paced scenario). PASSIVE runs alongside the writer's
    transactions in WAL mode, and sqlite3 lets go of the GIL while it works.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.error: Exception | None = None
        """The last checkpoint's failure, for the writer to report (and to try again)."""
        self._wanted = threading.Event()
        self._running = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llmtap-checkpoint", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wanted.set()

    def held(self) -> threading.Lock:
        """While it is held, this thread starts no checkpoint (one running is waited for)."""
        return self._running

    def stop(self) -> None:
        self._stopping = True
        self._wanted.set()
        self._thread.join()

    def _run(self) -> None:
        # behind the proxy and the writer's own thread when the cores are busy: what it does
        # can wait, what they do is a client waiting (Linux: a thread has a nice value of its own)
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping:
                return
            try:
                self._catch_up()
                self.error = None
            except sqlite3.Error as exc:
                self.error = exc

    def _catch_up(self) -> None:
        """PASSIVE checkpoints one after another, until one finds nothing new to copy (each
        pass copies what the writer wrote during the one before). A WAL wholly copied is
        started over by the writer's next transaction, by SQLite itself (when no reader is in
        it): nothing to copy and no sync in front of that commit, which the writer's own
        restart would otherwise cost. The lock is let go between passes: the writer's restart
        waits for one pass at most."""
        conn = checkpoint_connection(self.path)
        try:
            seen = -1
            for _ in range(CATCH_UP_PASSES):
                with self._running:
                    busy, frames, copied = checkpoint(conn)
                if busy or copied < frames or frames == seen:  # a reader holds frames back, or done
                    return
                seen = frames
        finally:
            conn.close()


CATCH_UP_PASSES = 8
"""PASSIVE checkpoints a request runs at most, one after another, to catch up with a writer
that goes on writing (each pass copies what was written during the one before)."""


def checkpoint_connection(path: str) -> sqlite3.Connection:
    """A connection of the checkpointer's own, opened for each request: the file at the path
    may have been replaced since the last one; never created if it is gone."""
    return sqlite3.connect(f"file:{Path(path).resolve()}?mode=rw", uri=True, isolation_level=None)


def checkpoint(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """A PASSIVE checkpoint: busy, the WAL's frames, the frames copied."""
    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return busy, frames, copied


class SqliteStore:
    """Implements the Sink side (`write`) over one connection owned by the writer process."""

    CHECKPOINT_EVERY = 256
    """Batches after which the writer checkpoints itself, in front of one of its transactions,
    unless the WAL started over meanwhile (see `_restart_wal`, `Checkpointer._catch_up`): the
    bound of the WAL."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.conn = connect_for_writing(path)
        self._inode = _inode(self.path)
        self._since_checkpoint = 0  # batches since a checkpoint was last asked for
        self._since_restart = 0  # batches since the writer's own last checkpoint
        self._wal_header = b""
        self._checkpointer = Checkpointer(self.path)
        self._holds_big = False  # a large body was bound to a statement since it opened

    LOOK_AT_WAL_EVERY = 16
    """Batches between two looks at the WAL's header, to know whether it started over."""

    CHECKPOINT_AHEAD = 32
    """Batches before its own restart at which the writer asks the checkpointer, idle or not.
    A writer that never idles (a steady 1,000 req/s: a frame every millisecond) asked it never,
    and its restart copied a whole round of frames in front of one commit: ~15 ms, the p99."""

    IDLE_CHECKPOINT_AFTER = 32
    """Batches after which an idle writer checkpoints: not after every one (each copies and
    syncs what was written since the last)."""

    def idle(self) -> None:
        """Nothing is waiting: have the WAL moved into the database (see `Checkpointer`), and
        make sure the file written is still the one at the path."""
        error, self._checkpointer.error = self._checkpointer.error, None
        if error is not None:
            self._since_checkpoint = max(self._since_checkpoint, self.IDLE_CHECKPOINT_AFTER)
            raise error  # reported as a failure; tried again at the next idle
        if self._since_checkpoint >= self.IDLE_CHECKPOINT_AFTER:
            self._checkpointer.request()
            self._since_checkpoint = 0
        self.check_file()
        if self._holds_big:
            self._reopen()

    BIG_BODY = 4 << 20
    """A body this large makes an idle writer open its connection again. Each cached INSERT
    keeps the values it last bound (SQLite's copies: Python's sqlite3 never clears them), so
    one 31 MB upload held ~33 MB of the writer's memory until the next insert of that kind; a
    new connection lets go of them."""

    def _reopen(self) -> None:
        # the new one first: closing the last connection would checkpoint the whole WAL and
        # delete it, here (67 ms for 20 MB), in front of the next commit
        old, self.conn = self.conn, connect_for_writing(self.path)
        old.close()
        self._holds_big = False

    def _restart_wal(self) -> bool:
        """A checkpoint in front of one of the writer's transactions: it catches up with every
        frame, so that transaction starts the WAL over. The checkpointer's, beside a writer
        that never pauses, may never catch up, and a WAL that never starts over grows without
        bound (537 MB for a 147 MB database in bench's memory scenario) and slows every page
        lookup. Costs its syncs in front of one commit in `CHECKPOINT_EVERY` batches.

        The caller keeps the checkpointer still until that transaction has committed: a
        checkpoint of its own running then holds the lock this one needs, or a read mark
        that keeps the WAL from starting over. Says whether it caught up; one that did not
        (a reader in another process kept frames back) is tried again at the next batch,
        not `CHECKPOINT_EVERY` later, or the WAL file, which never shrinks, grows by another
        round."""
        busy, frames, copied = checkpoint(self.conn)
        self._since_checkpoint = 0
        return not busy and frames == copied

    def _wal_started_over(self) -> bool:
        """Whether the WAL started over since this was last asked: its header's checkpoint
        sequence number and salts change each time (SQLite rewrites them with the first frame
        after), whoever's checkpoint made it possible."""
        try:
            with open(self.path + "-wal", "rb") as wal:
                header = wal.read(24)[12:24]
        except OSError:
            return False
        previous, self._wal_header = self._wal_header, header
        return bool(previous) and header != previous

    def check_file(self) -> None:
        """A database deleted or replaced under a running proxy would swallow every write
        unseen: open the file at the path again (a new one if need be) and say so."""
        if _inode(self.path) == self._inode:
            return
        self.conn.close()
        self.conn = connect_for_writing(self.path)
        self._inode = _inode(self.path)
        raise StoreReplaced(
            f"the database {self.path} was deleted or replaced while llmtap ran; "
            "recording goes on into a new file at that path"
        )

    def write(self, batches: Sequence[Batch]) -> None:
        """Write all batches in one transaction: all of them land, or none."""
        # (a stat, ~1 us: a transaction into a deleted file is lost, whatever it held)
        self.check_file()
        if self._since_restart % self.LOOK_AT_WAL_EVERY == 0 and self._wal_started_over():
            self._since_restart = 0  # the checkpointer caught up, and SQLite started it over
        held = self._checkpointer.held()
        restart = self._since_restart >= self.CHECKPOINT_EVERY
        if restart:
            # a checkpoint of the thread's running: the restart waits for a later batch rather
            # than have this one wait for it; for a few batches at most (a thread asked again
            # and again, or slowed by busy cores, would starve it: the WAL would grow)
            overdue = self._since_restart >= self.CHECKPOINT_EVERY + self.CHECKPOINT_AHEAD
            restart = held.acquire(blocking=overdue)
        if not restart:
            self._commit(batches)
        else:
            try:
                restarted = self._restart_wal()
                self._commit(batches)
            finally:
                held.release()
            if restarted:
                self._since_restart = 0
        self._since_checkpoint += 1
        self._since_restart += 1
        if self._since_restart == 1:  # a new round: the header of the WAL it writes
            self._wal_started_over()
        if self._since_restart == self.CHECKPOINT_EVERY - self.CHECKPOINT_AHEAD:
            # a writer that never idles asks too, once a round: its own restart then has only
            # the batches since to copy in front of a commit, not the whole round
            self._checkpointer.request()
            self._since_checkpoint = 0

    def _commit(self, batches: Sequence[Batch]) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._insert(batches)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a failed COMMIT (disk full) has rolled back already
                conn.execute("ROLLBACK")
            raise

    def _insert(self, batches: Iterable[Batch]) -> None:
        conn = self.conn
        heads: dict[str, TraceHead] = {}
        experiments: set[str] = set()
        exchanges: list[tuple[Any, ...]] = []
        on_file: dict[str, PieceSpool] = {}  # long streams' bodies, by exchange id
        spans: list[tuple[Any, ...]] = []  # written in order, before anything that reads them
        by_trace: dict[str, dict[str, tuple[Any, ...]]] = {}
        for batch in batches:
            x = batch.exchange
            experiments.add(x.experiment)
            if len(x.request_body) > self.BIG_BODY or (
                isinstance(x.response_body, bytes) and len(x.response_body) > self.BIG_BODY
            ):
                self._holds_big = True
            if isinstance(x.response_body, bytes):
                body: bytes | None = pack_body(x.response_body)
            else:  # a long stream, on file
                body = pack_blocks(
                    x.response_body.blocks(), len(x.response_body), LONG_PACKED_AT_MOST
                )
            if body is None:  # it does not pack small: copied into its column afterwards
                on_file[x.exchange_id] = x.response_body  # type: ignore[assignment]
                body = b""
            else:
                on_file.pop(x.exchange_id, None)  # (a later copy in the same batch wins)
            own = batch.spans[-1] if batch.spans else None  # the call's span comes last
            exchanges.append(
                _exchange_row(
                    x,
                    body,
                    batch.match_key,
                    own.trace_id if own else None,
                    own.span_id if own else None,
                    batch.stream,
                )
            )
            for s in batch.spans:
                row = _span_row(s, x.exchange_id)
                spans.append(row)
                by_trace.setdefault(s.trace_id, {})[s.span_id] = row
            if isinstance(batch.model_version, VersionLink):  # a prediction's call
                if own is not None:
                    link_version(conn, batch.model_version, x.started_ns, own)
            elif batch.model_version is not None:  # numbered in this transaction
                record_version(conn, batch.model_version, x.started_ns, own)
            if batch.reparent:  # spans written earlier: those of this write are in the table
                conn.executemany(_INSERT_SPAN, spans)
                spans = []
                conn.executemany(
                    "UPDATE spans SET parent_id = ?2 WHERE span_id = ?1", batch.reparent
                )
            if batch.trace is not None:
                heads[batch.trace.trace_id] = _merge_heads(
                    heads.get(batch.trace.trace_id), batch.trace
                )
        conn.executemany(_INSERT_EXCHANGE, exchanges)
        for exchange_id, body in on_file.items():
            _copy_body(conn, exchange_id, body)
        if spans:
            conn.executemany(_INSERT_SPAN, spans)
        conn.executemany(
            "INSERT OR IGNORE INTO experiments (name, created_at) "
            "VALUES (?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            [(name,) for name in experiments],
        )
        new_rows: list[tuple[Any, ...]] = []
        upserts: list[tuple[Any, ...]] = []
        for head in heads.values():
            tags = _json(head.tags)
            rows = by_trace.get(head.trace_id)
            new = _new_trace_row(head, tags, rows) if rows else None
            if new is not None:
                new_rows.append(new)
            else:
                upserts.append((head.trace_id, head.experiment, head.session, tags))
        if new_rows and conn.executemany(_INSERT_NEW_TRACE, new_rows).rowcount != len(new_rows):
            # some of those traces had a row already: derive every one from its spans (for
            # those just inserted, that gives the same row again)
            upserts += [(row[0], row[1], row[2], row[6]) for row in new_rows]
        if upserts:
            conn.executemany(_UPSERT_TRACE, upserts)

    def close(self) -> None:
        self._checkpointer.stop()
        with contextlib.suppress(sqlite3.Error):  # a full disk: the WAL keeps it all
            self._restart_wal()  # leave a tidy file behind
        self.conn.close()


class StoreReplaced(RuntimeError):
    """The database file changed under the writer; it has been opened again."""


def _inode(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _merge_heads(old: TraceHead | None, new: TraceHead) -> TraceHead:
    if old is None:
        return new
    return TraceHead(
        old.trace_id, old.experiment, old.session or new.session, {**old.tags, **new.tags}
    )
