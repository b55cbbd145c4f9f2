"""SPEC section 6: a response a client received in full is already recorded, even across
kill -9 in the middle of load."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from llmtap.recorder.inflight import settle
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.slow
ROUNDS = int(os.environ.get("LLMTAP_KILL_ROUNDS", "20"))


def serve_command(db: Path, *extra: str) -> list[str]:
    """`llmtap serve` on a free port, as a user would start it."""
    return [
        sys.executable,
        "-m",
        "llmtap.proxy.cli",
        "serve",
        "--port",
        "0",
        "--db",
        str(db),
        *extra,
    ]


def start_serve(db: Path, upstream: str, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    """`llmtap serve --port 0` as a real process; its address is read from what it prints."""
    log = db.with_suffix(f".{time.monotonic_ns()}.log")
    with open(log, "wb") as out:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen(
            serve_command(db, "--upstream", upstream, "--log-level", "warning", *extra),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines()[::-1]:
            if "listening on http://" in line:
                url = line.split("listening on ", 1)[1].strip()
                # it listens before its startup ends: wait until it answers
                while time.monotonic() < deadline and proc.poll() is None:
                    try:
                        httpx.get(f"{url}/api/health", timeout=1).raise_for_status()
                        return proc, url
                    except httpx.HTTPError:
                        time.sleep(0.02)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"llmtap serve did not start:\n{log.read_text()}")


def one_call(base: str, i: int) -> str | None:
    """One exchange (a chat stream, a non-streamed chat or a Responses stream, in turn); the
    marker to find in the database if the response arrived in full."""
    marker = f"marker-{i}-{os.urandom(4).hex()}"
    kind = ("chat stream", "chat", "responses stream")[i % 3]
    if kind == "responses stream":
        path, body = "responses", {"model": "gpt-4o-mini", "input": marker, "stream": True}
    else:
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": marker}],
            "stream": kind == "chat stream",
        }
        path = "chat/completions"
    headers = {"authorization": f"Bearer {TEST_KEY}"}
    try:
        with httpx.stream("POST", f"{base}/v1/{path}", json=body, headers=headers, timeout=10) as r:
            data = b""
            for piece in r.iter_raw():
                data += piece
                if stream_complete(data):
                    return marker  # as the SDK has it: a stream is whole at its last event
            complete = r.status_code == 200 and not body["stream"]
            return marker if complete and data.endswith(b"}") else None
    except httpx.HTTPError:
        return None  # cut off by the kill: nothing was promised


def stream_complete(data: bytes) -> bool:
    """The stream's last event has arrived whole: `[DONE]`, or a Responses stream's
    `response.completed` (which no `[DONE]` follows), each with the blank line that ends it."""
    for last in (b"data: [DONE]", b"event: response.completed"):
        at = data.find(last)
        if at >= 0 and data.find(b"\n\n", at) >= 0:
            return True
    return False


def test_kill_minus_9_under_load_loses_nothing_a_client_saw_complete(
    tmp_path: Path, upstream: str
) -> None:
    db = tmp_path / "crash.db"
    seen: list[str] = []
    lock = threading.Lock()
    counter = iter(range(1_000_000))
    for round_ in range(ROUNDS):
        proc, url = start_serve(db, upstream)
        stop = threading.Event()

        def load(url: str = url, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                with lock:
                    i = next(counter)
                marker = one_call(url, i)
                if marker is None:
                    return
                with lock:
                    seen.append(marker)

        workers = [threading.Thread(target=load) for _ in range(6)]
        for w in workers:
            w.start()
        time.sleep(random.uniform(0.2, 0.6))
        proc.send_signal(signal.SIGKILL)  # in the middle of the load
        proc.wait(10)
        stop.set()
        for w in workers:
            w.join(15)
        # as every reading command does: what the kill left in the in-flight log gets in
        # (the writer process whose proxy died stores it itself, a few milliseconds on)
        settle(str(db))
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            inputs = "\n".join(r[0] for r in conn.execute("SELECT inputs FROM spans"))
        finally:
            conn.close()
        missing = [m for m in seen if m not in inputs]
        assert not missing, f"round {round_}: {len(missing)} of {len(seen)} complete responses lost"
    assert len(seen) > ROUNDS * 3  # the load really ran (about 10 a round on an idle machine)


def writer_pid(proc: subprocess.Popen[bytes]) -> int:
    """The pid of llmtap's writer process (the serve process's only child)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def new_writer_pid(proc: subprocess.Popen[bytes], killed: list[int]) -> int:
    """A writer process not killed yet, as soon as there is one."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(AssertionError, FileNotFoundError, ValueError):
            pid = writer_pid(proc)
            if pid not in killed:
                return pid
        time.sleep(0.001)
    raise AssertionError("no new writer process started")


@pytest.mark.parametrize("at_once", [False, True], ids=["spaced", "while-it-starts"])
def test_the_writer_process_killed_under_load_loses_nothing(
    tmp_path: Path, upstream: str, at_once: bool
) -> None:
    """Each kill spaced, or each new writer killed the moment it appears (before: the waiting
    recordings were given up after two failed starts, and responses clients had received in
    full were never recorded)."""
    db = tmp_path / "writer-kill.db"
    proc, url = start_serve(db, upstream)
    seen: list[str] = []
    failed: list[int] = []
    stop = threading.Event()
    counter = iter(range(1_000_000))
    lock = threading.Lock()

    def load() -> None:
        while not stop.is_set():
            with lock:
                i = next(counter)
            marker = one_call(url, i)
            with lock:
                (seen.append(marker) if marker is not None else failed.append(i))

    workers = [threading.Thread(target=load) for _ in range(6)]
    for w in workers:
        w.start()
    try:
        killed: list[int] = []
        for _ in range(3):
            if not at_once:
                time.sleep(0.4)
            killed.append(new_writer_pid(proc, killed))
            os.kill(killed[-1], signal.SIGKILL)
            if at_once:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # a new one takes over and writes again
                with contextlib.suppress(AssertionError, FileNotFoundError):
                    store = httpx.get(f"{url}/api/health").json()["store"]
                    if writer_pid(proc) not in killed and store["ok"]:
                        break
                time.sleep(0.02)
        if at_once:  # the next one starts and writes again
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/api/health").json()["store"]["pending"] == 0:
                        break
                time.sleep(0.05)
        # calls go on after the last kill until enough were made to judge (a loaded machine
        # made 18 in a fixed 0.4 s)
        deadline = time.monotonic() + 15
        while len(seen) <= 25 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.4)
    finally:
        stop.set()
        for w in workers:
            w.join(15)
    health = httpx.get(f"{url}/api/health").json()["store"]
    proc.send_signal(signal.SIGTERM)  # a clean stop (uvicorn then re-raises the signal)
    assert proc.wait(30) in (0, -signal.SIGTERM)
    assert not failed, f"{len(failed)} requests failed while the writer was killed"
    assert "writer process stopped" in (health["last_error"] or "") or health["failed"] >= 3
    conn = sqlite3.connect(db)
    try:
        inputs = "\n".join(r[0] for r in conn.execute("SELECT inputs FROM spans"))
        rows = conn.execute("SELECT count(*), count(DISTINCT exchange_id) FROM exchanges")
        total, distinct = rows.fetchone()
    finally:
        conn.close()
    missing = [m for m in seen if m not in inputs]
    assert not missing, f"{len(missing)} of {len(seen)} responses lost with the writer"
    assert total == distinct >= len(seen) > 20


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/chat/completions"])
def test_a_stream_ended_by_its_error_event_survives_kill_minus_9(
    tmp_path: Path, upstream: str, path: str
) -> None:
    """The Node SDK throws at a Responses stream's `event: error` and aborts: the stream is
    whole for it there, while the upstream's body may go on a moment (here 2 s). Before, the
    Responses error event was relayed uncommitted, and a kill then lost the stream."""
    db = tmp_path / "error-event.db"
    proc, url = start_serve(db, upstream)
    marker = f"error-event-{os.urandom(4).hex()}"
    body = (
        {"model": "gpt-4o-mini", "input": marker, "stream": True}
        if path == "/v1/responses"
        else {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": marker}],
            "stream": True,
        }
    )
    headers = {
        "authorization": f"Bearer {TEST_KEY}",
        "x-simulator-fault": "error-event,end-delay-ms=2000",
    }
    try:
        with httpx.stream("POST", f"{url}{path}", json=body, headers=headers, timeout=10) as r:
            data = b""
            for piece in r.iter_raw():
                data += piece
                at = max(data.find(b"event: error"), data.find(b'data: {"error"'))
                if at >= 0 and data.find(b"\n\n", at) >= 0:
                    break  # where the SDK stops: the stream is whole for it
            proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
    settle(str(db))  # (as `llmtap traces` does)
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT status_code FROM spans WHERE inputs LIKE ?", [f"%{marker}%"]
        ).fetchall()
    finally:
        conn.close()
    assert rows == [("ERROR",)]
