"""SPEC 6 with answers that no longer wait for the commit: in record mode `llmtap serve`
answers once a recording is in its in-flight log, and what a kill leaves there reaches the
database (the writer process whose proxy died, the next start, any reading command), once.

The writer process is stopped (SIGSTOP) to hold recordings in flight: what the clients then
receive is in the log only, which is the state a kill finds most of the time under load."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llmtap.recorder.inflight import inflight_path, read_log
from tests.conftest import TEST_KEY
from tests.crash.test_kill9 import one_call, start_serve, writer_pid

pytestmark = pytest.mark.slow
AUTH = {"authorization": f"Bearer {TEST_KEY}"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmtap.proxy.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def stored_inputs(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return "\n".join(r[0] for r in conn.execute("SELECT inputs FROM spans"))
    finally:
        conn.close()


@contextlib.contextmanager
def serving(db: Path, upstream: str) -> Iterator[tuple[subprocess.Popen[bytes], str, int]]:
    """`llmtap serve` (the process, its address, its writer process's pid), stopped after."""
    proc, url = start_serve(db, upstream)
    writer = writer_pid(proc)
    try:
        yield proc, url, writer
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(writer, signal.SIGCONT)
        if proc.poll() is None:
            proc.terminate()
        proc.wait(20)


def kill_both(proc: subprocess.Popen[bytes], writer: int) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    os.kill(writer, signal.SIGKILL)
    os.kill(writer, signal.SIGCONT)
    proc.wait(10)


def left_in_flight(db: Path, upstream: str, count: int) -> list[str]:
    """`count` calls answered from the in-flight log only (the writer process stopped), then
    the proxy and its writer killed: what they leave behind."""
    with serving(db, upstream) as (proc, url, writer):
        os.kill(writer, signal.SIGSTOP)
        answered = calls(url, 0, count)
        kill_both(proc, writer)
    return answered


@contextlib.contextmanager
def write_locked(db: Path) -> Iterator[None]:
    """Another process holds the database's write lock (a sqlite3 shell in a transaction)."""
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.rollback()
        holder.close()


def wait_exited(pid: int) -> None:
    """Until the process has exited (a zombie: its parent was killed; init reaps it)."""
    deadline = time.monotonic() + 20
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(") ", 1)[1].startswith("Z"):
                return
        time.sleep(0.02)


def trace_count(url: str) -> int:
    return len(httpx.get(f"{url}/api/traces?limit=100", timeout=30).json()["traces"])


def wait_stored(db: Path, markers: list[str]) -> None:
    """Until the writer process has stored these (it does within milliseconds)."""
    deadline = time.monotonic() + 10
    while not all(m in stored_inputs(db) for m in markers):
        assert time.monotonic() < deadline, "never stored"
        time.sleep(0.01)


def calls(url: str, first: int, count: int) -> list[str]:
    """Non-streamed chat calls (`one_call`'s every third): streams wait for their commit."""
    markers = [one_call(url, 3 * i + 1) for i in range(first, first + count)]
    assert all(markers), "every call was answered in full"
    return markers  # type: ignore[return-value]


def test_everything_killed_at_once_then_a_reading_command_stores_what_was_in_flight(
    tmp_path: Path, upstream: str
) -> None:
    db = tmp_path / "group.db"
    with serving(db, upstream) as (proc, url, writer):
        stored = calls(url, 0, 6)
        wait_stored(db, stored)
        os.kill(writer, signal.SIGSTOP)
        in_flight = calls(url, 6, 6)  # answered while nothing could be stored
        kill_both(proc, writer)
    inputs = stored_inputs(db)
    assert not any(m in inputs for m in in_flight), "held in flight, as the test meant"
    assert len(read_log(inflight_path(str(db)))[1]) == 6

    out = cli("traces", "--json", "--limit", "100", "--db", str(db))
    assert out.returncode == 0, out.stderr
    assert "stored 6 recording(s)" in out.stderr
    assert len(json.loads(out.stdout)["traces"]) == 12
    inputs = stored_inputs(db)
    assert all(m in inputs for m in stored + in_flight)
    assert read_log(inflight_path(str(db)))[1] == [], "stored once: disowned"

    # the next start finds nothing left to store: no recording twice
    with serving(db, upstream) as (_, url, _):
        assert trace_count(url) == 12
    assert not os.path.exists(inflight_path(str(db))), "a clean stop removes the log"


def test_the_next_start_stores_what_a_killed_proxy_left(tmp_path: Path, upstream: str) -> None:
    db = tmp_path / "restart.db"
    in_flight = left_in_flight(db, upstream, 5)
    with serving(db, upstream) as (_, url, _):
        assert trace_count(url) == 5  # stored before the server answered its first request
        assert all(m in stored_inputs(db) for m in in_flight)
        assert calls(url, 5, 2)
        assert trace_count(url) == 7


def test_the_writer_process_stores_what_its_dead_proxy_had_answered(
    tmp_path: Path, upstream: str
) -> None:
    db = tmp_path / "orphan.db"
    with serving(db, upstream) as (proc, url, writer):
        os.kill(writer, signal.SIGSTOP)
        in_flight = calls(url, 0, 6)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        os.kill(writer, signal.SIGCONT)  # it reads the end of its socket, and what it never got
        wait_exited(writer)
    inputs = stored_inputs(db)
    assert all(m in inputs for m in in_flight), "stored by the writer process itself"
    assert read_log(inflight_path(str(db)))[1] == []


def test_the_read_api_waits_for_what_its_clients_were_answered(
    tmp_path: Path, upstream: str
) -> None:
    db = tmp_path / "read-your-writes.db"
    with serving(db, upstream) as (_, url, writer):
        os.kill(writer, signal.SIGSTOP)
        calls(url, 0, 3)
        got: list[int] = []
        reader = threading.Thread(target=lambda: got.append(trace_count(url)))
        reader.start()
        reader.join(0.5)
        assert reader.is_alive(), "the read waits while the answered calls are not stored"
        os.kill(writer, signal.SIGCONT)
        reader.join(10)
        assert got == [3]


def test_a_stream_still_waits_for_its_commit(tmp_path: Path, upstream: str) -> None:
    """The writer process has most of a stream's pieces already: it is committed before its
    last event goes out, not copied whole into the log."""
    db = tmp_path / "stream.db"
    with serving(db, upstream) as (_, url, writer):
        os.kill(writer, signal.SIGSTOP)
        got: list[str | None] = []
        streamed = threading.Thread(target=lambda: got.append(one_call(url, 0)))  # a stream
        streamed.start()
        streamed.join(0.5)
        assert streamed.is_alive(), "its end waits for the writer process"
        assert read_log(inflight_path(str(db)))[1] == []
        os.kill(writer, signal.SIGCONT)
        streamed.join(10)
        assert got and got[0] is not None and got[0] in stored_inputs(db)


def test_no_key_reaches_the_in_flight_log(tmp_path: Path, upstream: str) -> None:
    db = tmp_path / "secrets.db"
    with serving(db, upstream) as (_, url, writer):
        os.kill(writer, signal.SIGSTOP)
        calls(url, 0, 3)  # (they send TEST_KEY as a bearer token)
        signed = httpx.post(
            f"{url}/v1/chat/completions?sv=2024&sig=sig-0099",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
            headers={"authorization": f"Bearer {TEST_KEY}", "chatgpt-account-id": "acct-0098"},
        )
        assert signed.status_code == 200
        raw = Path(inflight_path(str(db))).read_bytes()
        assert len(read_log(inflight_path(str(db)))[1]) == 4
        assert b"sv=2024" in raw  # the query is there, but for its signature
        for secret in (TEST_KEY, TEST_KEY[7:], "sig-0099", "acct-0098"):
            assert secret.encode() not in raw, secret


def test_a_second_proxy_on_the_same_database_waits_for_its_commits(
    tmp_path: Path, upstream: str
) -> None:
    db = tmp_path / "two.db"
    with serving(db, upstream) as (_, first_url, _), serving(db, upstream) as (_, second_url, _):
        markers = calls(first_url, 0, 3) + calls(second_url, 3, 3)
        # the second could not take the log: its answers waited for their commit
        assert all(m in stored_inputs(db) for m in markers[3:])
        assert trace_count(second_url) == 6


def test_what_cannot_be_stored_yet_is_kept_for_later(tmp_path: Path, upstream: str) -> None:
    """A reading command that finds the database locked by another process keeps the log's
    entries (before: it said they were stored and threw them away)."""
    db = tmp_path / "kept.db"
    in_flight = left_in_flight(db, upstream, 3)
    with write_locked(db):
        out = cli("traces", "--json", "--db", str(db))
        assert out.returncode == 0 and "kept there" in out.stderr, out.stderr
    assert len(read_log(inflight_path(str(db)))[1]) == 3
    out = cli("traces", "--json", "--db", str(db))
    assert len(json.loads(out.stdout)["traces"]) == 3
    assert all(m in stored_inputs(db) for m in in_flight)


@pytest.mark.parametrize("mode", ["replay", "auto", "off"])
def test_a_start_in_any_mode_stores_what_a_killed_proxy_left(
    tmp_path: Path, upstream: str, mode: str
) -> None:
    """Replay answers what the killed proxy had answered (before: a 404 for it), auto does not
    call the upstream again for it, and every mode shows it."""
    db = tmp_path / f"{mode}.db"
    with serving(db, upstream) as (proc, url, writer):
        os.kill(writer, signal.SIGSTOP)
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "kept"}]}
        answered = httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH)
        assert answered.status_code == 200
        kill_both(proc, writer)
    proc, url = start_serve(db, upstream, "--mode", mode)
    try:
        assert trace_count(url) == 1
        if mode != "off":
            again = httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH)
            assert again.json()["id"] == answered.json()["id"], "replayed, not asked again"
    finally:
        proc.terminate()
        proc.wait(20)


