"""The SQL behind the web UI: filtered trace pages, experiment and session summaries, models.

Read-only, one short-lived connection per call (as `TraceReader` does). Every trace-list query
walks `traces_by_time` (or the experiment/session index) newest first and stops after one page;
filters that look inside spans (model, text) are EXISTS probes on `spans_by_trace`, so they cost
one index lookup per trace walked, never a scan of all spans up front.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from llmtap.recorder.reader import TRACE_COLUMNS as _TRACE_COLUMNS  # what trace_info() reads
from llmtap.recorder.reader import trace_info
from llmtap.recorder.sqlite import connect_for_reading

MAX_LIMIT = 500
_NAMES = ("experiment", "session")
"""Filters that name something recorded: matched exactly, spaces and all."""
MODEL_INDEX = "spans_by_model"
"""`spans_by_model ON spans (model, start_time_ns, trace_id)` (schema migration 0003). Without
it, filtering by a model few traces use walks every trace."""
RARE = 2000  # fewer spans than this: read the model's traces from the index


@dataclass(frozen=True, slots=True)
class TraceFilter:
    """What the trace list shows; every field is optional and they combine with AND."""

    experiment: str | None = None
    session: str | None = None
    status: str | None = None
    model: str | None = None
    tag: str | None = None
    """`KEY=VALUE` (a bare `KEY` matches any value)."""
    since: str | None = None
    """`YYYY-MM-DDTHH:MM[:SS]`, UTC, as an HTML datetime-local input sends it."""
    until: str | None = None
    q: str | None = None
    """Text searched in the spans' inputs and outputs."""
    limit: int = 50
    offset: int = 0

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> TraceFilter:
        """From a query string; blank values mean no filter. Raises ValueError on bad input."""
        # names as recorded (an experiment may be " prod"); what is typed, trimmed
        text = {
            f.name: (value if f.name in _NAMES else value.strip()) or None
            for f in fields(cls)
            if f.name not in ("limit", "offset")
            for value in (params.get(f.name) or "",)
        }
        for bound in (text["since"], text["until"]):
            if bound is not None:
                parse_time(bound)  # reject early, before any query runs
        return cls(
            **text,
            limit=bounded_int(params.get("limit"), 50, 1, MAX_LIMIT, "limit"),
            offset=bounded_int(params.get("offset"), 0, 0, 1 << 62, "offset"),
        )

    def active(self) -> dict[str, str]:
        """The filters in use, as query parameters (no paging)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("limit", "offset") and getattr(self, f.name) is not None
        }

    def page(self, offset: int) -> TraceFilter:
        return replace(self, offset=max(0, offset))


def whole_number(raw: str, name: str) -> int:
    """`raw` as an integer written in ASCII digits (`int` also reads `1_0`, `٣` and `３`);
    ValueError naming the parameter otherwise."""
    text = raw.strip()
    digits = text[1:] if text[:1] in ("-", "+") else text
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"{name} must be a whole number, not {raw!r}")
    return int(text)


def bounded_int(raw: str | None, default: int, lower: int, upper: int, name: str) -> int:
    if raw is None or raw.strip() == "":
        return default
    return max(lower, min(whole_number(raw, name), upper))  # ValueError becomes a 400


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch for a UTC `YYYY-MM-DDTHH:MM[:SS]` (or a date alone)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"not a time: {text!r} (use YYYY-MM-DDTHH:MM, UTC)") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    ns = int(moment.timestamp() * 1_000_000) * 1000
    # nanoseconds fit SQLite's integers from 1677 to 2262: a time beyond is the bound itself
    return max(-(1 << 63), min(ns, (1 << 63) - 1))


def iso_time(ns: int | None) -> str | None:
    """Nanoseconds since the epoch as ISO 8601 UTC, the shape of `traces.request_time`."""
    if ns is None:
        return None
    moment = datetime.fromtimestamp(ns / 1e9, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def like_pattern(text: str) -> str:
    """A LIKE pattern finding `text` inside JSON text, where it is stored JSON-escaped."""
    needle = orjson.dumps(text).decode()[1:-1]  # `"` is stored as `\"`, a newline as `\n`
    for special in ("\\", "%", "_"):
        needle = needle.replace(special, "\\" + special)
    return f"%{needle}%"


def _model_condition(conn: sqlite3.Connection, model: str) -> str:
    """SQL selecting traces with a span of this model.

    Walking traces newest first with an EXISTS probe finds a common model's page at once but
    visits every trace for a rare one. With the `spans_by_model` index a rare model is found
    from the index instead; without that index, counting a model's spans would scan them all.
    """
    # `+model`: the probe looks up the trace's few spans by `spans_by_trace`; the model index
    # (model first, then time) would walk every span of the model for each trace
    probe = (
        "EXISTS (SELECT 1 FROM spans WHERE spans.trace_id = traces.trace_id AND +spans.model = ?)"
    )
    indexed = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", [MODEL_INDEX]
    ).fetchone()
    if indexed is None:
        return probe
    spans = conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM spans WHERE model = ? LIMIT ?)",
        [model, RARE],
    ).fetchone()[0]
    if spans >= RARE:
        return probe
    return "traces.trace_id IN (SELECT trace_id FROM spans WHERE model = ?)"


def _where(flt: TraceFilter) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for column in ("experiment", "session", "status"):
        if getattr(flt, column) is not None:
            where.append(f"traces.{column} = ?")
            params.append(getattr(flt, column))
    if flt.since is not None:
        where.append("traces.start_time_ns >= ?")
        params.append(parse_time(flt.since))
    if flt.until is not None:
        where.append("traces.start_time_ns < ?")
        params.append(parse_time(flt.until))
    if flt.tag is not None:
        key, sep, value = flt.tag.partition("=")
        where.append(
            "EXISTS (SELECT 1 FROM json_each(traces.tags) WHERE key = ?"
            + (" AND value = ?)" if sep else ")")
        )
        params.extend([key.strip(), value.strip()] if sep else [key.strip()])
    if flt.q is not None:
        where.append(
            "EXISTS (SELECT 1 FROM spans WHERE spans.trace_id = traces.trace_id"
            " AND (spans.inputs LIKE ? ESCAPE '\\' OR spans.outputs LIKE ? ESCAPE '\\'))"
        )
        params.extend([like_pattern(flt.q)] * 2)
    return where, params


class UiQueries:
    """The UI's reads over one database file."""

    def __init__(self, path: str | Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        return connect_for_reading(self.path)

    def traces(self, flt: TraceFilter) -> tuple[list[dict[str, Any]], bool]:
        """One page of TraceInfo, newest first, and whether an older page exists."""
        where, params = _where(flt)
        with closing(self._connect()) as conn:
            if flt.model is not None:
                where.append(_model_condition(conn, flt.model))
                params.append(flt.model)
            sql = f"SELECT {_TRACE_COLUMNS} FROM traces"
            if where:
                sql += " WHERE " + " AND ".join(where)
            sql += " ORDER BY traces.start_time_ns DESC LIMIT ? OFFSET ?"
            rows = conn.execute(sql, [*params, flt.limit + 1, flt.offset]).fetchall()
        return [trace_info(r) for r in rows[: flt.limit]], len(rows) > flt.limit

    def experiment_names(self) -> list[str]:
        with closing(self._connect()) as conn:
            return [r[0] for r in conn.execute("SELECT name FROM experiments ORDER BY name")]

    def experiments(self) -> list[dict[str, Any]]:
        """Each experiment with its trace count and latest trace, newest activity first.

        Only what `traces_by_experiment` covers: summing tokens or errors here would read every
        trace row (about 90 ms at 100,000 traces); the filtered list shows those instead.
        """
        sql = (
            "SELECT e.name AS name, e.created_at AS created_at, coalesce(t.traces, 0) AS traces,"
            " t.last_ns AS last_ns FROM experiments e LEFT JOIN"
            " (SELECT experiment, count(*) AS traces, max(start_time_ns) AS last_ns"
            "  FROM traces GROUP BY experiment) t ON t.experiment = e.name"
            " ORDER BY t.last_ns DESC NULLS LAST, e.name"
        )
        with closing(self._connect()) as conn:
            rows = [dict(r) for r in conn.execute(sql)]
        return [{**r, "last_time": iso_time(r["last_ns"])} for r in rows]

    def sessions(self, limit: int, offset: int) -> tuple[list[dict[str, Any]], bool]:
        """Sessions, most recently active first, and whether more exist.

        The page is chosen from `traces_by_session` alone; totals are read for its rows only.
        """
        page_sql = (
            "SELECT session, count(*) AS traces, min(start_time_ns) AS first_ns,"
            " max(start_time_ns) AS last_ns FROM traces WHERE session IS NOT NULL"
            " GROUP BY session ORDER BY last_ns DESC LIMIT ? OFFSET ?"
        )
        totals_sql = (
            "SELECT session, sum(status = 'ERROR') AS errors, sum(total_tokens) AS total_tokens,"
            " sum(total_cost) AS total_cost FROM traces WHERE session IN ({}) GROUP BY session"
        )
        with closing(self._connect()) as conn:
            rows = [dict(r) for r in conn.execute(page_sql, [limit + 1, offset])]
            names = [r["session"] for r in rows[:limit]]
            totals = (
                {
                    r["session"]: dict(r)
                    for r in conn.execute(totals_sql.format(", ".join("?" * len(names))), names)
                }
                if names
                else {}
            )
        for r in rows:
            r.update(
                totals.get(r["session"], {}),
                first_time=iso_time(r["first_ns"]),
                last_time=iso_time(r["last_ns"]),
            )
        return rows[:limit], len(rows) > limit

    def model_tables(self, limit: int = 500) -> list[Table]:
        """The rows of `models` and `model_versions`, shown as they are, if those tables exist."""
        tables = []
        with closing(self._connect()) as conn:
            present = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if "models" not in present or not conn.execute("SELECT 1 FROM models").fetchone():
                return []
            for name in ("models", "model_versions"):
                if name in present:
                    cursor = conn.execute(f"SELECT * FROM {name} LIMIT ?", [limit])
                    columns = [d[0] for d in cursor.description]
                    tables.append(Table(name, columns, [tuple(r) for r in cursor]))
        return tables


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: list[str]
    rows: list[tuple[Any, ...]]
