"""TraceReader: the read side of the store, shared by the HTTP API and the CLI.

Each call opens its own read-only connection: readers never take the writer's lock, and a
reader works whether or not a server is running. No database file yet reads as no traces.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from llmtap.recorder.model_store import model_links
from llmtap.recorder.sqlite import connect_for_reading

_HEX = frozenset("0123456789abcdef")
PREVIEW_CHARS = 1000
"""How much of a trace's request and response its TraceInfo shows (MLflow 3's previews)."""

# the first span names the trace and its model, as a list view wants them; the first model
# call's last input and the last one's answer are its previews (read by SQLite's JSON
# functions: only those values leave the database, not the whole conversation)
TRACE_COLUMNS = """
    trace_id, experiment, session, status, request_time, start_time_ns, end_time_ns,
    execution_time_ms, tags, span_count, input_tokens, output_tokens, total_tokens, total_cost,
    (SELECT json_array(name, model) FROM spans
        WHERE spans.trace_id = traces.trace_id ORDER BY start_time_ns LIMIT 1) AS first_span
"""
"""What `trace_info()` reads; the UI's list (up to 500 rows, no previews shown) reads these."""


def _content_text(path: str) -> str:
    """SQL for the text of the message content at `path` in a span's inputs: a string as it
    is; a list of parts (`[{"type": "input_text", "text": ...}]`, what the Vercel AI SDK always
    sends, and chat's text and image parts) as their texts, a blank line between them, as the
    UI shows them (`proxy/ui.py`), not the list's JSON; parts without text leave nothing."""
    # json_type and json_extract reuse the parse of json_valid (SQLite caches the last few
    # parsed texts); json_each parses only the parts' JSON, not the whole inputs again
    return f"""CASE json_type(inputs, '{path}')
                WHEN 'array' THEN (SELECT group_concat(CASE part.type
                        WHEN 'text' THEN part.value
                        WHEN 'object' THEN json_extract(part.value, '$.text') END, char(10, 10))
                    FROM json_each(json_extract(inputs, '{path}')) AS part)
                ELSE json_extract(inputs, '{path}') END"""


PREVIEW_COLUMNS = f"""
    (SELECT substr(coalesce(
            {_content_text("$.messages[#-1].content")},
            CASE json_type(inputs, '$.input') WHEN 'text' THEN json_extract(inputs, '$.input')
                ELSE {_content_text("$.input[#-1].content")} END,
            json_extract(inputs, '$.prompt')), 1, {PREVIEW_CHARS})
        FROM spans WHERE spans.trace_id = traces.trace_id AND span_type != 'AGENT'
            AND span_type != 'TOOL' AND json_valid(inputs)
        ORDER BY start_time_ns LIMIT 1) AS request_preview,
    (SELECT substr(coalesce(
            json_extract(outputs, '$.choices[0].message.content'),
            json_extract(outputs, '$.choices[0].text'),
            json_extract(outputs, '$.output[#-1].content[0].text')), 1, {PREVIEW_CHARS})
        FROM spans WHERE spans.trace_id = traces.trace_id AND span_type IN ('CHAT_MODEL', 'LLM')
            AND json_valid(outputs)
        ORDER BY start_time_ns DESC LIMIT 1) AS response_preview
"""
"""The previews, for the API: SQLite parses each listed trace's first and last model calls
(~0.25 ms a trace whose conversation is 200 KB), which a list of 500 would feel."""


@dataclass(frozen=True, slots=True)
class TraceQuery:
    experiment: str | None = None
    session: str | None = None
    status: str | None = None
    limit: int = 50
    offset: int = 0
    after: tuple[int, int] | None = None
    """A page token's place (`page_token`): only traces listed after it, newest first. Unlike
    an offset, it does not shift when new traces arrive between pages."""


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
        **_previews(row),
    }


