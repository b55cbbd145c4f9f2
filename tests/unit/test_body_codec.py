"""Bodies packed for the database: exact for every input, small for streams, and read back as
sent by replay and cassettes from a real store."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import orjson
from hypothesis import given
from hypothesis import strategies as st

from llmtap.recorder.body_codec import MARKER, PACK_FROM, pack_body, unpack_body
from llmtap.recorder.cassettes import (
    exchange_rows,
    export_cassette,
    import_cassette,
    load_cassette,
)
from llmtap.recorder.recording import Recording
from llmtap.recorder.records import RequestContext
from llmtap.recorder.replay import ReplayIndex
from llmtap.recorder.sqlite import SqliteStore
from llmtap.recorder.tracing import build_batch
from tests.unit.chunk_factory import make_chunks, sse_bytes


@given(st.binary(max_size=4 * PACK_FROM))
def test_any_body_comes_back_as_it_was(body: bytes) -> None:
    assert unpack_body(pack_body(body)) == body


@given(st.binary(max_size=64))
def test_a_body_that_starts_like_a_packed_one_comes_back_as_it_was(tail: bytes) -> None:
    body = MARKER + tail
    stored = pack_body(body)
    assert stored != body  # it had to be packed: read as sent, it would be taken for packed
    assert unpack_body(stored) == body


def test_rows_written_before_packing_read_as_they_are() -> None:
    for body in (b"", b'{"id": 1}', b"data: x\n\n" * 500, MARKER[:-1] + b"x" * 2000):
        assert unpack_body(body) == body


def test_small_and_incompressible_bodies_are_kept_as_sent() -> None:
    small = b"data: hello\n\n" * ((PACK_FROM - 1) // 13)
    assert pack_body(small) == small
    noise = os.urandom(20_000)  # say, a body the upstream had compressed already
    assert pack_body(noise) == noise


def test_a_stream_is_packed_to_a_fraction() -> None:
    wire = sse_bytes(make_chunks("word " * 100, usage=True))
    stored = pack_body(wire)
    assert stored.startswith(MARKER)
    assert len(stored) * 10 < len(wire)


def stream_recording(text: str) -> tuple[Recording, bytes]:
    wire = sse_bytes(make_chunks(text, usage=True))
    request = orjson.dumps(
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": text}]}
    )
    rec = Recording("POST", "/chat/completions", "", [], request, RequestContext())
    rec.respond(200, [("content-type", "text/event-stream")])
    for i in range(0, len(wire), 700):
        rec.feed(wire[i : i + 700])
    return rec.finish(), wire


def test_a_stored_stream_is_small_on_disk_and_exact_for_replay_and_cassettes(
    tmp_path: Path,
) -> None:
    db = tmp_path / "packed.db"
    rec, wire = stream_recording("tick " * 300)
    store = SqliteStore(db)
    try:
        store.write([build_batch(rec)])
    finally:
        store.close()

    with closing(sqlite3.connect(db)) as conn:
        stored_response, stored_request = conn.execute(
            "SELECT length(response_body), length(request_body) FROM exchanges"
        ).fetchone()
    assert stored_response * 10 < len(wire)
    assert stored_request < len(rec.request_body)

    index = ReplayIndex(str(db))
    assert index.load() == 1
    recorded = index.fetch(rec.exchange_id)
    assert recorded.body == wire
    assert sum(size for size, _ in recorded.chunks) == len(wire)

    cassette = tmp_path / "c.yaml"
    assert export_cassette(db, cassette) == 1
    (entry,) = load_cassette(cassette)
    assert entry["request"]["json"] == orjson.loads(rec.request_body)
    copy = tmp_path / "copy.db"
    assert import_cassette(cassette, copy) == 1
    (row,) = list(exchange_rows(copy))
    assert unpack_body(bytes(row["response_body"])) == wire
    assert unpack_body(bytes(row["request_body"])) == rec.request_body
