"""The writer: group commit, one poison record fails only itself, a broken store never fails a
request; the writer process survives kill -9, drains on close and never queues without bound."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import orjson
import pytest
from chunk_factory import chat_stream_recording, make_chunks, sse_bytes

from llmtap.recorder import writer as writer_module
from llmtap.recorder.batch_writer import BatchWriter
from llmtap.recorder.body_codec import unpack_body
from llmtap.recorder.recording import Recording
from llmtap.recorder.records import Batch, RequestContext
from llmtap.recorder.schema import RESPONSE_BODY
from llmtap.recorder.tracing import build_batch, raw_batch
from llmtap.recorder.writer import PROGRESS_EVERY, Writer, WriterConfig

T = TypeVar("T")


class ListSink:
    """A Sink that keeps batches in memory; `poison` paths make the write fail."""

    def __init__(self, poison: set[str] | None = None) -> None:
        self.writes: list[list[Batch]] = []
        self.poison = poison or set()

    def write(self, batches: Sequence[Batch]) -> None:
        if any(b.exchange.path in self.poison for b in batches):
            raise RuntimeError("disk I/O error")
        self.writes.append(list(batches))

    def idle(self) -> None:
        pass

    def close(self) -> None:
        pass


def recording(path: str = "/models") -> Recording:
    rec = Recording("GET", path, "", [], b"", RequestContext())
    rec.respond(200, [("content-type", "application/json")])
    rec.feed(b'{"data": []}')
    return rec.finish()


def exchanges(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [r[0] for r in conn.execute("SELECT exchange_id FROM exchanges")]
    finally:
        conn.close()


def with_writer(
    db: Path, body: Callable[[Writer], Awaitable[T]], spool_after: int | None = None, **options: int
) -> T:
    config = WriterConfig(db=str(db))
    if spool_after is not None:
        config = replace(config, spool_after=spool_after)

    async def go() -> T:
        writer = Writer(config, **options)
        await writer.start()
        try:
            return await body(writer)
        finally:
            await writer.close()

    return asyncio.run(go())


# --- BatchWriter: what one transaction does, in process ---------------------------------------


def test_a_poison_record_fails_only_itself() -> None:
    sink = ListSink(poison={"/poison"})
    writer = BatchWriter(sink, build_batch)
    written = writer.write([recording(), recording("/poison"), recording()])
    assert [w is not None for w in written] == [True, False, True]
    assert sum(len(w) for w in sink.writes) == 2
    assert writer.health.failed == 1 and "disk I/O error" in (writer.health.last_error or "")


def test_a_record_that_cannot_be_built_is_kept_raw() -> None:
    def broken(rec: Recording) -> Batch:
        raise ValueError("nope")

    writer = BatchWriter(ListSink(), broken, fallback=raw_batch)
    [stored] = writer.write([recording()])
    assert stored is not None and not stored.spans and writer.health.failed == 0
    bare = BatchWriter(ListSink(), broken)
    assert bare.write([recording()]) == [None] and bare.health.failed == 1


# --- Writer: the proxy's end of the writer process --------------------------------------------


def test_concurrent_commits_are_all_durable(tmp_path: Path) -> None:
    recs = [recording() for _ in range(300)]

    async def body(writer: Writer) -> list[bool]:
        return list(await asyncio.gather(*(writer.commit(r) for r in recs)))

    assert all(with_writer(tmp_path / "a.db", body))
    assert sorted(exchanges(tmp_path / "a.db")) == sorted(r.exchange_id for r in recs)


def test_close_drains_what_was_submitted(tmp_path: Path) -> None:
    recs = [recording() for _ in range(50)]

    async def body(writer: Writer) -> None:
        for r in recs:
            writer.submit_nowait(r)

    with_writer(tmp_path / "b.db", body)
    assert len(exchanges(tmp_path / "b.db")) == 50


def test_flush_from_another_thread_waits_for_the_store(tmp_path: Path) -> None:
    recs = [recording() for _ in range(40)]

    async def body(writer: Writer) -> int:
        for r in recs:
            writer.submit_nowait(r)
        await asyncio.sleep(0)  # the frame goes out on the next loop iteration
        await asyncio.to_thread(writer.flush)
        return len(exchanges(tmp_path / "c.db"))

    assert with_writer(tmp_path / "c.db", body) == 40


def test_a_killed_writer_process_is_restarted_and_loses_nothing(tmp_path: Path) -> None:
    async def body(writer: Writer) -> tuple[list[bool], int, int]:
        first = writer._process
        assert first is not None
        early = [await writer.commit(recording()) for _ in range(5)]
        commits = [asyncio.ensure_future(writer.commit(recording())) for _ in range(200)]
        await asyncio.sleep(0)
        os.kill(first.pid, signal.SIGKILL)
        results = early + list(await asyncio.gather(*commits))
        later = await writer.commit(recording())  # and the new process goes on
        assert writer._process is not None and writer._process.pid != first.pid
        return [*results, later], writer.health.failed, writer.health.pending

    results, failed, pending = with_writer(tmp_path / "d.db", body)
    assert all(results) and failed >= 1 and pending == 0
    ids = exchanges(tmp_path / "d.db")
    assert len(ids) == len(set(ids)) == 206  # resent recordings are upserts: one row each


def test_overload_drops_visibly_and_commit_waits_for_room(tmp_path: Path) -> None:
    async def body(writer: Writer) -> tuple[int, list[bool], int]:
        for _ in range(30):
            writer.submit_nowait(recording())  # nothing acknowledged yet: 4 fit
        dropped = writer.health.dropped
        seen: list[int] = []
        running = True

        async def sample() -> None:  # what is in flight, at every turn of the loop
            while running:
                seen.append(writer.health.pending)
                await asyncio.sleep(0)

        sampler = asyncio.ensure_future(sample())
        commits = await asyncio.gather(*(writer.commit(recording()) for _ in range(40)))
        running = False
        await sampler
        return dropped, list(commits), max(seen)

    dropped, commits, most_pending = with_writer(tmp_path / "e.db", body, max_pending=4)
    assert dropped == 26 and all(commits) and most_pending <= 4
    assert len(exchanges(tmp_path / "e.db")) == 44


def chat(body: dict, answer: dict) -> Recording:
    rec = Recording("POST", "/chat/completions", "", [], orjson.dumps(body), RequestContext())
    rec.respond(200, [("content-type", "application/json")])
    rec.feed(orjson.dumps(answer))
    return rec.finish()


def test_the_writer_reports_the_trace_an_exchange_joined(tmp_path: Path) -> None:
    """Agent linking happens in the writer process: the proxy's copy must learn the trace, so
    that a fuller copy written later lands in the same one."""
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    first = chat(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        {
            "id": "c1",
            "object": "chat.completion",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "tool_calls": [call]},
                    "finish_reason": "tool_calls",
                }
            ],
        },
    )
    second = chat(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            ],
        },
        {
            "id": "c2",
            "object": "chat.completion",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "42"},
                    "finish_reason": "stop",
                }
            ],
        },
    )
    own = second.trace_id

    async def body(writer: Writer) -> bool:
        return await writer.commit(first) and await writer.commit(second)

    assert with_writer(tmp_path / "f.db", body)
    assert own != first.trace_id and second.trace_id == first.trace_id


def test_a_store_that_cannot_open_fails_start_with_the_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    async def go() -> str:
        writer = Writer(WriterConfig(db=str(blocker / "x.db")))
        try:
            await writer.start()
        except RuntimeError as exc:
            return str(exc)
        finally:
            await writer.close()
        return ""

    assert "unable to open" in asyncio.run(go()).lower()


def test_flush_returns_at_once_with_nothing_pending(tmp_path: Path) -> None:
    async def body(writer: Writer) -> bool:
        done = threading.Event()
        await asyncio.to_thread(lambda: (writer.flush(timeout=5), done.set()))
        return done.is_set()

    assert with_writer(tmp_path / "g.db", body)


# --- streams sent along while they run ------------------------------------------------------


def running_stream(text: str) -> tuple[Recording, list[bytes]]:
    """A streamed chat recording that has only responded yet, and its wire in pieces."""
    wire = sse_bytes(make_chunks(text, usage=True))
    rec = chat_stream_recording()
    step = max(1, len(wire) // 9)
    return rec, [wire[i : i + step] for i in range(0, len(wire), step)]


def stored(db: Path, rec: Recording) -> tuple[bytes, object]:
    conn = sqlite3.connect(db)
    try:
        (body,) = conn.execute(
            f"SELECT {RESPONSE_BODY} FROM exchanges WHERE exchange_id = ?",
            [rec.exchange_id],
        ).fetchone()
        (outputs,) = conn.execute(
            "SELECT outputs FROM spans WHERE span_id = ?", [rec.span_id]
        ).fetchone()
    finally:
        conn.close()
    return unpack_body(bytes(body)), orjson.loads(outputs)


def stored_chunks_match(db: Path, rec: Recording) -> bool:
    """The row's chunk times, made in the writer process as the pieces came (or from its
    spool file), are what they are when made at once from the whole recording."""
    conn = sqlite3.connect(db)
    try:
        (chunks,) = conn.execute(
            "SELECT chunks FROM exchanges WHERE exchange_id = ?", [rec.exchange_id]
        ).fetchone()
    finally:
        conn.close()
    whole = build_batch(rec).exchange.chunks  # made at once, in this process
    assert len(orjson.loads(whole)) == len(rec.chunks) > 1
    return chunks == whole


async def kill_writer(writer: Writer) -> None:
    """kill -9 the writer process, and wait until its successor is up."""
    first = writer._process
    assert first is not None
    os.kill(first.pid, signal.SIGKILL)
    while writer._process is first or writer._link is None or writer._link.lost.done():
        await asyncio.sleep(0.01)


LONG_ANSWER = " ".join(f"token{i}" for i in range(300))
"""An answer long enough to arrive in pieces past a small `spool_after`."""

killed_with_on_file: list[int] = []
"""For each writer process `relay` killed: the pieces the proxy had let go of (on its file)."""


async def relay(
    writer: Writer, rec: Recording, pieces: list[bytes], kill_at: int = -1, commit: bool = True
) -> bool:
    """As the proxy relays a stream: pieces a few ms apart, the commit at the end (or not)."""
    writer.track(rec)
    for i, piece in enumerate(pieces):
        rec.feed(piece)
        await asyncio.sleep(PROGRESS_EVERY * 2)
        if i == kill_at:
            assert writer._streams[rec.exchange_id].sent > 0
            killed_with_on_file.append(writer._streams[rec.exchange_id].on_file)
            await kill_writer(writer)
    assert writer._streams[rec.exchange_id].sent > 0  # pieces went ahead of the commit
    if not commit:
        return False
    try:
        return await writer.commit(rec.finish())
    finally:
        writer.untrack(rec)


def test_a_running_stream_is_sent_along_and_written_whole(tmp_path: Path) -> None:
    rec, pieces = running_stream("Hello from a stream that arrives a few pieces at a time")
    assert with_writer(tmp_path / "s.db", lambda writer: relay(writer, rec, pieces))
    body, outputs = stored(tmp_path / "s.db", rec)
    assert body == b"".join(pieces)
    assert outputs == build_batch(rec).spans[-1].outputs
    assert stored_chunks_match(tmp_path / "s.db", rec)
    assert outputs["choices"][0]["message"]["content"].startswith("Hello from")


def test_a_writer_killed_mid_stream_gets_the_stream_again_from_its_start(tmp_path: Path) -> None:
    rec, pieces = running_stream("Nothing of this is lost when the writer dies halfway")
    assert with_writer(tmp_path / "k.db", lambda writer: relay(writer, rec, pieces, kill_at=4))
    body, outputs = stored(tmp_path / "k.db", rec)
    assert body == b"".join(pieces)
    assert outputs == build_batch(rec).spans[-1].outputs
    assert stored_chunks_match(tmp_path / "k.db", rec)


def spool_files(writer: Writer) -> list[str]:
    """The files the writer process has open in its spool directory (its streams on file)."""
    assert writer._process is not None and writer.config.spool_dir is not None
    fds = Path(f"/proc/{writer._process.pid}/fd")
    links = [os.readlink(fd) for fd in fds.iterdir() if fd.is_symlink()]
    return sorted(link for link in links if link.startswith(writer.config.spool_dir))


@pytest.mark.parametrize("kill_at", [-1, 3, 6])
def test_a_long_stream_goes_to_file_in_the_writer_and_is_stored_whole(
    tmp_path: Path, kill_at: int
) -> None:
    """Past `spool_after` bytes the writer process keeps a stream's pieces on file (here after
    the first piece), with and without a writer killed halfway; the file goes with the stream."""
    rec, pieces = running_stream(LONG_ANSWER)
    seen: list[list[str]] = []

    async def body(writer: Writer) -> bool:
        killed_with_on_file.clear()
        await relay(writer, rec, pieces[:-1], kill_at=kill_at, commit=False)
        if kill_at >= 0:  # the new writer process took the dead one's file over
            assert killed_with_on_file[0] > 0
        seen.append(spool_files(writer))
        rec.feed(pieces[-1])
        try:
            return await writer.commit(rec.finish())
        finally:
            writer.untrack(rec)
            await asyncio.sleep(0.05)
            seen.append(spool_files(writer))

    assert with_writer(tmp_path / "long.db", body, spool_after=300)
    assert len(seen[0]) == 2 and seen[1] == []  # on file (and index) while it ran, no longer
    assert not (tmp_path / "long.db-spool").exists()  # the proxy removed its directory
    assert rec.dropped > 0 and rec.piece_count == len(pieces)  # the proxy let go of some
    stored_body, outputs = stored(tmp_path / "long.db", rec)
    assert stored_body == b"".join(pieces)
    reference, _ = running_stream(LONG_ANSWER)
    for piece in pieces:
        reference.feed(piece)
    assert outputs == build_batch(reference.finish()).spans[-1].outputs
    assert outputs["choices"][0]["message"]["content"].endswith("token299")


def test_a_writer_killed_when_all_of_a_stream_is_on_file_is_taken_over_at_the_record(
    tmp_path: Path,
) -> None:
    """Nothing of the stream is left in the proxy when the writer dies, and the record comes
    before any new piece: the new writer process must still take the file over first."""
    rec, pieces = running_stream(LONG_ANSWER)
    pieces[-2:] = [pieces[-2] + pieces[-1]]  # each piece past spool_after: each goes to file

    async def body(writer: Writer) -> bool:
        await relay(writer, rec, pieces, commit=False)
        stream = writer._streams[rec.exchange_id]
        for _ in range(500):
            if stream.on_file == len(pieces):  # every piece on file, none held here
                break
            await asyncio.sleep(0.01)
        assert rec.chunks == [] and stream.on_file == len(pieces)
        await kill_writer(writer)
        try:
            return await writer.commit(rec.finish())
        finally:
            writer.untrack(rec)

    assert with_writer(tmp_path / "all.db", body, spool_after=300)
    stored_body, outputs = stored(tmp_path / "all.db", rec)
    assert stored_body == b"".join(pieces)
    assert outputs["choices"][0]["message"]["content"].endswith("token299")


def test_bytes_after_done_of_a_stream_on_file_replace_the_first_copy(tmp_path: Path) -> None:
    """The proxy let go of the first pieces: the fuller copy is made from the writer's file,
    which stays until the relay ended and both copies are written."""
    rec, pieces = running_stream(LONG_ANSWER)
    after = b": a comment after [DONE]\n\n"
    seen: list[list[str]] = []

    async def body(writer: Writer) -> bool:
        await relay(writer, rec, pieces, commit=False)
        assert writer._streams[rec.exchange_id].on_file > 0
        first = await writer.commit(rec.finish())
        rec.feed(after)
        writer.submit_nowait(rec.finish())  # as forward.py does with a fuller copy
        writer.untrack(rec)  # the relay ends before that copy is acknowledged
        seen.append(spool_files(writer))
        while writer._pending or writer._streams:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        seen.append(spool_files(writer))
        return first

    assert with_writer(tmp_path / "after.db", body, spool_after=300)
    assert len(seen[0]) == 2 and seen[1] == []
    stored_body, outputs = stored(tmp_path / "after.db", rec)
    assert stored_body == b"".join(pieces) + after
    assert outputs["choices"][0]["message"]["content"].endswith("token299")


def test_a_record_waiting_to_be_sent_is_not_overtaken_by_its_own_last_pieces(
    tmp_path: Path,
) -> None:
    """A stream on file stays open after its record; while that record waits in the outbox
    (the writer process busy with another), progress must not send its pieces a second time."""
    rec, pieces = running_stream(LONG_ANSWER)

    async def body(writer: Writer) -> list[bool]:
        await relay(writer, rec, pieces[:-1], commit=False)
        assert writer._streams[rec.exchange_id].on_file > 0
        process = writer._process
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)
        try:
            other = asyncio.ensure_future(writer.commit(recording()))
            await asyncio.sleep(PROGRESS_EVERY)  # sent: the writer owes its acknowledgement
            rec.feed(pieces[-1])
            last = asyncio.ensure_future(writer.commit(rec.finish()))
            await asyncio.sleep(PROGRESS_EVERY * 6)  # the record waits; progress ticks
        finally:
            os.kill(process.pid, signal.SIGCONT)
        try:
            return list(await asyncio.gather(other, last))
        finally:
            writer.untrack(rec)

    assert with_writer(tmp_path / "wait.db", body, spool_after=300) == [True, True]
    stored_body, outputs = stored(tmp_path / "wait.db", rec)
    assert stored_body == b"".join(pieces)
    assert outputs["choices"][0]["message"]["content"].endswith("token299")


def test_a_stream_that_outruns_the_writer_waits_for_it_and_not_for_ever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past HOLD_AT_MOST bytes not on file, the relay is paused until the writer process puts
    pieces on file; one that does not within PAUSE_AT_MOST is not waited for again."""
    monkeypatch.setattr(writer_module, "HOLD_AT_MOST", 60_000)
    monkeypatch.setattr(writer_module, "PAUSE_AT_MOST", 0.4)
    rec, pieces = running_stream(" ".join(f"token{i}" for i in range(3000)))
    pieces = [p[i : i + 5000] for p in pieces for i in range(0, len(p), 5000)]  # ~100 of 5 KB

    async def body(writer: Writer) -> tuple[bool, float, float]:
        process = writer._process
        assert process is not None
        fed = 0

        async def stall_and_feed(n: int) -> None:
            nonlocal fed
            os.kill(process.pid, signal.SIGSTOP)
            for piece in pieces[fed : fed + n]:
                rec.feed(piece)
            fed += n
            await asyncio.sleep(PROGRESS_EVERY * 3)

        await relay(writer, rec, pieces[:5], commit=False)  # on file from the first piece
        stream, fed = writer._streams[rec.exchange_id], 5
        assert stream.on_file > 0 and stream.paused is None
        await stall_and_feed(20)  # 100 KB the writer has not put on file
        assert stream.paused is not None
        started = time.monotonic()
        waiting = asyncio.ensure_future(writer.catch_up(stream))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        os.kill(process.pid, signal.SIGCONT)
        await waiting
        resumed_after = time.monotonic() - started
        assert not stream.never_pause

        await stall_and_feed(20)
        started = time.monotonic()
        try:
            await writer.catch_up(stream)  # the writer process does not move: given up on
        finally:
            os.kill(process.pid, signal.SIGCONT)
        gave_up_after = time.monotonic() - started
        assert stream.never_pause and stream.paused is None
        for piece in pieces[fed:]:
            rec.feed(piece)
        try:
            return await writer.commit(rec.finish()), resumed_after, gave_up_after
        finally:
            writer.untrack(rec)

    ok, resumed_after, gave_up_after = with_writer(tmp_path / "pause.db", body, spool_after=300)
    assert ok and resumed_after < 0.4 and 0.35 < gave_up_after < 1.0
    stored_body, _ = stored(tmp_path / "pause.db", rec)
    assert stored_body == b"".join(pieces)


