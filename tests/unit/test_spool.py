"""A long stream's pieces on file: read back byte for byte and piece for piece, and stored
from the file into its row with the same bytes, chunk times and reassembly as from memory."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import orjson
import pytest
from chunk_factory import make_chunks, sse_bytes
from hypothesis import given, settings
from hypothesis import strategies as st

from llmtap.recorder.body_codec import unpack_body
from llmtap.recorder.recording import Recording
from llmtap.recorder.records import RequestContext
from llmtap.recorder.schema import RESPONSE_BODY
from llmtap.recorder.spool import PieceSpool
from llmtap.recorder.sqlite import LONG_PACKED_AT_MOST, SqliteStore
from llmtap.recorder.tracing import build_batch

pieces_strategy = st.lists(st.binary(max_size=300), max_size=60)


@settings(max_examples=150, deadline=None)
@given(
    pieces=pieces_strategy,
    keep=st.integers(min_value=0, max_value=2000),
    block=st.integers(min_value=1, max_value=700),
    feeds=st.integers(min_value=1, max_value=6),
)
def test_the_spool_gives_back_what_it_was_fed(
    pieces: list[bytes], keep: int, block: int, feeds: int
) -> None:
    spool = PieceSpool(None, keep)  # unnamed (named ones: below)
    times = [1_000 + 7 * i for i in range(len(pieces))]
    step = max(1, len(pieces) // feeds)
    for at in range(0, len(pieces), step):
        spool.extend(pieces[at : at + step], times[at : at + step])
    whole = b"".join(pieces)
    try:
        assert spool.on_file == (len(whole) > keep)
        assert len(spool) == len(whole) and list(spool.lengths) == [len(p) for p in pieces]
        assert b"".join(spool.blocks(block)) == whole
        assert b"".join(spool.blocks(block)) == whole  # again: a batch may be written twice
        again = [(p, t) for ps, ts in spool.batches(block) for p, t in zip(ps, ts, strict=True)]
        assert again == list(zip(pieces, times, strict=True))
        if not spool.on_file:
            assert spool.held() == pieces
    finally:
        spool.close()


def long_stream(seed: int) -> tuple[Recording, list[bytes]]:
    """A finished streamed chat recording in random cuts (a piece may be empty)."""
    rng = random.Random(seed)
    text = " ".join(f"word{i}" for i in range(400))
    wire = sse_bytes(make_chunks(text, usage=True))
    cuts = sorted(rng.sample(range(1, len(wire)), 120))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    rec = Recording(
        "POST",
        "/chat/completions",
        "",
        [("content-type", "application/json")],
        b'{"model": "gpt-4o-mini", "stream": true, "messages": []}',
        RequestContext(),
    )
    rec.respond(200, [("content-type", "text/event-stream")])
    for piece in pieces:
        rec.feed(piece)
    return rec.finish(), pieces


def on_file(rec: Recording, directory: Path) -> Recording:
    """The same recording as the writer process hands a long stream to the build."""
    spool = PieceSpool(str(directory / rec.exchange_id), 64)
    spool.extend(rec.chunks, rec.chunk_times_ns)
    assert spool.on_file
    twin = Recording(
        rec.method,
        rec.path,
        rec.query,
        rec.request_headers,
        rec.request_body,
        rec.context,
        started_ns=rec.started_ns,
        exchange_id=rec.exchange_id,
        span_id=rec.span_id,
        trace_id=rec.trace_id,
    )
    twin.respond(rec.status or 200, rec.response_headers)
    twin.ended_ns, twin.spool = rec.ended_ns, spool
    return twin


def row(db: Path, exchange_id: str) -> tuple[bytes, list, str]:
    conn = sqlite3.connect(db)
    try:
        body, chunks, outputs = conn.execute(
            f"SELECT {RESPONSE_BODY}, chunks, outputs "
            "FROM exchanges JOIN spans USING (exchange_id) WHERE exchange_id = ?",
            [exchange_id],
        ).fetchone()
    finally:
        conn.close()
    return unpack_body(bytes(body)), orjson.loads(chunks), outputs


def test_a_stream_on_file_is_stored_as_the_same_stream_in_memory(tmp_path: Path) -> None:
    for seed in range(5):
        rec, pieces = long_stream(seed)
        twin = on_file(rec, tmp_path)
        in_memory, from_file = build_batch(rec), build_batch(twin)
        assert from_file.spans[-1].outputs == in_memory.spans[-1].outputs
        assert from_file.spans[-1].attributes == in_memory.spans[-1].attributes
        assert orjson.loads(from_file.exchange.chunks) == orjson.loads(in_memory.exchange.chunks)
        assert from_file.exchange.first_byte_ns == in_memory.exchange.first_byte_ns

        db_a, db_b = tmp_path / f"a{seed}.db", tmp_path / f"b{seed}.db"
        for db, batch in ((db_a, in_memory), (db_b, from_file)):
            store = SqliteStore(db)
            try:
                store.write([batch])
            finally:
                store.close()
        assert row(db_b, rec.exchange_id) == row(db_a, rec.exchange_id)
        assert row(db_b, rec.exchange_id)[0] == b"".join(pieces)
        twin.spool.close()


def done_only(rec: Recording) -> Recording:
    """Another copy of `rec`'s exchange, in memory, whose body is only `[DONE]`."""
    short = Recording(
        rec.method, rec.path, "", [], rec.request_body, rec.context,
        started_ns=rec.started_ns, exchange_id=rec.exchange_id, span_id=rec.span_id,
        trace_id=rec.trace_id,
    )  # fmt: skip
    short.respond(200, rec.response_headers)
    short.feed(b"data: [DONE]\n\n")
    return short.finish()


