"""The store under stress: a reader holding a transaction, the file deleted, the disk full, an
older schema. The proxy keeps forwarding, says what is wrong, and keeps what it can."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlite_utils import Database

from llmtap.recorder.schema import migrations
from tests.conftest import Proxy

BODY = {"model": "m", "messages": [{"role": "user", "content": "store"}]}


def call(proxy: Proxy, n: int = 1) -> None:
    with httpx.Client() as client:
        for _ in range(n):
            assert client.post(f"{proxy.base_url}/chat/completions", json=BODY).status_code == 200


def timed_calls(proxy: Proxy, n: int) -> list[float]:
    """Seconds each of `n` calls took to be answered."""
    took = []
    for _ in range(n):
        started = time.monotonic()
        answer = httpx.post(f"{proxy.base_url}/chat/completions", json=BODY, timeout=30)
        took.append(time.monotonic() - started)
        assert answer.status_code == 200
    return took


def health(proxy: Proxy) -> dict[str, Any]:
    return httpx.get(f"{proxy.url}/api/health").json()


def test_a_reader_holding_a_transaction_blocks_nothing(proxy: Proxy) -> None:
    call(proxy)
    proxy.flush()  # (the answer came from the in-flight log: stored a moment later)
    reader = sqlite3.connect(proxy.db)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM traces").fetchone()[0] == 1
    call(proxy, 30)  # as datasette or sqlite3 would hold one open
    proxy.flush()
    assert reader.execute("SELECT count(*) FROM traces").fetchone()[0] == 1  # its snapshot
    reader.rollback()
    reader.close()
    assert proxy.query("SELECT count(*) FROM traces")[0][0] == 31
    assert health(proxy)["store"]["ok"]


def test_the_file_deleted_under_a_running_proxy(proxy: Proxy) -> None:
    call(proxy, 2)
    proxy.flush()
    for path in proxy.db.parent.glob(proxy.db.name + "*"):
        path.unlink()
    call(proxy)  # forwarding never stops
    for _ in range(100):
        if "deleted or replaced" in (health(proxy)["store"]["last_error"] or ""):
            break
        time.sleep(0.02)
    assert "deleted or replaced" in health(proxy)["store"]["last_error"]
    call(proxy, 3)
    proxy.flush()
    assert proxy.db.exists()
    # recording goes on, the call right after the deletion included: the store looks at the
    # path before each transaction (before: that call went into the deleted file, unseen)
    assert proxy.query("SELECT count(*) FROM traces")[0][0] == 4
    assert health(proxy)["store"]["ok"]


def test_a_write_lock_held_by_another_process_holds_no_client_and_loses_nothing(
    start_proxy: Any,
) -> None:
    """A sqlite3 shell left in `BEGIN IMMEDIATE` for longer than the busy timeout (5 s): the
    batch waits for it, whole, and health says why meanwhile (before: its records were tried
    one at a time and kept as raw exchanges, their traces lost). Its clients do not wait with
    it: where answers wait for their commit (auto mode, the pytest plugin, a recording the
    in-flight log cannot take), the first is answered once the writer finds the lock (one busy
    timeout), the next at once (before: each waited for the lock, up to a minute), and every
    record lands when the lock is let go."""
    proxy = start_proxy(write_ahead=False)
    call(proxy)
    proxy.flush()
    holder = sqlite3.connect(proxy.db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    said: list[str] = []
    try:
        took = timed_calls(proxy, 3)
        said.append(health(proxy)["store"]["last_error"] or "")
    finally:
        holder.rollback()
        holder.close()
    assert 4 < took[0] < 8, took  # the busy timeout, then the answer goes out
    assert max(took[1:]) < 2, took  # the lock is known: no wait
    assert "locked by another process" in said[0]
    proxy.flush()
    assert proxy.query("SELECT count(*) FROM traces")[0][0] == 4
    assert proxy.query("SELECT count(*) FROM spans")[0][0] == 4
    # written again: the next commit is waited for once more
    call(proxy)
    assert proxy.query("SELECT count(*) FROM traces")[0][0] == 5


def test_a_write_lock_held_by_another_process_holds_no_answer_from_the_in_flight_log(
    proxy: Proxy,
) -> None:
    """Record mode: answers are in the in-flight log, so none waits for the lock; their
    records land when it is let go, and the read API waits for them."""
    call(proxy)
    proxy.flush()
    holder = sqlite3.connect(proxy.db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    try:
        took = timed_calls(proxy, 3)
    finally:
        holder.rollback()
        holder.close()
    assert max(took) < 2, took
    traces = httpx.get(f"{proxy.url}/api/traces", timeout=30).json()["traces"]
    assert len(traces) == 4


def test_disk_full(start_proxy: Any, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(small)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        proxy = start_proxy(db=str(small / "full.db"))
        big = {"model": "m", "messages": [{"role": "user", "content": "y" * 20_000}]}
        with httpx.Client() as client:
            statuses = [
                client.post(f"{proxy.base_url}/chat/completions", json=big).status_code
                for _ in range(60)
            ]
        assert set(statuses) == {200}  # every client served though the disk filled up
        proxy.flush()
        store = health(proxy)["store"]
        assert store["failed"] > 0 and "full" in store["last_error"].lower()
        conn = sqlite3.connect(small / "full.db")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        kept = conn.execute("SELECT count(*) FROM traces").fetchone()[0]
        conn.close()
        assert 0 < kept < 60
        proxy.server.stop()
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_an_older_schema_moves_forward_on_start(start_proxy: Any, tmp_path: Path) -> None:
    db_path = tmp_path / "old.db"
    names = [m.name for m in migrations._migrations]
    db = Database(db_path)
    migrations.apply(db, stop_before=names[1]) if len(names) > 1 else migrations.apply(db)
    db.close()
    proxy = start_proxy(db=str(db_path))
    call(proxy)
    applied = [r[0] for r in proxy.query("SELECT name FROM _sqlite_migrations ORDER BY id")]
    assert applied == names
    assert proxy.query("SELECT count(*) FROM traces")[0][0] == 1


def test_the_writer_survives_what_it_cannot_store(proxy: Proxy) -> None:
    """A poison record (here: a JSON body nested deeper than SQLite's JSON functions allow
    is fine, but one that orjson cannot serialise back is not) fails alone."""
    deep: Any = "x"
    for _ in range(300):
        deep = [deep]
    httpx.post(
        f"{proxy.base_url}/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "d"}], "x": deep},
    )
    call(proxy, 2)
    proxy.flush()
    assert proxy.query("SELECT count(*) FROM exchanges")[0][0] == 3
    assert os.path.getsize(proxy.db) >= 0


def _open_at_the_barrier(path: str, barrier: Any) -> str | None:
    from llmtap.recorder.sqlite import connect_for_writing

    barrier.wait()
    try:
        connect_for_writing(path).close()  # what each writer process does as it starts
        return None
    except Exception as exc:  # noqa: BLE001 - the failure is the finding
        return repr(exc)


@pytest.mark.parametrize("older", [False, True], ids=["new-file", "older-schema"])
def test_two_llmtaps_opening_one_file_at_once_both_start(tmp_path: Path, older: bool) -> None:
    """Two servers started together on one database: one exited at start, nearly every round
    ("database is locked" from the switch to WAL, which SQLite answers without waiting; "table
    _sqlite_migrations already exists"; "UNIQUE constraint failed" as both migrated)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    errors: list[str] = []
    with context.Manager() as manager, context.Pool(2) as pool:
        for round_ in range(6):
            db = str(tmp_path / f"shared-{round_}.db")
            if older:  # a file an earlier llmtap made
                conn = sqlite3.connect(db, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                migrations.apply(Database(conn), stop_before="0003_lighter_indexes")
                conn.close()
            barrier = manager.Barrier(2)
            errors += [e for e in pool.starmap(_open_at_the_barrier, [(db, barrier)] * 2) if e]
    assert not errors, errors
