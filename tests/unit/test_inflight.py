"""The in-flight log: what it gives back is exactly what was appended and not acknowledged,
whatever the sizes, the wrap-arounds and the order of acknowledgements; an entry cut short
or left from an earlier start is never given back; a file from elsewhere runs no code."""

from __future__ import annotations

import os
import pickle
import sqlite3
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmtap.recorder.inflight import (
    InflightLog,
    inflight_path,
    plain_loads,
    read_log,
    settle,
)
from llmtap.recorder.recording import Recording
from llmtap.recorder.records import RequestContext
from llmtap.recorder.writer_process import (
    WriterConfig,
    open_batch_writer,
    pack_recording,
    store_recovered,
)

RING = 64 << 10


def payload(seq: int, size: int) -> bytes:
    return pickle.dumps([seq, os.urandom(size)], protocol=pickle.HIGHEST_PROTOCOL)


def opened(tmp_path: Path, size: int = RING) -> InflightLog:
    log = InflightLog.take(str(tmp_path / "t.db"), size=size)
    assert log is not None
    log.start(WriterConfig(db=str(tmp_path / "t.db")), 0)
    return log


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["append", "append", "append", "skip", "ack", "ack-some"]),
            st.integers(min_value=0, max_value=RING // 3),
        ),
        max_size=120,
    )
)
def test_what_it_gives_back_is_what_was_not_acknowledged(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]]
) -> None:
    tmp = tmp_path_factory.mktemp("ring")
    log = opened(tmp)
    path = log.path
    try:
        seq = 0
        pending: dict[int, bytes | None] = {}  # not acknowledged; None: not in the log
        for op, n in steps:
            if op == "append":
                data = payload(seq, n)
                pending[seq] = data if log.append(seq, data) else None
                seq += 1
            elif op == "skip":  # a recording waited for (not in the log) takes a number
                pending[seq] = None
                seq += 1
            elif op == "ack" and pending:
                del pending[min(pending)]
                log.acknowledged(pending)
            elif op == "ack-some" and pending:  # a recording given up, out of order
                del pending[sorted(pending)[n % len(pending)]]
                log.acknowledged(pending)
            _, entries = read_log(path)
            found = {e.seq: e.values for e in entries}
            assert [e.seq for e in entries] == sorted(found), "in order"
            for s, data in pending.items():
                if data is not None:  # every entry not acknowledged is found, whole
                    assert found.get(s) == pickle.loads(data)
            for s, values in found.items():  # and nothing else, but for those acknowledged
                assert values[0] == s  # out of order behind one that was not (kept: harmless)
                assert s >= min(pending, default=seq), "an acknowledged entry came back"
    finally:
        log.close(stored=False)


