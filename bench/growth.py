"""Does recording slow down as the database grows? (issue 3, target 4: not up to 1,000,000
traces.)

Writes N non-streamed chat recordings (each its own trace, as independent calls are) through
the writer's own build and store, in transactions of 32, single process, no network, and
prints the cost per recording of each block of the run: the last block against the first.

    python bench/growth.py [--n 1000000] [--block 50000] [--db PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import upstream  # noqa: E402
from writer_micro import CHAT, REQ_HEADERS  # noqa: E402

from llmtap.proxy.context import build_context  # noqa: E402
from llmtap.proxy.headers import split_request_headers  # noqa: E402
from llmtap.recorder.recording import Recording  # noqa: E402
from llmtap.recorder.sqlite import SqliteStore  # noqa: E402
from llmtap.recorder.tracing import Tracer  # noqa: E402

BATCH = 32


def recording(i: int) -> Recording:
    split = split_request_headers(REQ_HEADERS)
    # a different prompt each time, so the rows are not all alike
    body = CHAT.replace(b"please.", f"please ({i}).".encode())
    rec = Recording(
        "POST", "/chat/completions", "", split.stored, body, build_context(None, split.controls)
    )
    rec.respond(200, [("content-type", "application/json")])
    rec.feed(upstream.COMPLETION)
    return rec.finish()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--block", type=int, default=50_000)
    ap.add_argument("--db", type=Path, default=None, help="default: a temporary file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "growth.db"
        store = SqliteStore(db)
        build = Tracer().build
        print("| traces in the database | build us/rec | write us/rec | total us/rec |")
        print("|--:|--:|--:|--:|")
        first: float | None = None
        done = 0
        while done < args.n:
            build_s = write_s = 0.0
            for start in range(done, min(done + args.block, args.n), BATCH):
                recs = [recording(i) for i in range(start, min(start + BATCH, args.n))]
                t0 = time.perf_counter()
                batches = [build(r) for r in recs]
                t1 = time.perf_counter()
                store.write(batches)
                t2 = time.perf_counter()
                build_s += t1 - t0
                write_s += t2 - t1
                if (start // BATCH) % 32 == 31:
                    store.idle()  # the checkpoint the writer does when it waits
            n = min(args.block, args.n - done)
            done += n
            total = (build_s + write_s) / n * 1e6
            first = first or total
            print(
                f"| {done:,} | {build_s / n * 1e6:.0f} | {write_s / n * 1e6:.0f} "
                f"| {total:.0f} ({total / first:.2f}x the first block) |",
                flush=True,
            )
        store.close()
        size = db.stat().st_size / 2**20
        print(f"\ndatabase: {size:,.0f} MB for {done:,} traces")


if __name__ == "__main__":
    main()
