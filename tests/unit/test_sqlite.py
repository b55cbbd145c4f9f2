"""SqliteStore on a real file: schema, round trip through the reader, idempotent re-writes."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import orjson

from llmtap.recorder.reader import TraceQuery, TraceReader
from llmtap.recorder.recording import Recording
from llmtap.recorder.records import RequestContext
from llmtap.recorder.sqlite import SqliteStore, checkpoint, checkpoint_connection
from llmtap.recorder.tracing import build_batch
from tests.raw_upstream import chat_completion_body

CHAT = chat_completion_body("hi \u00e9 \U0001f600 \u6f22", input_tokens=3)


def chat_recording(ctx: RequestContext | None = None, status: int = 200) -> Recording:
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    rec = Recording(
        "POST",
        "/chat/completions",
        "",
        [("content-type", "application/json")],
        body,
        ctx or RequestContext(),
    )
    rec.respond(status, [("content-type", "application/json")])
    rec.feed(orjson.dumps(CHAT))
    return rec.finish()


def test_round_trip_through_the_reader(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store = SqliteStore(db)
    ctx = RequestContext(experiment="e1", session="s1", tags={"k": "v"})
    store.write([build_batch(chat_recording(ctx)), build_batch(chat_recording())])
    store.close()
    reader = TraceReader(db)
    traces = reader.list_traces(TraceQuery())
    assert len(traces) == 2
    (mine,) = reader.list_traces(TraceQuery(experiment="e1"))
    assert mine["session"] == "s1" and mine["tags"] == {"k": "v"}
    assert mine["usage"] == {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}
    full = reader.get_trace(mine["trace_id"])
    assert full is not None and full["spans"][0]["outputs"] == CHAT
    assert reader.get_trace("0" * 32) is None
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT count(*) FROM exchanges").fetchone()[0] == 2


def test_a_spans_json_is_stored_as_text_whatever_its_characters(tmp_path: Path) -> None:
    """Inputs, outputs and attributes are bound as UTF-8 bytes (no Python str of a long
    answer: one emoji makes it 4 bytes a character) and stored as TEXT, as the readers' JSON
    functions and the previews need them."""
    db = tmp_path / "t.db"
    store = SqliteStore(db)
    store.write([build_batch(chat_recording())])
    store.close()
    with closing(sqlite3.connect(db)) as conn:
        kinds = conn.execute(
            "SELECT typeof(inputs), typeof(outputs), typeof(attributes), "
            "json_extract(outputs, '$.choices[0].message.content') FROM spans"
        ).fetchone()
    assert kinds == ("text", "text", "text", "hi \u00e9 \U0001f600 \u6f22")


def test_rewriting_a_span_never_double_counts(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store = SqliteStore(db)
    rec = chat_recording(RequestContext(trace_id="a" * 32))
    batch = build_batch(rec)
    store.write([batch])
    store.write([batch])  # a stream committed at [DONE] and again at EOF
    other = build_batch(chat_recording(RequestContext(trace_id="a" * 32)))
    store.write([other])
    store.close()
    (info,) = TraceReader(db).list_traces(TraceQuery())
    assert info["span_count"] == 2 and info["usage"]["total_tokens"] == 8


def test_error_span_makes_the_trace_error(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    store = SqliteStore(db)
    store.write(
        [
            build_batch(chat_recording(RequestContext(trace_id="b" * 32))),
            build_batch(chat_recording(RequestContext(trace_id="b" * 32), status=500)),
        ]
    )
    store.close()
    (info,) = TraceReader(db).list_traces(TraceQuery())
    assert info["status"] == "ERROR"
    assert TraceReader(db).list_traces(TraceQuery(status="OK")) == []


def test_reopening_applies_no_migration_twice(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    SqliteStore(db).close()
    SqliteStore(db).close()
    conn = sqlite3.connect(db)
    names = [r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations")]
    assert names == [
        "0001_initial",
        "0002_models",
        "0003_lighter_indexes",
        "0004_long_response_body",
        "0005_key_salt",
    ]


def index_sql(conn: sqlite3.Connection) -> dict[str, str]:
    rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql NOT NULL")
    return {name: " ".join(sql.split()) for name, sql in rows}


def test_a_database_from_before_0003_gets_the_lighter_indexes(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    store = SqliteStore(db)
    store.write([build_batch(chat_recording(RequestContext(session="s1")))])
    store.close()
    conn = sqlite3.connect(db)
    with conn:  # as 0001 and 0002 left it
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = '0003_lighter_indexes'")
        conn.execute("DROP INDEX traces_by_session")
        conn.execute("DROP INDEX spans_by_model")
        conn.execute("CREATE INDEX exchanges_by_key ON exchanges (match_key, started_ns)")
        conn.execute("CREATE INDEX traces_by_session ON traces (session, start_time_ns DESC)")
        conn.execute("CREATE INDEX spans_by_model ON spans (model, trace_id)")
    conn.close()
    SqliteStore(db).close()
    conn = sqlite3.connect(db)
    indexes = index_sql(conn)
    assert "exchanges_by_key" not in indexes
    assert indexes["traces_by_session"].endswith("WHERE session IS NOT NULL")
    assert "(model, start_time_ns, trace_id)" in indexes["spans_by_model"]
    assert conn.execute("SELECT count(*) FROM traces WHERE session = 's1'").fetchone() == (1,)


def plan(conn: sqlite3.Connection, sql: str, *params: object) -> str:
    return " / ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))


def test_the_readers_queries_use_the_indexes_left(tmp_path: Path) -> None:
    from llmtap.proxy.ui_queries import RARE, _model_condition

    db = tmp_path / "q.db"
    SqliteStore(db).close()
    conn = sqlite3.connect(db)
    sessions = plan(
        conn,
        "SELECT session, max(start_time_ns) AS last_ns FROM traces WHERE session IS NOT NULL"
        " GROUP BY session ORDER BY last_ns DESC LIMIT 10",
    )
    assert "traces_by_session" in sessions
    assert "traces_by_session (session=?)" in plan(
        conn, "SELECT * FROM traces WHERE session = ? ORDER BY start_time_ns DESC", "s"
    )
    # the model filter's probe: a trace's few spans, never every span of the model
    probe = _model_condition(conn, "gpt-4o-mini")  # nothing recorded: a rare model
    assert "spans_by_model (model=?)" in plan(
        conn, f"SELECT trace_id FROM traces WHERE {probe}", "gpt-4o-mini"
    )
    conn.executemany(  # a common model: enough spans for the probe
        "INSERT INTO spans (span_id, trace_id, name, span_type, model, start_time_ns,"
        " end_time_ns, status_code) VALUES (?, ?, 'chat', 'CHAT_MODEL', 'gpt-4o-mini', ?, ?, 'OK')",
        [(f"{i:016x}", f"{i:032x}", i, i) for i in range(RARE)],
    )
    probe = _model_condition(conn, "gpt-4o-mini")
    common = plan(
        conn,
        f"SELECT trace_id FROM traces WHERE {probe} ORDER BY start_time_ns DESC LIMIT 50",
        "gpt-4o-mini",
    )
    assert "spans_by_trace (trace_id=?)" in common and "spans_by_model" not in common


def test_checkpoints_run_beside_the_writer_and_empty_the_wal(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    store = SqliteStore(db)
    try:
        for _ in range(SqliteStore.IDLE_CHECKPOINT_AFTER):
            store.write([build_batch(chat_recording()) for _ in range(8)])
        before = db.stat().st_size  # the rows are in the WAL so far
        store.idle()  # asks the checkpointer thread; returns at once
        deadline = time.monotonic() + 10
        while db.stat().st_size == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert db.stat().st_size > before
        store.write([build_batch(chat_recording())])  # and writing goes on
    finally:
        store.close()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM exchanges").fetchone() == (
        8 * SqliteStore.IDLE_CHECKPOINT_AFTER + 1,
    )


def test_a_writer_that_never_idles_has_the_checkpointer_work_ahead_of_its_own(
    tmp_path: Path,
) -> None:
    """Under load the writer never idles, so it asks the checkpointer once a round, ahead of its
    own restart: that restart, in front of a client's commit, then has little left to copy."""
    db = tmp_path / "busy.db"
    store = SqliteStore(db)
    try:
        ahead = SqliteStore.CHECKPOINT_EVERY - SqliteStore.CHECKPOINT_AHEAD
        for _ in range(ahead - 1):
            store.write([build_batch(chat_recording())])
        time.sleep(0.2)
        before = db.stat().st_size  # nothing asked for yet: the rows are all in the WAL
        store.write([build_batch(chat_recording())])  # the batch that asks
        deadline = time.monotonic() + 10
        while db.stat().st_size == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert db.stat().st_size > before
        # the round ends: the WAL has started over (after the thread caught up, or by the
        # writer's own restart a few batches late while the thread's copy still ran), and only
        # the batches since are in it
        header = Path(str(db) + "-wal").read_bytes()[12:24]
        for _ in range(2 * SqliteStore.CHECKPOINT_AHEAD + 1):
            store.write([build_batch(chat_recording())])
        assert Path(str(db) + "-wal").read_bytes()[12:24] != header
        frames, copied = store.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1:]
        assert copied == frames and frames < 20 * SqliteStore.CHECKPOINT_EVERY // 2
    finally:
        store.close()


