"""The writer thread: group commit, one poison record fails only itself, a broken store never
fails a request."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from llmtap.recorder.recording import Recording
from llmtap.recorder.records import Batch, RequestContext
from llmtap.recorder.tracing import build_batch
from llmtap.recorder.writer import Writer


class ListSink:
    """A Sink that keeps batches in memory; `poison` paths make the write fail."""

    def __init__(self, poison: set[str] | None = None, gate: threading.Event | None = None) -> None:
        self.writes: list[list[Batch]] = []
        self.poison = poison or set()
        self.gate = gate

    def write(self, batches: Sequence[Batch]) -> None:
        if self.gate is not None:
            self.gate.wait(5)
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


def run_commits(writer: Writer, recs: list[Recording]) -> list[bool]:
    async def go() -> list[bool]:
        return list(await asyncio.gather(*(writer.commit(r) for r in recs)))

    return asyncio.run(go())


def test_concurrent_commits_share_transactions() -> None:
    gate = threading.Event()
    sink = ListSink(gate=gate)
    writer = Writer(lambda: sink, build_batch)
    writer.start()
    threading.Timer(0.2, gate.set).start()  # hold the first write so that the rest pile up
    results = run_commits(writer, [recording() for _ in range(200)])
    writer.close()
    assert all(results)
    assert sum(len(w) for w in sink.writes) == 200
    assert len(sink.writes) <= 3, [len(w) for w in sink.writes]


def test_a_poison_record_fails_only_itself() -> None:
    sink = ListSink(poison={"/poison"})
    writer = Writer(lambda: sink, build_batch)
    writer.start()
    gate_recs = [recording(), recording("/poison"), recording()]
    results = run_commits(writer, gate_recs)
    writer.close()
    assert results.count(False) == 1 and results[1] is False
    assert writer.health.failed == 1 and "disk I/O error" in (writer.health.last_error or "")


def test_a_record_that_cannot_be_built_is_reported_not_raised() -> None:
    def broken(rec: Recording) -> Batch:
        raise ValueError("nope")

    writer = Writer(lambda: ListSink(), broken)
    writer.start()
    assert run_commits(writer, [recording()]) == [False]
    writer.close()
    assert writer.health.failed == 1


def test_close_drains_submitted_work() -> None:
    sink = ListSink()
    writer = Writer(lambda: sink, build_batch)
    writer.start()
    for _ in range(50):
        writer.submit_nowait(recording())
    writer.close()
    assert sum(len(w) for w in sink.writes) == 50
