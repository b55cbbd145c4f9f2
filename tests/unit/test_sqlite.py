"""SqliteStore on a real file: schema, round trip through the reader, idempotent re-writes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

from llmtap.recorder.reader import TraceQuery, TraceReader
from llmtap.recorder.recording import Recording
from llmtap.recorder.records import RequestContext
from llmtap.recorder.sqlite import SqliteStore
from llmtap.recorder.tracing import build_batch

CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


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
    assert names == ["0001_initial", "0002_models"]
