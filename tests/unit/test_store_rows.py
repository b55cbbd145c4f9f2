"""SqliteStore's rows as readers expect them: a new trace's row, inserted from its spans,
equals the aggregate over them; inputs and outputs are stored in one canonical JSON form
(orjson's, whatever the client's spacing and escapes: the UI's text search and SQL `LIKE`
patterns rely on it) and read back as the values they were."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmtap.recorder.reader import TraceReader
from llmtap.recorder.recording import Recording
from llmtap.recorder.records import (
    Batch,
    Exchange,
    RequestContext,
    Span,
    SpanType,
    Status,
    TraceHead,
)
from llmtap.recorder.sqlite import SqliteStore, _json
from llmtap.recorder.tracing import build_batch

# -- trace rows

# the status: an agent run's is its AGENT root's (MLflow: a trace's is its root span's), any
# other trace's ERROR when a span is
AGGREGATE = """
SELECT CASE
        WHEN EXISTS (SELECT 1 FROM spans WHERE trace_id = ?1 AND span_type = 'AGENT') THEN
            coalesce((SELECT 'ERROR' FROM spans
                WHERE trace_id = ?1 AND span_type = 'AGENT' AND status_code = 'ERROR'), 'OK')
        WHEN sum(status_code = 'ERROR') > 0 THEN 'ERROR' ELSE 'OK' END,
    strftime('%Y-%m-%dT%H:%M:%fZ', min(start_time_ns) / 1e9, 'unixepoch'),
    min(start_time_ns), max(end_time_ns), (max(end_time_ns) - min(start_time_ns)) / 1e6,
    count(*), sum(input_tokens), sum(output_tokens), sum(total_tokens), sum(total_cost)