def test_a_wal_the_checkpointer_caught_up_with_starts_over_with_no_copy_by_the_writer(
    tmp_path: Path,
) -> None:
    """The checkpointer's passes copy the whole WAL: the writer's next transaction starts it
    over by itself, and at the end of the round the writer sees that and copies nothing in
    front of a commit."""
    db = tmp_path / "n.db"
    wal = Path(str(db) + "-wal")
    store = SqliteStore(db)
    try:
        for _ in range(10):
            store.write([build_batch(chat_recording())])
        store._since_restart = SqliteStore.CHECKPOINT_EVERY - 1  # (the thread left out of it)
        header = wal.read_bytes()[12:24]
        with closing(checkpoint_connection(str(db))) as conn:  # as the checkpointer's thread
            busy, frames, copied = checkpoint(conn)
        assert not busy and copied == frames > 0
        store.write([build_batch(chat_recording())])  # the WAL starts over under this one
        assert wal.read_bytes()[12:24] != header
        restarts: list[int] = []
        real = store._restart_wal
        store._restart_wal = lambda: restarts.append(1) or real()  # type: ignore[method-assign]
        store.write([build_batch(chat_recording())])  # the round is over
        assert restarts == [] and store._since_restart == 1
    finally:
        store.close()


def test_the_wal_starts_over_under_sustained_load(tmp_path: Path) -> None:
    """Checkpoints asked of the checkpointer between writes that never pause may never catch
    up; the writer's own, every CHECKPOINT_EVERY batches and again at once when it did not catch
    up, bounds the WAL."""
    db = tmp_path / "w.db"
    wal = Path(str(db) + "-wal")
    store = SqliteStore(db)
    most = 0
    try:
        for i in range(4 * SqliteStore.CHECKPOINT_EVERY):
            store.write([build_batch(chat_recording())])
            if i % 4 == 3:
                store._since_checkpoint = SqliteStore.IDLE_CHECKPOINT_AFTER
                store.idle()  # a moment without work: the checkpointer is asked
            most = max(most, wal.stat().st_size)
    finally:
        store.close()
    one_round = SqliteStore.CHECKPOINT_EVERY * 20 * 4120  # ~20 frames a lone recording at most
    # 0.77-0.79 of a round in 8 runs beside two CPU burners (0.70-0.71 before the restart
    # could wait up to CHECKPOINT_AHEAD batches for a checkpoint of the thread's); 1.3-2.7 when
    # the checkpointer's own checkpoint could run into the writer's and make it wait a round
    assert most < 1.2 * one_round
