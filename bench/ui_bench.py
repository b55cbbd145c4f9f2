"""How fast the web UI answers on a real-sized database (issue 7: a trace-list page well under
100 ms with 100,000 traces).

    /work/venv/bin/python bench/ui_bench.py [--traces 100000] [--db PATH] [--repeat 30]

Builds a database of synthetic traces with direct inserts into the schema the migrations create
(about 1.3 spans per trace: one in ten is an agent run of four spans), serves it with a real
llmtap (mode off: nothing writes), and times each page over HTTP: median and p95 of `--repeat`
requests after one warm-up. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from llmtap.proxy.app import create_app, uvicorn_kwargs
from llmtap.proxy.config import Settings
from llmtap.proxy.server import ServerThread
from llmtap.proxy.ui_queries import MODEL_INDEX
from llmtap.recorder.sqlite import connect_for_writing

MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4.1", "o3-mini", "text-embedding-3-small"]
RARE_MODEL = "gpt-rare-model"  # 10 traces: the worst case for the model filter
RARE_WORD = "zanzibar"  # 5 traces: the worst case for text search
EXPERIMENTS = ["Default", "evals", "prod-shadow", "agents", "nightly"]
START_NS = 1_735_689_600 * 10**9  # 2025-01-01


def _span(
    trace_id: str,
    span_id: str,
    parent: str | None,
    kind: str,
    start: int,
    model: str,
    text: str,
    error: bool,
) -> tuple[Any, ...]:
    inputs = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. " * 4},
            {"role": "user", "content": text},
        ],
    }
    outputs = {
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": f"An answer about {text}. " * 6},
            }
        ],
    }
    attributes = {
        "endpoint": "chat.completions",
        "model": model,
        "stream": False,
        "http_status": 500 if error else 200,
        "usage": {"input_tokens": 40, "output_tokens": 60, "total_tokens": 100},
    }
    return (
        span_id,
        trace_id,
        parent,
        "chat.completions",
        kind,
        start,
        start + 900_000_000,
        "ERROR" if error else "OK",
        "upstream said no" if error else "",
        orjson.dumps(inputs).decode(),
        orjson.dumps(outputs).decode(),
        orjson.dumps(attributes).decode(),
        40,
        60,
        100,
        0.00012,
    )


def _trace(i: int, rng: random.Random) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
    trace_id = f"{i:032x}"
    start = START_NS + i * 1_000_000_000
    model = RARE_MODEL if i % 10_000 == 7 else rng.choice(MODELS)
    text = f"question {i} about {RARE_WORD}" if i % 20_000 == 3 else f"question {i} about cats"
    error = rng.random() < 0.02
    agent = i % 10 == 0
    spans = [_span(trace_id, f"{i:012x}0001", None, "CHAT_MODEL", start, model, text, error)]
    if agent:
        root = f"{i:012x}0000"
        spans = [
            (
                root,
                trace_id,
                None,
                "agent run",
                "AGENT",
                start,
                start + 3_000_000_000,
                "OK",
                "",
                None,
                None,
                "{}",
                0,
                0,
                0,
                None,
            )
        ]
        for k in range(1, 4):
            spans.append(
                _span(
                    trace_id,
                    f"{i:012x}{k:04x}",
                    root,
                    "CHAT_MODEL",
                    start + k * 700_000_000,
                    model,
                    text,
                    error and k == 3,
                )
            )
    session = f"session-{i // 20}" if i % 3 == 0 else None
    tags = {"env": "prod" if i % 2 else "staging"}
    tokens = 100 * (len(spans) - agent)
    row = (
        trace_id,
        rng.choice(EXPERIMENTS),
        session,
        "ERROR" if error else "OK",
        time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(start / 1e9)),
        start,
        spans[-1][6],
        (spans[-1][6] - start) / 1e6,
        orjson.dumps(tags).decode(),
        len(spans),
        40 * tokens // 100,
        60 * tokens // 100,
        tokens,
        0.00012 * tokens / 100,
    )
    return row, spans


def build(db: Path, count: int) -> None:
    conn = connect_for_writing(db)
    rng = random.Random(7)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT OR IGNORE INTO experiments VALUES (?, '2025-01-01T00:00:00Z')",
        [(e,) for e in EXPERIMENTS],
    )
    for first in range(0, count, 10_000):
        traces, spans = [], []
        for i in range(first, min(first + 10_000, count)):
            row, its_spans = _trace(i, rng)
            traces.append(row)
            spans.extend(its_spans)
        conn.executemany(f"INSERT INTO traces VALUES ({', '.join('?' * 14)})", traces)
        conn.executemany(
            "INSERT INTO spans (span_id, trace_id, parent_id, name, span_type, start_time_ns,"
            " end_time_ns, status_code, status_message, inputs, outputs, attributes,"
            " input_tokens, output_tokens, total_tokens, total_cost)"
            f" VALUES ({', '.join('?' * 16)})",
            spans,
        )
    conn.execute("UPDATE spans SET model = json_extract(attributes, '$.model')")
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def pages(count: int) -> list[tuple[str, str]]:
    agent_trace = f"{(count // 2) // 10 * 10:032x}"
    return [
        ("trace list, first page", "/"),
        ("trace list, page 100 (offset 5000)", "/?offset=5000"),
        ("status=ERROR", "/?status=ERROR"),
        ("experiment=evals", "/?experiment=evals"),
        ("session=session-30", "/?session=session-30"),
        ("tag env=prod", "/?tag=env%3Dprod"),
        ("model=gpt-4o (common)", "/?model=gpt-4o"),
        (f"model={RARE_MODEL} (10 traces)", f"/?model={RARE_MODEL}"),
        ("time range (one day)", "/?since=2025-01-01T10:00&until=2025-01-02T10:00"),
        ("text search, common word", "/?q=cats"),
        ("text search, rare word (5 traces)", f"/?q={RARE_WORD}"),
        ("text search + experiment + status", f"/?q={RARE_WORD}&experiment=evals&status=OK"),
        ("trace page (agent, 4 spans)", f"/traces/{agent_trace}"),
        ("experiments", "/experiments"),
        ("sessions", "/sessions"),
    ]


def add_model_index(db: Path) -> None:
    """The index the UI asks a migration for (see `llmtap.proxy.ui_queries.MODEL_INDEX`)."""
    conn = connect_for_writing(db)
    conn.execute(f"CREATE INDEX IF NOT EXISTS {MODEL_INDEX} ON spans (model, trace_id)")
    conn.execute("ANALYZE")
    conn.close()


def model_pages() -> list[tuple[str, str]]:
    return [
        (f"{label}, with {MODEL_INDEX}", path)
        for label, path in pages(0)
        if label.startswith("model=")
    ]


def report(db: Path, rows: list[tuple[str, str]], repeat: int) -> None:
    settings = Settings(upstream="http://127.0.0.1:9/v1", db=str(db), port=0, mode="off")
    with (
        ServerThread(create_app(settings), **uvicorn_kwargs()) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        for label, path in rows:
            median, p95, count = time_page(client, path, repeat)
            print(f"{label:<54} {median:>10.1f} {p95:>8.1f} {count:>5}")


def time_page(client: httpx.Client, path: str, repeat: int) -> tuple[float, float, int]:
    client.get(path).raise_for_status()  # warm-up: the page cache, the templates
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - began) * 1000)
        response.raise_for_status()
    times.sort()
    rows = response.text.count('class="row-link"')
    return statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)], rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=100_000)
    parser.add_argument("--db", type=Path, help="reuse or create this file (default: a temp file)")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument(
        "--no-index",
        action="store_true",
        help=f"do not add {MODEL_INDEX} to the database for the last rows",
    )
    args = parser.parse_args()
    folder = tempfile.TemporaryDirectory()
    db = args.db or Path(folder.name) / "ui-bench.db"
    if not db.exists():
        began = time.perf_counter()
        build(db, args.traces)
        print(
            f"built {db} with {args.traces:,} traces in {time.perf_counter() - began:.1f} s "
            f"({db.stat().st_size / 1e6:.0f} MB)"
        )
    print(f"\n{'page':<54} {'median ms':>10} {'p95 ms':>8} {'rows':>5}")
    report(db, pages(args.traces), args.repeat)
    if not args.no_index:
        add_model_index(db)
        report(db, model_pages(), args.repeat)
    folder.cleanup()


if __name__ == "__main__":
    main()