@pytest.mark.parametrize("packs", [True, False], ids=["packs", "does-not-pack"])
def test_a_later_copy_in_memory_replaces_one_on_file_in_the_same_write(
    tmp_path: Path, packs: bool
) -> None:
    """A stream committed at [DONE] and again, fuller, in one transaction: the last one wins,
    wherever its body is. A long body is packed into `response_body`; one that does not pack
    to `LONG_PACKED_AT_MOST` or less is not held whole: it is copied as sent into
    `long_response_body`, a block at a time."""
    rec, pieces = long_stream(7) if packs else noise_stream(LONG_PACKED_AT_MOST + (1 << 20))
    twin = on_file(rec, tmp_path)
    short = done_only(rec)
    try:
        for name, order, expected in (
            ("long.db", (twin,), b"".join(pieces)),
            ("c.db", (twin, short), b"data: [DONE]\n\n"),
            ("d.db", (short, twin), b"".join(pieces)),
        ):
            store = SqliteStore(tmp_path / name)
            try:
                store.write([build_batch(r) for r in order])
            finally:
                store.close()
            assert row(tmp_path / name, rec.exchange_id)[0] == expected
            with closing(sqlite3.connect(tmp_path / name)) as conn:
                short_body, long_body = conn.execute(
                    "SELECT length(response_body), length(long_response_body) FROM exchanges"
                ).fetchone()
            if len(expected) > LONG_PACKED_AT_MOST:
                assert short_body == 0 and long_body == len(expected)
            else:
                assert long_body is None
    finally:
        twin.spool.close()


_COPY_PROBE = """
import sys
from llmtap.recorder.spool import PieceSpool
from llmtap.recorder.sqlite import SqliteStore, _copy_body

def peak_kb():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmHWM:")[1].split()[0])

store = SqliteStore(sys.argv[1])
conn = store.conn
conn.execute("BEGIN IMMEDIATE")
conn.execute(
    "INSERT INTO exchanges (exchange_id, experiment, method, path, match_key, request_headers,"
    " request_body, response_headers, response_body, chunks, started_ns, ended_ns)"
    " VALUES ('x', 'Default', 'POST', '/chat/completions', '', '[]', x'', '[]', x'', '[]', 1, 2)"
)
spool = PieceSpool(sys.argv[2] + "/spool", 0)
for i in range(128):
    spool.extend([bytes([i]) * (1 << 20)], [i])
before = peak_kb()
_copy_body(conn, "x", spool)
conn.execute("COMMIT")
print(peak_kb() - before)
store.close()
"""