def test_a_stalled_writer_is_not_sent_every_running_stream_twice(tmp_path: Path) -> None:
    """While the writer process cannot keep up, pieces wait for the record instead of piling
    up in front of it as a second copy of every stream."""
    rec, _ = running_stream("")
    piece = b"data: " + b"x" * (256 << 10) + b"\n\n"

    async def body(writer: Writer) -> tuple[int, bool]:
        process = writer._process
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)
        try:
            writer.track(rec)
            most = 0
            for _ in range(50):  # 12.8 MB in 50 pieces
                rec.feed(piece)
                await asyncio.sleep(PROGRESS_EVERY * 2)
                most = max(most, writer._link.transport.get_write_buffer_size())  # type: ignore[union-attr]
        finally:
            os.kill(process.pid, signal.SIGCONT)
        try:
            return most, await writer.commit(rec.finish())
        finally:
            writer.untrack(rec)

    most, ok = with_writer(tmp_path / "stall.db", body)
    assert ok and most < 2 * len(piece) + (1 << 20)
    body_stored, _ = stored(tmp_path / "stall.db", rec)
    assert body_stored == b"".join(rec.chunks)


def test_a_killed_proxys_spool_is_removed_by_the_next_one_and_its_own_at_close(
    tmp_path: Path,
) -> None:
    db = tmp_path / "s.db"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    base = Path(f"{db}-spool")
    left = base / f"{dead.pid}-0a0b0c0d"
    living = base / f"{os.getppid()}-01020304"  # another llmtap still running
    for directory in (left, living):
        directory.mkdir(parents=True)
        (directory / "0123456789abcdef").write_bytes(b"data: ...")

    async def body(writer: Writer) -> str:
        assert writer.config.spool_dir is not None
        assert not left.exists() and living.exists()
        own = Path(writer.config.spool_dir)  # as a long stream would leave it
        own.mkdir(parents=True)
        (own / "fedcba9876543210").write_bytes(b"data: ...")
        return writer.config.spool_dir

    own = with_writer(db, body)
    assert Path(own).parent == base and not Path(own).exists()
    assert living.exists() and base.exists()  # the other proxy's, and so its parent, stay