def test_a_full_ring_says_so_and_makes_room_as_entries_are_acknowledged(tmp_path: Path) -> None:
    log = opened(tmp_path)
    try:
        big = payload(0, RING // 3)
        assert log.append(0, big) and log.append(1, big)
        assert not log.append(2, big), "no room: the proxy waits for the commit instead"
        log.acknowledged({1})
        assert log.append(2, big), "the first entry's room is used again (wrapped)"
        assert [e.seq for e in read_log(log.path)[1]] == [1, 2]
        assert not log.append(3, payload(3, RING)), "larger than the ring"
    finally:
        log.close(stored=False)


def test_an_entry_cut_short_by_a_kill_is_not_found(tmp_path: Path) -> None:
    log = opened(tmp_path)
    try:
        assert log.append(0, payload(0, 100))
        # the next entry's payload was copied in, its head not yet (the order `append` keeps)
        os.pwrite(log._fd, b"x" * 50, log._head + 24)
        assert [e.seq for e in read_log(log.path)[1]] == [0]
    finally:
        log.close(stored=False)


def test_a_tail_update_torn_by_a_kill_loses_nothing(tmp_path: Path) -> None:
    log = opened(tmp_path)
    try:
        for seq in range(3):
            assert log.append(seq, payload(seq, 100))
        offsets = [at for _, at in log._live]
        # the tail moved to entry 1: its offset was written, the kill came before its number
        os.pwrite(log._fd, struct.pack("<Q", offsets[1]), 24)
        assert [e.seq for e in read_log(log.path)[1]] == [1, 2]
    finally:
        log.close(stored=False)


def test_a_new_start_disowns_what_the_file_held(tmp_path: Path) -> None:
    log = opened(tmp_path)
    assert log.append(0, payload(0, 100))
    log.close(stored=False)
    assert [e.seq for e in read_log(inflight_path(str(tmp_path / "t.db")))[1]] == [0]
    again = opened(tmp_path)
    try:
        assert read_log(again.path)[1] == []
        assert again.append(0, payload(0, 10))  # the same number and place as the old entry
        assert [e.values[0] for e in read_log(again.path)[1]] == [0]
    finally:
        again.close(stored=True)
    assert not os.path.exists(inflight_path(str(tmp_path / "t.db")))


def test_one_proxy_at_a_time_appends(tmp_path: Path) -> None:
    first = opened(tmp_path)
    try:
        assert InflightLog.take(str(tmp_path / "t.db"), wait=0.1) is None
    finally:
        first.close(stored=True)
    second = InflightLog.take(str(tmp_path / "t.db"), wait=0.1)
    assert second is not None
    second.close(stored=True)


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/llmtap-inflight-pwned",))


def test_a_log_from_elsewhere_runs_no_code(tmp_path: Path) -> None:
    crafted = pickle.dumps([_Boom()])
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        plain_loads(crafted)
    log = opened(tmp_path)
    try:
        assert log.append(0, crafted) and log.append(1, payload(1, 10))
        _, entries = read_log(log.path)
        assert [e.seq for e in entries] == [1], "the crafted entry is skipped, the next kept"
    finally:
        log.close(stored=False)
    assert not os.path.exists("/tmp/llmtap-inflight-pwned")


def test_settle_with_no_log_or_an_empty_one_does_nothing(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    settle(db)  # no file
    log = opened(tmp_path)
    log.close(stored=False)
    settle(db)  # a log with nothing in it: no database is made
    assert not os.path.exists(db)


def test_a_crafted_log_is_walked_no_further_than_the_ring(tmp_path: Path) -> None:
    """A wrap mark at the ring's start pointing at itself, in a sparse file of a terabyte:
    before, `llmtap serve` never became ready and its writer process spun."""
    log = opened(tmp_path)
    epoch = log._epoch
    log.close(stored=False)
    path = inflight_path(str(tmp_path / "t.db"))
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(struct.pack("<IIQQ", 0, 2, epoch, 0))  # a wrap mark, at the start
        f.truncate(1 << 40)
    started = time.monotonic()
    assert read_log(path)[1] == []
    assert time.monotonic() - started < 1


def _answered() -> Recording:
    rec = Recording(
        "POST",
        "/chat/completions",
        "",
        [("content-type", "application/json")],
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
        RequestContext(),
    )
    rec.respond(200, [("content-type", "application/json")])
    rec.feed(
        b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":'
        b'{"role":"assistant","content":"yo"},"finish_reason":"stop"}]}'
    )
    rec.finish()
    return rec


def test_a_recovery_ends_on_the_last_version_of_an_exchange(tmp_path: Path) -> None:
    """The log held an answer and then its client leaving (two versions of one exchange),
    both committed before a kill took their acknowledgements: stored again, the first came
    back over the second (it did not match the row, the second did and was skipped)."""
    db = str(tmp_path / "v.db")
    rec = _answered()
    answered = pack_recording(rec)
    rec.fail("client disconnected")
    left = pack_recording(rec)
    writer = open_batch_writer(WriterConfig(db=db))
    try:
        assert store_recovered(writer, db, [answered, left])  # committed, acks lost
        assert store_recovered(writer, db, [answered, left])  # found in the log again
        assert store_recovered(writer, db, [answered])  # an older version than the row's
    finally:
        writer.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT error FROM exchanges").fetchall() == [("client disconnected",)]