def test_a_long_body_goes_into_its_row_without_being_held_in_memory(tmp_path: Path) -> None:
    """128 MB copied from the spool into the row: the writer's peak memory grows by a block or
    two (in `response_body`, mid-row, SQLite expanded the zeroblob: ~2x the body)."""
    db = tmp_path / "long.db"
    probe = subprocess.run(
        [sys.executable, "-c", _COPY_PROBE, str(db), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(probe.stdout) < 32 << 10  # KB
    conn = sqlite3.connect(db)
    try:
        short, long = conn.execute(
            "SELECT length(response_body), long_response_body FROM exchanges"
        ).fetchone()
    finally:
        conn.close()
    assert short == 0
    assert long == b"".join(bytes([i]) * (1 << 20) for i in range(128))


def test_a_spool_file_that_cannot_be_made_keeps_the_pieces_in_memory(tmp_path: Path) -> None:
    """A full disk (here: a directory that cannot be made) costs memory, never the stream."""
    (tmp_path / "a-file").write_bytes(b"")
    spool = PieceSpool(str(tmp_path / "a-file" / "spool"), 10)
    pieces = [b"data: %d\n\n" % i for i in range(50)]
    spool.extend(pieces[:20], list(range(20)))
    spool.extend(pieces[20:], list(range(20, 50)))
    assert not spool.on_file
    assert spool.held() == pieces and b"".join(spool.blocks()) == b"".join(pieces)


@settings(max_examples=60, deadline=None)
@given(pieces=pieces_strategy, keep=st.integers(min_value=0, max_value=1500))
def test_pieces_after_the_file_are_read_back_after_it(pieces: list[bytes], keep: int) -> None:
    """Pieces are moved to the file `keep` bytes at a time: between two moves the body is the
    file, then the pieces held."""
    spool = PieceSpool(None, keep)
    for i, piece in enumerate(pieces):
        spool.extend([piece], [i])
        seen = b"".join(pieces[: i + 1])
        assert b"".join(spool.blocks(97)) == seen
    again = [p for ps, _ in spool.batches(97) for p in ps]
    assert again == pieces
    spool.close()


def test_a_new_writer_takes_over_the_file_up_to_the_pieces_the_proxy_let_go_of(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "spool" / "abc")
    pieces = [b"piece %d;" % i for i in range(40)]
    first = PieceSpool(path, 30)
    spilled = [first.extend([p], [100 + i]) for i, p in enumerate(pieces[:25])]
    assert any(spilled) and first.on_file and 0 < first.file_pieces < 25
    on_file = first.file_pieces  # what the proxy was told
    for i in range(25, 40):  # more pieces go to the file before the proxy hears of them
        first.extend([pieces[i]], [100 + i])
    assert first.file_pieces > on_file
    # the writer process dies here: nothing closes `first`
    taken = PieceSpool.adopt(path, on_file, 30)
    assert b"".join(taken.blocks(7)) == b"".join(pieces[:on_file])
    assert list(taken.times) == [100 + i for i in range(on_file)]
    taken.extend(pieces[on_file:], [100 + i for i in range(on_file, 40)])
    assert b"".join(taken.blocks(5)) == b"".join(pieces)
    assert [p for ps, _ in taken.batches(11) for p in ps] == pieces
    snapshot = taken.snapshot()
    taken.extend([b"after [DONE]"], [999])
    taken.close()  # the stream dropped before the record of the snapshot is written
    assert not Path(path).exists() and not Path(path + ".index").exists()
    assert b"".join(snapshot.blocks()) == b"".join(pieces)
    snapshot.close()
    try:
        PieceSpool.adopt(path, 1)
    except OSError:
        pass
    else:
        raise AssertionError("a file that is gone cannot be taken over")


def test_a_file_shorter_than_the_pieces_it_should_hold_is_not_taken_over(tmp_path: Path) -> None:
    path = str(tmp_path / "short")
    spool = PieceSpool(path, 0)
    spool.extend([b"x" * 100, b"y" * 100], [1, 2])
    try:
        PieceSpool.adopt(path, 3)  # the proxy believes in 3: the index has 2
    except OSError as exc:
        assert "holds 2 pieces, not 3" in str(exc)
    else:
        raise AssertionError("adopted pieces that are not there")
    finally:
        spool.close()


def noise_stream(size: int) -> tuple[Recording, list[bytes]]:
    """A streamed recording whose body does not pack (random bytes, as a compressed or
    encrypted answer would be)."""
    rng = random.Random(size)
    pieces = [rng.randbytes(1 << 20) for _ in range(size >> 20)]
    rec = Recording(
        "POST", "/chat/completions", "", [], b'{"model": "m", "stream": true}', RequestContext()
    )
    rec.respond(200, [("content-type", "text/event-stream")])
    for piece in pieces:
        rec.feed(piece)
    return rec.finish(), pieces
