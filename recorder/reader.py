"""TraceReader: the read side of the store, shared by the HTTP API and the CLI.

Each call opens its own read-only connection: readers never take the writer's lock, and a
reader works whether or not a server is running.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from llmtap.recorder.model_store import model_links
from llmtap.recorder.sqlite import connect_for_reading

# the first span names the trace and its model, as a list view wants them
_TRACE_COLUMNS = (
    "trace_id, experiment, session, status, request_time, start_time_ns, end_time_ns, "
    "execution_time_ms, tags, span_count, input_tokens, output_tokens, total_tokens, total_cost, "
    "(SELECT json_array(name, model) FROM spans "
    " WHERE spans.trace_id = traces.trace_id ORDER BY start_time_ns LIMIT 1) AS first_span"
)


@dataclass(frozen=True, slots=True)
class TraceQuery:
    experiment: str | None = None
    session: str | None = None
    status: str | None = None
    limit: int = 50
    offset: int = 0


def trace_info(row: sqlite3.Row) -> dict[str, Any]:
    """A traces row in the shape of SPEC section 3's TraceInfo."""
    name, model = orjson.loads(row["first_span"]) if row["first_span"] else (None, None)
    return {
        "trace_id": row["trace_id"],
        "experiment": row["experiment"],
        "session": row["session"],
        "status": row["status"],
        "request_time": row["request_time"],
        "execution_time_ms": row["execution_time_ms"],
        "start_time_ns": row["start_time_ns"],
        "end_time_ns": row["end_time_ns"],
        "tags": orjson.loads(row["tags"] or "{}"),
        "span_count": row["span_count"],
        "name": name,
        "model": model,
        "usage": {
            "input_tokens": row["input_tokens"],
            "output_tokens": row["output_tokens"],
            "total_tokens": row["total_tokens"],
        },
        "cost": None if row["total_cost"] is None else {"total_cost": row["total_cost"]},
    }


def span_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "span_id": row["span_id"],
        "trace_id": row["trace_id"],
        "parent_id": row["parent_id"],
        "name": row["name"],
        "span_type": row["span_type"],
        "start_time_ns": row["start_time_ns"],
        "end_time_ns": row["end_time_ns"],
        "status": {"code": row["status_code"], "message": row["status_message"]},
        "inputs": _loads(row["inputs"]),
        "outputs": _loads(row["outputs"]),
        "attributes": _loads(row["attributes"]) or {},
    }


def tree_order(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Depth first, each parent before its children, siblings by start time: a span that
    starts with its parent (an AGENT root and its first call) still comes after it."""
    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:  # already sorted by start time
        parent = span["parent_id"] if span["parent_id"] in ids else None
        children.setdefault(parent, []).append(span)
    ordered: list[dict[str, Any]] = []
    seen: set[str] = set()
    stack = list(reversed(children.get(None, [])))
    while stack:
        span = stack.pop()
        if span["span_id"] in seen:
            continue
        seen.add(span["span_id"])
        ordered.append(span)
        stack.extend(reversed(children.get(span["span_id"], [])))
    # spans caught in a parent cycle are not reachable from a root: list them all the same
    return ordered + [s for s in spans if s["span_id"] not in seen]


def _loads(text: str | None) -> Any:
    return orjson.loads(text) if text else None


class TraceReader:
    def __init__(self, path: str | Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        return connect_for_reading(self.path)

    def list_traces(self, query: TraceQuery) -> list[dict[str, Any]]:
        where, params = [], []
        for column in ("experiment", "session", "status"):
            value = getattr(query, column)
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {_TRACE_COLUMNS} FROM traces"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start_time_ns DESC LIMIT ? OFFSET ?"
        with closing(self._connect()) as conn:
            rows = conn.execute(sql, [*params, query.limit, query.offset]).fetchall()
        return [trace_info(r) for r in rows]

    def get_trace(self, trace_id: str) -> dict[str, Any] | None:
        """{"info": TraceInfo, "spans": [Span...]} or None when there is no such trace."""
        with closing(self._connect()) as conn:
            row = conn.execute(
                f"SELECT {_TRACE_COLUMNS} FROM traces WHERE trace_id = ?", [trace_id]
            ).fetchone()
            if row is None:
                return None
            spans = conn.execute(
                "SELECT * FROM spans WHERE trace_id = ? ORDER BY start_time_ns, rowid", [trace_id]
            ).fetchall()
            links = model_links(conn, trace_id)  # lineage: the model version a call ran
        dicts = [span_dict(s) for s in spans]
        for span in dicts:
            if span["span_id"] in links:
                span["model_version"] = links[span["span_id"]]
        return {"info": trace_info(row), "spans": tree_order(dicts)}

    def ids_starting_with(self, prefix: str, limit: int = 2) -> list[str]:
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT trace_id FROM traces WHERE trace_id >= ?1 AND trace_id < ?1 || 'g' "
                "ORDER BY trace_id LIMIT ?2",
                [prefix, limit],
            ).fetchall()
        return [r[0] for r in rows]

    def similar_ids(self, trace_id: str, limit: int = 3) -> list[str]:
        """The ids that share the longest start with a mistyped one (for "did you mean")."""
        for length in range(min(len(trace_id), 32), 0, -1):
            found = self.ids_starting_with(trace_id[:length], limit)
            if found:
                return found
        return []
