"""The writer's cost per recording, without the network: build (parse, reassemble) and write
(SQLite, one transaction per batch), timed separately, single thread.

    python bench/writer_micro.py [--n 20000] [--batch 32]

Prints microseconds per recording for a non-streamed chat answer and a 100-chunk stream
(with the usage llmtap injects), so that a change in recorder/ can be measured in seconds:
wall time, then CPU time of the process (user + system; steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import upstream  # noqa: E402

from llmtap.proxy.context import build_context  # noqa: E402
from llmtap.proxy.headers import split_request_headers  # noqa: E402
from llmtap.recorder.recording import Recording  # noqa: E402
from llmtap.recorder.sqlite import SqliteStore  # noqa: E402
from llmtap.recorder.tracing import Tracer  # noqa: E402

REQ_HEADERS = [
    (b"content-type", b"application/json"),
    (b"authorization", b"Bearer sk-x"),
    (b"user-agent", b"bench"),
]
CHAT = (
    b'{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful '
    b'assistant."},{"role":"user","content":"Say hello in one short sentence, please."}],'
    b'"temperature":0.2,"max_tokens":64}'
)
STREAM = CHAT[:-1] + b',"stream":true,"stream_options":{"include_usage":true}}'


def recording(stream: bool) -> Recording:
    split = split_request_headers(REQ_HEADERS)
    rec = Recording(
        "POST",
        "/chat/completions",
        "",
        split.stored,
        STREAM if stream else CHAT,
        build_context(None, split.controls),
        split.key_fingerprint,
    )
    if stream:
        rec.respond(200, [("content-type", "text/event-stream; charset=utf-8")])
        for event in upstream.stream_events(100, usage=True):
            rec.feed(event)
        rec.usage_injected = True
    else:
        rec.respond(200, [("content-type", "application/json")])
        rec.feed(upstream.COMPLETION)
    return rec.finish()


def measure(kind: str, n: int, batch: int, db: Path) -> None:
    """As the writer does it: a batch of recordings built, written, then let go (a bench
    that kept every batch alive would time the garbage collector walking them all)."""
    stream = kind == "stream"
    store = SqliteStore(db)
    build = Tracer().build  # one for all, as the writer has (prices loaded once)
    wall = [0.0, 0.0]
    cpu = [0.0, 0.0]
    for i in range(0, n, batch):
        recs = [recording(stream) for _ in range(min(batch, n - i))]
        t0, c0 = time.perf_counter(), time.process_time()
        batches = [build(r) for r in recs]
        t1, c1 = time.perf_counter(), time.process_time()
        store.write(batches)
        t2, c2 = time.perf_counter(), time.process_time()
        wall[0] += t1 - t0
        wall[1] += t2 - t1
        cpu[0] += c1 - c0
        cpu[1] += c2 - c1
    store.close()
    size = db.stat().st_size / 2**20
    us = 1e6 / n
    print(
        f"{kind:7} n={n:,} batch={batch}: build {wall[0] * us:7.1f} us, "
        f"write {wall[1] * us:7.1f} us per recording; CPU: build {cpu[0] * us:7.1f}, "
        f"write {cpu[1] * us:7.1f} us (db {size:.0f} MB)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        measure("chat", args.n, args.batch, Path(tmp) / "chat.db")
        measure("stream", max(args.n // 10, 100), args.batch, Path(tmp) / "stream.db")


if __name__ == "__main__":
    main()