def _previews(row: sqlite3.Row) -> dict[str, str | None]:
    if "request_preview" not in row.keys():  # noqa: SIM118 - `in row` looks at its values
        return {}
    return {
        "request_preview": _text(row["request_preview"]),
        "response_preview": _text(row["response_preview"]),
    }


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


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


class NotAnLlmtapDatabase(Exception):
    """The file is there but is no database llmtap wrote: not SQLite, or without its tables."""


def open_for_reading(path: str | Path) -> sqlite3.Connection | None:
    """A read-only connection to the llmtap database at `path`; None when there is no file
    yet (nothing recorded: `--mode off`, or deleted); NotAnLlmtapDatabase for another file
    (a zero-byte `touch`ed file opens as an empty SQLite database, so look for the table)."""
    if Path(path).is_dir():  # (SQLite opens it, then says "disk I/O error")
        raise NotAnLlmtapDatabase(f"{path} is a folder, not an llmtap database")
    conn: sqlite3.Connection | None = None
    try:
        conn = connect_for_reading(path)
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'traces'"
        ).fetchone()
    except FileNotFoundError:
        return None
    except sqlite3.DatabaseError as exc:  # "file is not a database"
        if conn is not None:
            conn.close()
        if getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")):
            # a WAL database is read through its -shm file, which SQLite makes beside it
            raise NotAnLlmtapDatabase(
                f"cannot read {path}: SQLite needs to write beside it, in its folder ({exc})"
            ) from exc
        raise NotAnLlmtapDatabase(f"{path} is not an llmtap database ({exc})") from exc
    if found is None:
        conn.close()
        raise NotAnLlmtapDatabase(f"{path} is not an llmtap database (it has no traces table)")
    return conn


class TraceReader:
    def __init__(self, path: str | Path) -> None:
        self.path = path

    def _rows(self, sql: str, params: list[Any]) -> list[sqlite3.Row]:
        conn = open_for_reading(self.path)
        if conn is None:  # nothing recorded yet
            return []
        with closing(conn):
            rows: list[sqlite3.Row] = conn.execute(sql, params).fetchall()
            return rows

    def list_traces(self, query: TraceQuery) -> list[dict[str, Any]]:
        return self.list_page(query)[0]

    def list_page(self, query: TraceQuery) -> tuple[list[dict[str, Any]], str | None]:
        """`query`'s traces, and when more follow them, the page token of the last: given
        back as `after` (`read_page_token`), it lists the traces that follow it."""
        sql, params = _list_sql(query)
        # one more than asked: whether a next page exists (limit=0 asks for none: none follows)
        rows = self._rows(sql, [*params, query.limit + 1, query.offset])
        if not 0 < query.limit < len(rows):
            return [trace_info(r) for r in rows[: query.limit]], None
        last = rows[query.limit - 1]
        token = page_token(last["start_time_ns"], last["row_number"])
        return [trace_info(r) for r in rows[: query.limit]], token

    def get_trace(self, trace_id: str) -> dict[str, Any] | None:
        """{"info": TraceInfo, "spans": [Span...]} or None when there is no such trace."""
        conn = open_for_reading(self.path)
        if conn is None:
            return None
        with closing(conn):
            return _full_trace(conn, trace_id)

    def each_trace(self, experiment: str | None = None) -> Iterator[dict[str, Any]]:
        """Every trace (of `experiment`), newest first, as get_trace gives it, all read in
        one read transaction: a server recording meanwhile can neither shift a page (offset
        paging repeated or skipped traces) nor show half of what the export sees."""
        conn = open_for_reading(self.path)
        if conn is None:
            return
        with closing(conn):
            conn.execute("BEGIN")  # the snapshot of the first read holds until the end
            # the ids alone: the listing's columns (two previews parsed out of each trace's
            # spans) took 550 MB and 8 s for 300,000 traces before the first line was written
            sql = "SELECT trace_id FROM traces"
            params = [experiment] if experiment is not None else []
            if experiment is not None:
                sql += " WHERE experiment = ?"
            sql += " ORDER BY start_time_ns DESC, rowid DESC"  # as `list_page` orders them
            ids = [r["trace_id"] for r in conn.execute(sql, params).fetchall()]
            for trace_id in ids:
                found = _full_trace(conn, trace_id)
                if found is not None:
                    yield found

    def find_trace(self, exact: str, prefix: str) -> dict[str, Any] | None:
        """The trace whose id is `exact` (the stored form of what was asked for), else the
        one trace whose id starts with `prefix` (4 hex characters at least, as with git)."""
        found = self.get_trace(exact)
        if found is None:
            trace_id = self._only_id_starting_with(prefix)
            found = self.get_trace(trace_id) if trace_id else None
        return found

    def resolve_id(self, exact: str, prefix: str) -> str | None:
        """The id `find_trace` finds, without reading the trace."""
        if self._rows("SELECT 1 FROM traces WHERE trace_id = ?", [exact]):
            return exact
        return self._only_id_starting_with(prefix)

    def _only_id_starting_with(self, prefix: str) -> str | None:
        if len(prefix) >= 4 and all(c in _HEX for c in prefix.lower()):
            ids = self.ids_starting_with(prefix.lower())
            if len(ids) == 1:
                return ids[0]
        return None

    def ids_starting_with(self, prefix: str, limit: int = 2) -> list[str]:
        rows = self._rows(
            "SELECT trace_id FROM traces WHERE trace_id >= ?1 AND trace_id < ?1 || 'g' "
            "ORDER BY trace_id LIMIT ?2",
            [prefix, limit],
        )
        return [r[0] for r in rows]

    def similar_ids(self, trace_id: str, limit: int = 3) -> list[str]:
        """The ids that share the longest start with a mistyped one (for "did you mean")."""
        for length in range(min(len(trace_id), 32), 0, -1):
            found = self.ids_starting_with(trace_id[:length], limit)
            if found:
                return found
        return []