def test_a_recording_stored_before_the_kill_is_not_stored_again(
    tmp_path: Path, upstream: str
) -> None:
    """Both processes killed after the commit of an agent run's second call and before the
    proxy read its acknowledgement (simulated: the log's tail set back to that call). Stored
    again, agent linking (which has forgotten the run) moved it to a trace of its own; a
    version already in the database is left alone."""
    db = tmp_path / "agent.db"
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    messages: list[dict[str, object]] = [{"role": "user", "content": "weather in Paris?"}]
    with serving(db, upstream) as (proc, url, writer):
        first = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": messages, "tools": [tool]},
            headers=AUTH,
        ).json()
        asked = first["choices"][0]["message"]
        messages += [asked] + [
            {"role": "tool", "tool_call_id": c["id"], "content": "22C"} for c in asked["tool_calls"]
        ]
        second = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": messages, "tools": [tool]},
            headers=AUTH,
        )
        assert second.status_code == 200
        deadline = time.monotonic() + 10
        while trace_count(url) != 1 or read_log(inflight_path(str(db)))[1] != []:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        before = cli("traces", "--json", "--db", str(db)).stdout
        kill_both(proc, writer)
    path = inflight_path(str(db))
    with open(path, "r+b") as f:  # the tail back at the last entry, as before its ack
        f.seek(4096)  # (an emptied ring starts again at its start)
        seq = struct.unpack("<IIQQ", f.read(24))[3]
        f.seek(24)
        f.write(struct.pack("<QQ", 4096, seq))
    assert len(read_log(path)[1]) == 1  # the call that answered the tool call
    after = cli("traces", "--json", "--db", str(db)).stdout
    assert json.loads(after)["traces"] == json.loads(before)["traces"]


def test_a_log_kept_for_later_is_not_taken_by_the_next_proxys_writer(
    tmp_path: Path, upstream: str
) -> None:
    """A start that could not store what a killed proxy left keeps the log and waits for its
    commits. Its writer process, when that proxy was killed in turn, took the log for its own:
    it skipped the entries numbered below its own last write and disowned the rest, lost."""
    db = tmp_path / "kept-twice.db"
    first = left_in_flight(db, upstream, 3)
    with write_locked(db):
        proc, url = start_serve(db, upstream)  # cannot store them: keeps the log
    writer = writer_pid(proc)
    second = calls(url, 3, 5)  # waited for, numbered 0..4 by this proxy
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    wait_exited(writer)
    assert len(read_log(inflight_path(str(db)))[1]) == 3
    out = cli("traces", "--json", "--limit", "100", "--db", str(db))
    assert len(json.loads(out.stdout)["traces"]) == 8
    assert all(m in stored_inputs(db) for m in first + second)
