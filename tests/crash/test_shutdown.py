"""Stopping llmtap (SIGTERM, Ctrl-C) with a response in flight: bounded, and recorded."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from llmtap.proxy.app import SHUTDOWN_GRACE_S
from tests.conftest import TEST_KEY
from tests.crash.test_kill9 import serve_command, start_serve

pytestmark = pytest.mark.slow


def test_a_stop_with_a_stalled_stream_ends_in_its_grace_and_records_the_cut(
    tmp_path: Path, upstream: str
) -> None:
    """An upstream stalled mid-stream kept a stopping llmtap up for its read timeout (600 s),
    and a stream cut by the stop left no record. Now the stop waits SHUTDOWN_GRACE_S at most,
    and the cut stream is an ERROR span with what had come."""
    db = tmp_path / "stop.db"
    proc, url = start_serve(db, upstream)
    got: list[bytes] = []

    def stream() -> None:
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "stall"}]}
        headers = {
            "authorization": f"Bearer {TEST_KEY}",
            "x-simulator-fault": "stall-mid-stream-ms=120000",
        }
        try:
            with httpx.stream(
                "POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60
            ) as r:
                for piece in r.iter_raw():
                    got.append(piece)
        except httpx.HTTPError:
            pass  # cut by the stop

    client = threading.Thread(target=stream)
    client.start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    assert got, "the stream never started"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(SHUTDOWN_GRACE_S + 20)
    took = time.monotonic() - started
    client.join(10)
    assert took < SHUTDOWN_GRACE_S + 8, took
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT status_code, status_message, outputs FROM spans").fetchall()
    finally:
        conn.close()
    assert len(rows) == 1
    code, message, outputs = rows[0]
    assert code == "ERROR" and "llmtap stopped mid-response" in message
    assert outputs and "Hello" in outputs  # what had come before the stall
    # the cut is said in one line: uvicorn's "Exception in ASGI application" (CancelledError)
    # tracebacks were noise on a documented path
    (log,) = db.parent.glob("stop.*.log")
    text = log.read_text()
    assert "Traceback" not in text and "a response still running was cut" in text, text


def test_ctrl_c_is_a_clean_stop(tmp_path: Path, upstream: str) -> None:
    """uvicorn raises the Ctrl-C again once it has stopped: click said "Aborted!" and exit 1."""
    db = tmp_path / "idle.db"
    proc, _ = start_serve(db, upstream)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0
    (log,) = db.parent.glob("idle.*.log")
    assert "Aborted" not in log.read_text()


def test_no_listening_banner_for_a_server_that_cannot_open_its_database(tmp_path: Path) -> None:
    """The banner ("listening on ... UI ...") was printed before the database was opened."""
    bad = tmp_path / "notes.db"
    bad.write_text("not a database\n")
    run = subprocess.run(
        serve_command(bad, "--upstream", "http://127.0.0.1:9/v1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0 and "cannot open its database" in run.stderr
    assert "listening on" not in run.stdout, run.stdout