def _list_sql(query: TraceQuery) -> tuple[str, list[Any]]:
    """The newest-first listing of `query`'s filters; its parameters end before the page's
    limit and offset."""
    where, params = [], []
    for column in ("experiment", "session", "status"):
        value = getattr(query, column)
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if query.after is not None:
        # (the first test is the index's range; the row id breaks ties of start time)
        where.append("start_time_ns <= ? AND (start_time_ns < ? OR rowid < ?)")
        params += [query.after[0], query.after[0], query.after[1]]
    # the row id orders traces that began in the same nanosecond, so that no page repeats or
    # skips one of them (a trace's row keeps its row id when it is updated)
    order = " ORDER BY start_time_ns DESC, rowid DESC"
    # the page's rows are chosen from the index alone, and only they get their columns: SQLite
    # computes the skipped rows' too (offset=100,000 took 1.3-18 s over 400 MB, the previews)
    page = "SELECT rowid FROM traces"
    if where:
        page += " WHERE " + " AND ".join(where)
    page += f"{order} LIMIT ? OFFSET ?"
    sql = f"SELECT rowid AS row_number, {TRACE_COLUMNS}, {PREVIEW_COLUMNS} FROM traces"
    return f"{sql} WHERE rowid IN ({page}){order}", params


def page_token(start_time_ns: int, row_number: int) -> str:
    """The place of a listed trace, as `GET /api/traces` gives it (`next_page_token`)."""
    return f"{start_time_ns}.{row_number}"


def read_page_token(token: str) -> tuple[int, int]:
    """The place `page_token` wrote; ValueError for anything else."""
    start, dot, row = token.partition(".")
    if not (dot and start.isdigit() and row.isdigit() and start.isascii() and row.isascii()):
        raise ValueError("page_token is not one this server gave (next_page_token)")
    return int(start), int(row)


def _full_trace(conn: sqlite3.Connection, trace_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        f"SELECT {TRACE_COLUMNS}, {PREVIEW_COLUMNS} FROM traces WHERE trace_id = ?", [trace_id]
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
