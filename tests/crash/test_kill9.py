"""SPEC section 6: a response a client received in full is already recorded, even across kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_KEY

pytestmark = pytest.mark.slow


def start_serve(db: Path, upstream: str) -> tuple[subprocess.Popen[bytes], str]:
    """`llmtap serve --port 0` as a real process; its address is read from what it prints."""
    log = db.with_suffix(f".{time.monotonic_ns()}.log")
    with open(log, "wb") as out:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llmtap.proxy.cli",
                "serve",
                "--port",
                "0",
                "--db",
                str(db),
                "--upstream",
                upstream,
                "--log-level",
                "warning",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines()[::-1]:
            if "listening on http://" in line:
                return proc, line.split("listening on ", 1)[1].strip()
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"llmtap serve did not start:\n{log.read_text()}")


def one_call(base: str, i: int) -> str:
    """One complete exchange; returns the marker that must be found in the database."""
    marker = f"marker-{i}-{os.urandom(4).hex()}"
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": marker}],
        "stream": i % 2 == 0,
    }
    headers = {"authorization": f"Bearer {TEST_KEY}"}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers) as r:
        assert r.status_code == 200
        data = b""
        for piece in r.iter_raw():
            data += piece
            if b"data: [DONE]" in data:
                break  # as the SDK does: a stream is complete at [DONE]
    return marker


def test_kill_minus_9_right_after_responses_loses_nothing(tmp_path: Path, upstream: str) -> None:
    db = tmp_path / "crash.db"
    seen: list[str] = []
    for round_ in range(5):
        proc, url = start_serve(db, upstream)
        try:
            with ThreadPoolExecutor(8) as pool:
                calls = range(round_ * 100, round_ * 100 + 16)
                seen.extend(pool.map(one_call, [url] * len(calls), calls))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            inputs = "\n".join(r[0] for r in conn.execute("SELECT inputs FROM spans"))
        finally:
            conn.close()
        missing = [m for m in seen if m not in inputs]
        assert not missing, f"round {round_}: {len(missing)} completed responses not recorded"