FROM spans WHERE trace_id = ?1
"""
ROW = (
    "SELECT status, request_time, start_time_ns, end_time_ns, execution_time_ms, span_count, "
    "input_tokens, output_tokens, total_tokens, total_cost FROM traces WHERE trace_id = ?"
)

TRACES = ["a" * 32, "b" * 32, "c" * 32]


def exchange(n: int) -> Exchange:
    return Exchange(
        f"x{n:015d}", "POST", "/chat/completions", "", (), b"{}", 200, (), b"{}", "[]", 1, 2, None,
        None, None, "Default",
    )  # fmt: skip


spans = st.builds(
    lambda trace, k, kind, start, length, error, tokens, cost: Span(
        span_id=f"{trace[0]}{k:015d}",
        trace_id=trace,
        parent_id=None,
        name="chat.completions",
        span_type=kind,
        start_time_ns=start,
        end_time_ns=start + length,
        status=Status("ERROR", "x") if error else Status(),
        inputs={"model": "m"},
        outputs=None,
        attributes={
            "usage": {"input_tokens": tokens, "output_tokens": 2, "total_tokens": tokens + 2},
            **({"cost": {"total_cost": cost}} if cost is not None else {}),
        },
    ),
    st.sampled_from(TRACES),
    st.integers(0, 5),
    st.sampled_from([SpanType.CHAT_MODEL, SpanType.TOOL, SpanType.AGENT]),
    st.integers(1_700_000_000_000_000_000, 1_700_000_100_000_000_000),
    st.integers(0, 10**10),
    st.booleans(),
    st.integers(0, 10**6),
    st.none() | st.floats(0, 1, allow_subnormal=False) | st.just(0.1) | st.just(0.2),
)
batches = st.lists(spans, min_size=1, max_size=3).map(
    lambda group: [s for s in group if s.trace_id == group[-1].trace_id]
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(batches, min_size=1, max_size=4), min_size=1, max_size=4))
def test_trace_rows_equal_the_aggregate_over_their_spans(
    tmp_path_factory: pytest.TempPathFactory, writes: list[list[list[Span]]]
) -> None:
    db = tmp_path_factory.mktemp("agg") / "t.db"
    store = SqliteStore(db)
    sessions: dict[str, str | None] = {}
    tags: dict[str, dict[str, str]] = {}
    n = 0
    for write in writes:
        batch_list = []
        for group in write:
            n += 1
            trace = group[-1].trace_id
            head = TraceHead(trace, "Default", f"s{n}" if n % 3 else None, {f"k{n % 2}": str(n)})
            sessions[trace] = sessions.get(trace) or head.session
            tags[trace] = {**tags.get(trace, {}), **head.tags}
            batch_list.append(Batch(exchange(n), "key", spans=tuple(group), trace=head))
        store.write(batch_list)
    store.close()
    conn = sqlite3.connect(db)
    for trace in sessions:
        assert (
            conn.execute(ROW, (trace,)).fetchone() == conn.execute(AGGREGATE, (trace,)).fetchone()
        )
        session, tag_text = conn.execute(
            "SELECT session, tags FROM traces WHERE trace_id = ?", (trace,)
        ).fetchone()
        assert session == sessions[trace]
        assert orjson.loads(tag_text) == tags[trace]
    conn.close()


# -- inputs and outputs: canonical JSON text, whatever the client's

BODIES = [
    b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}',
    b'{\n  "model": "m",\n  "temperature": 1E2,\n  "n": 1.0,\n  "z": -0.0\n}\n',
    b'  {"model":"m","big":18446744073709551616,"neg":-9223372036854775809}  ',
    '{"model":"m","u":"h\u00e9llo \U0001f389 \\u00e9\\ud83c\\udf89 \\"q\\" \\/"}'.encode(),
    b'{"model":"m","a":1,"a":2}',
    b'["not", "an", "object"]',
    b'"just a string"',
    b"null",
    b"",
    b"not json",
    b'{"model": "m", "bad": "\xff"}',
]


def recording(body: bytes, answer: bytes) -> Recording:
    rec = Recording(
        "POST", "/chat/completions", "", [("content-type", "application/json")], body,
        RequestContext(),
    )  # fmt: skip
    rec.respond(200, [("content-type", "application/json")])
    rec.feed(answer)
    return rec.finish()


def read_back(db: Path, rec: Recording) -> dict[str, Any]:
    trace = TraceReader(db).get_trace(rec.trace_id)
    assert trace is not None
    return trace["spans"][-1]


def serialised_again(value: Any) -> bytes:
    """What the long way stores and reads back, dumped for a comparison that sees types."""
    return orjson.dumps(orjson.loads(_json(value)))


@pytest.mark.parametrize("body", BODIES)
def test_inputs_read_back_as_serialised_again(tmp_path: Path, body: bytes) -> None:
    db = tmp_path / "t.db"
    store = SqliteStore(db)
    rec = recording(body, b'{"id": "chatcmpl-1", "choices": []}')
    batch = build_batch(rec)
    store.write([batch])
    store.close()
    span = read_back(db, rec)
    assert orjson.dumps(span["inputs"]) == serialised_again(batch.spans[-1].inputs)
    conn = sqlite3.connect(db)
    text, valid = conn.execute("SELECT inputs, json_valid(inputs) FROM spans").fetchone()
    assert (text, valid) == (_json(batch.spans[-1].inputs), 1)


ANSWERS = [
    b'{"id":"chatcmpl-1","object":"chat.completion","model":"m","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"h\\u00e9 \xc3\xa9"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}',
    b'{\n "id": "x",\n "choices": [],\n "n": 1E2\n}\n',
    b"[1, 2]",
    b"garbage",
    b"",
]


@pytest.mark.parametrize("answer", ANSWERS)
def test_outputs_read_back_as_serialised_again(tmp_path: Path, answer: bytes) -> None:
    db = tmp_path / "t.db"
    store = SqliteStore(db)
    rec = recording(BODIES[0], answer)
    batch = build_batch(rec)
    store.write([batch])
    store.close()
    span = read_back(db, rec)
    assert orjson.dumps(span["outputs"]) == serialised_again(batch.spans[-1].outputs)
    assert orjson.dumps(span["attributes"]) == serialised_again(batch.spans[-1].attributes)