def test_a_lock_held_by_another_process_is_waited_for_whole_and_then_failed_at_once() -> None:
    """`database is locked` is no poison record: the batch is tried again whole (each try is a
    busy timeout), never record by record, which under the same lock would cost 2 more timeouts
    per record; the waits are no failures in health's count."""
    from llmtap.recorder.batch_writer import LOCKED_WAITS

    class Locked:
        calls = 0

        def write(self, batches: Sequence[Batch]) -> None:
            Locked.calls += 1
            raise sqlite3.OperationalError("database is locked")

        def idle(self) -> None: ...
        def close(self) -> None: ...

    writer = BatchWriter(Locked(), build_batch, fallback=raw_batch)
    written = writer.write([recording() for _ in range(10)])
    assert written == [None] * 10
    assert Locked.calls == LOCKED_WAITS + 1  # (before: 13 + 10 + 10)
    assert writer.health.failed == 1 and "locked" in (writer.health.last_error or "")


def test_commits_are_waited_for_again_once_a_lock_that_failed_its_batch_is_gone(
    tmp_path: Path,
) -> None:
    """While another process keeps the database locked, commits are not waited for (their
    clients would hang a minute); once the batch that met the lock ended, failed, they are
    again, whether or not the next write succeeds (the flag stayed until one did: with the
    database fine again, responses went out before their commit)."""
    import os
    import signal

    db = tmp_path / "locked.db"
    config = WriterConfig(db=str(db), locked_waits=1)

    async def body() -> None:
        writer = Writer(config)
        await writer.start()
        try:
            assert await writer.commit(recording())
            holder = sqlite3.connect(db, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            assert not await writer.commit(recording())  # told of the lock: not waited for
            assert time.monotonic() - started < 8  # (one busy timeout of 5 s)
            while not writer.health.failed:  # its batch, given up after its one more wait
                await asyncio.sleep(0.1)
            holder.rollback()
            holder.close()
            assert writer._process is not None
            os.kill(writer._process.pid, signal.SIGSTOP)  # a writer that answers nothing now
            try:
                waiting = asyncio.ensure_future(writer.commit(recording()))
                await asyncio.sleep(1.0)
                assert not waiting.done(), "a commit went out without waiting for the writer"
            finally:
                os.kill(writer._process.pid, signal.SIGCONT)
            assert await asyncio.wait_for(waiting, 20)
        finally:
            await writer.close()

    asyncio.run(body())
