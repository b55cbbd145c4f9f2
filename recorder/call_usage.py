"""What a run of calls cost, in tokens and dollars: the pytest fixture's `llmtap.usage()`, for
a test that holds its code to a budget, recorded or replayed alike.

Each call is counted from its stored exchange as the recorder builds it (the same usage and
price table a live recording's span gets), so a replayed cassette, whose exchanges have no
spans, costs what the recording cost.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import orjson

from llmtap.recorder.body_codec import unpack_body
from llmtap.recorder.recording import FAULT_REASON, Recording
from llmtap.recorder.records import RequestContext
from llmtap.recorder.schema import RESPONSE_BODY
from llmtap.recorder.sqlite import connect_for_reading
from llmtap.recorder.tracing import Tracer


@dataclass(frozen=True, slots=True)
class CallUsage:
    calls: int = 0
    """Answers the client got (a replayed answer as often as it was replayed)."""
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost: float | None = None
    """USD of the calls whose model has a known price; None when none has."""


_SELECT = (
    "SELECT exchange_id, method, path, query, request_headers, request_body, status, "
    f"response_headers, {RESPONSE_BODY} AS response_body, started_ns, ended_ns, error, "
    "usage_injected, stream FROM exchanges WHERE exchange_id = ?"
)


def last_rowid(db: str) -> int:
    """The newest exchange's rowid (0 for none): what a later `recorded_since` starts after."""
    with closing(connect_for_reading(db)) as conn:
        return int(conn.execute("SELECT coalesce(max(rowid), 0) FROM exchanges").fetchone()[0])


def recorded_since(db: str, rowid: int) -> list[str]:
    """Exchanges written after `rowid`, oldest first; not the faults llmtap answered itself
    (no call was made, and replay, which never serves them, would not count them)."""
    with closing(connect_for_reading(db)) as conn:
        rows = conn.execute(
            "SELECT exchange_id FROM exchanges WHERE rowid > ? "
            "AND (error IS NULL OR error NOT LIKE ?) ORDER BY rowid",
            [rowid, FAULT_REASON + "%"],
        )
        return [row[0] for row in rows]


def usage_of(db: str, exchange_ids: Iterable[str]) -> CallUsage:
    """The calls' usage and cost summed, each id counted as often as it is given."""
    tracer = Tracer()  # (the price table loaded once)
    per_exchange: dict[str, tuple[int, int, int, float | None]] = {}
    calls = tokens_in = tokens_out = tokens_total = 0
    cost: float | None = None
    with closing(connect_for_reading(db)) as conn:
        for exchange_id in exchange_ids:
            if exchange_id not in per_exchange:
                row = conn.execute(_SELECT, [exchange_id]).fetchone()
                per_exchange[exchange_id] = _usage_of_row(tracer, row) if row else (0, 0, 0, None)
            got_in, got_out, got_total, got_cost = per_exchange[exchange_id]
            calls += 1
            tokens_in, tokens_out, tokens_total = (
                tokens_in + got_in,
                tokens_out + got_out,
                tokens_total + got_total,
            )
            if got_cost is not None:
                cost = (cost or 0.0) + got_cost
    return CallUsage(calls, tokens_in, tokens_out, tokens_total, cost)


def _usage_of_row(tracer: Tracer, row: sqlite3.Row) -> tuple[int, int, int, float | None]:
    rec = Recording(
        row["method"],
        row["path"],
        row["query"],
        [tuple(pair) for pair in orjson.loads(row["request_headers"])],  # type: ignore[misc]
        unpack_body(bytes(row["request_body"])),
        RequestContext(),
        started_ns=row["started_ns"],
        exchange_id=row["exchange_id"],
    )
    if row["status"] is not None:
        rec.respond(row["status"], [tuple(p) for p in orjson.loads(row["response_headers"])])  # type: ignore[misc]
        rec.feed(unpack_body(bytes(row["response_body"])))
    rec.usage_injected = bool(row["usage_injected"])
    rec.unlabelled_stream = bool(row["stream"])  # (whatever its content type says)
    rec.finish()
    if row["error"]:
        rec.error = row["error"]
    rec.ended_ns = row["ended_ns"]
    span = next((s for s in tracer.build(rec).spans if s.span_id == rec.span_id), None)
    if span is None:  # not a call llmtap traces (/models, files...): no tokens
        return 0, 0, 0, None
    usage: Any = span.attributes.get("usage") or {}
    price: Any = span.attributes.get("cost") or {}
    return (
        int(usage.get("input_tokens") or 0),
        int(usage.get("output_tokens") or 0),
        int(usage.get("total_tokens") or 0),
        price.get("total_cost"),
    )
