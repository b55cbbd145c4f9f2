"""One very long stream through `llmtap serve --mode record` (issue 3, target 4: "a 1,000,000-
chunk stream passes with memory bounded by its reassembled output").

Starts the fake upstream and llmtap on free ports, asks for one streamed chat answer of N
events (`x-bench-events`, all written at once), reads it to the end, and prints the peak RSS
(`VmHWM`) of the proxy and of its writer process, their RSS once it is recorded, and the
sizes of the stream, of what the database holds of it and of the reassembled output.

    python bench/long_stream.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import zstandard  # noqa: E402
from run import BENCH, PY, Ctx, descendants, rss_mb, start_llmtap  # noqa: E402

from llmtap.recorder.body_codec import MARKER  # noqa: E402
from llmtap.recorder.schema import RESPONSE_BODY  # noqa: E402


def peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def body_size(stored: bytes) -> int:
    """The size of a stored body as sent (a packed one's zstd frame records it)."""
    if stored.startswith(MARKER):
        return zstandard.frame_content_size(stored[len(MARKER) :])
    return len(stored)


def stream_once(url: str, events: int) -> tuple[int, float]:
    """Bytes of SSE read, and seconds it took."""
    host, port = url.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    body = json.dumps(
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    )
    start = time.monotonic()
    conn.request(
        "POST",
        "/v1/chat/completions",
        body,
        {
            "content-type": "application/json",
            "authorization": "Bearer sk-bench",
            "x-bench-events": str(events),
        },
    )
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"status {response.status}: {response.read()[:500]!r}")
    total = 0
    while block := response.read(1 << 20):
        total += len(block)
    conn.close()
    return total, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llmtap-long-") as tmp:
        ctx = Ctx(Path(tmp))
        try:
            _, ctx.upstream_url = ctx.spawn(
                "upstream", [PY, str(BENCH / "upstream.py")], r"upstream listening on (http://\S+)"
            )
            target = start_llmtap("record", ctx, name="llmtap-long")
            proxy = target.main_pid
            assert proxy is not None
            writer = next(p for p in descendants(proxy) if p != proxy)
            before = {"proxy": rss_mb(proxy), "writer": rss_mb(writer)}
            size, seconds = stream_once(target.url, args.events)
            db = Path(tmp) / "llmtap-long.db"
            stored = kept = output = 0
            for _ in range(600):  # the record lands at [DONE]; the fuller copy right after
                conn = sqlite3.connect(db)
                row = conn.execute(
                    f"SELECT {RESPONSE_BODY}, length(outputs) "
                    "FROM exchanges JOIN spans USING (exchange_id)"
                ).fetchone()
                conn.close()
                if row and body_size(row[0]) >= size:  # (as sent: with the usage llmtap asked for)
                    stored, kept, output = body_size(row[0]), len(row[0]), row[1]
                    break
                time.sleep(0.1)
            time.sleep(1.0)  # idle: the writer gives freed memory back
            peaks = {"proxy": peak_mb(proxy), "writer": peak_mb(writer)}
            after = {"proxy": rss_mb(proxy), "writer": rss_mb(writer)}
        finally:
            ctx.stop_all()
    print(f"stream: {args.events:,} events, {size / 2**20:.1f} MB of SSE in {seconds:.1f} s")
    print(
        f"stored: {stored / 2**20:.1f} MB body (kept in {kept / 2**20:.1f} MB), "
        f"{output / 2**20:.1f} MB reassembled output"
    )
    print("| process | RSS before | peak RSS | RSS after |")
    print("|---|--:|--:|--:|")
    for name in ("proxy", "writer"):
        print(f"| {name} | {before[name]:.0f} MB | {peaks[name]:.0f} MB | {after[name]:.0f} MB |")
    return 0 if stored >= size else 1


if __name__ == "__main__":
    sys.exit(main())
