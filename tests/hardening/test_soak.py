"""A bounded soak: many requests, a tenth of them faulted, streams and not, 64 at a time,
against `llmtap serve` as a real process. Then: one trace per request, a sound database,
memory back near where it was, no file descriptor left open."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.crash.test_kill9 import start_serve

pytestmark = pytest.mark.slow
REQUESTS = int(os.environ.get("LLMTAP_SOAK_REQUESTS", "6000"))
CONCURRENCY = 64
FAULTS = [
    "status-500",
    "status-429",
    "no-done",
    "error-event",
    "malformed-chunk",
    "reset-mid-stream",
    "reset-before-headers",
]


def family(pid: int) -> list[int]:
    """The serve process and its children (the writer process)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *map(int, children)]


def rss_kb(pid: int) -> int:
    total = 0
    for p in family(pid):
        lines = Path(f"/proc/{p}/status").read_text().splitlines()
        total += next(int(line.split()[1]) for line in lines if line.startswith("VmRSS:"))
    return total


def open_fds(pid: int) -> int:
    return sum(len(os.listdir(f"/proc/{p}/fd")) for p in family(pid))


async def drive(url: str, count: int, seed: int) -> int:
    """Send `count` requests; returns how many the client got an HTTP answer to."""
    rng = random.Random(seed)
    plan = [(i % 2 == 0, rng.choice(FAULTS) if rng.random() < 0.1 else None) for i in range(count)]
    answered = 0
    queue: asyncio.Queue[tuple[bool, str | None]] = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal answered
        while not queue.empty():
            stream, fault = queue.get_nowait()
            body = {
                "model": "gpt-4o-mini",
                "stream": stream,
                "messages": [{"role": "user", "content": "soak"}],
            }
            headers = {"x-simulator-fault": fault} if fault else {}
            try:
                async with session.post(
                    f"{url}/v1/chat/completions", json=body, headers=headers
                ) as response:
                    await response.read()
                    answered += 1
            except aiohttp.ClientError:
                pass  # a reset fault: the client sees the upstream's break

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
    return answered


def test_soak_with_faults(tmp_path: Path, upstream: str) -> None:
    db = tmp_path / "soak.db"
    proc, url = start_serve(db, upstream)
    try:
        # warm up at full load: pools, caches and the database's first pages reach their size
        answered = asyncio.run(drive(url, REQUESTS // 2, seed=1))
        rss_before, fds_before = rss_kb(proc.pid), open_fds(proc.pid)
        answered += asyncio.run(drive(url, REQUESTS - REQUESTS // 2, seed=2))
        rss_after, fds_after = rss_kb(proc.pid), open_fds(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    assert answered >= REQUESTS * 0.95
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        traces = conn.execute("SELECT count(*) FROM traces").fetchone()[0]
        errors = conn.execute("SELECT count(*) FROM traces WHERE status = 'ERROR'").fetchone()[0]
    finally:
        conn.close()
    assert traces == REQUESTS  # every request, faulted or not, is one trace
    assert REQUESTS * 0.05 < errors < REQUESTS * 0.2
    # a leak grows with the requests: the second half must not add to what the first reached
    assert rss_after - rss_before < 20_000, (rss_before, rss_after)  # kB
    # pooled upstream connections come and go with the faults (at most one per client at a
    # time: 45-55 seen); a leak would be one per faulted request, hundreds here
    assert fds_after < fds_before + CONCURRENCY, (fds_before, fds_after)


def writer_rss_kb(pid: int) -> int:
    (writer,) = family(pid)[1:]
    lines = Path(f"/proc/{writer}/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in lines if line.startswith("VmRSS:"))


def test_large_uploads_leave_the_writer_process_memory_where_it_was(
    tmp_path: Path, upstream: str
) -> None:
    """The writer held the last large body alive while it idled (a loop variable, and SQLite's
    copy bound to a cached INSERT): 16 uploads of 31 MB left it at 158 MB, from 30."""
    proc, url = start_serve(tmp_path / "big.db", upstream)
    try:
        with httpx.Client(timeout=60) as client:

            def chat(content: str) -> None:
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
                client.post(f"{url}/v1/chat/completions", json=body).raise_for_status()

            chat("warm up")
            time.sleep(0.5)
            before = writer_rss_kb(proc.pid)
            for i in range(6):
                chat("x" * ((24 << 20) - i))  # different bodies: no reuse of one object
            deadline = time.monotonic() + 10  # the writer tidies up once it idles
            while (grown := writer_rss_kb(proc.pid) - before) >= 16_000:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(30)
    assert grown < 16_000, grown  # kB; one body held would be 24,576
