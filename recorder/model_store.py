"""The model registry in SQLite: tables, the write inside the batch transaction, the reads.

A version number is assigned inside the writer's transaction (`BEGIN IMMEDIATE`), as the
largest so far plus one, so that two processes writing one database (a server and `llmtap
predict`) can never hand out the same number twice. docs/schema.md documents the tables.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

if TYPE_CHECKING:  # at run time sqlite -> model_store must not pull models -> cassettes -> sqlite
    from collections.abc import Callable

    from sqlite_utils import Database

    from llmtap.recorder.models import ModelRecord
    from llmtap.recorder.records import Span, VersionLink

_T = TypeVar("_T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    registered INTEGER NOT NULL,
    experiment TEXT,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS model_versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    model_id TEXT NOT NULL UNIQUE,
    config_hash TEXT NOT NULL,
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '{}',
    prompt_template TEXT,
    signature TEXT,
    input_example TEXT,
    experiment TEXT NOT NULL,
    source_trace_id TEXT,
    created_ns INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL,
    PRIMARY KEY (name, version),
    UNIQUE (name, config_hash)
);
CREATE TABLE IF NOT EXISTS model_version_spans (
    span_id TEXT PRIMARY KEY,
    trace_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    start_time_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS model_version_spans_by_version
    ON model_version_spans (name, version, start_time_ns DESC);
CREATE INDEX IF NOT EXISTS model_version_spans_by_trace ON model_version_spans (trace_id);
"""


def create_tables(db: Database) -> None:
    """The body of migration 0002_models."""
    # one statement at a time: executescript() would COMMIT the migration's transaction
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def record_version(
    conn: sqlite3.Connection, record: ModelRecord, at: int, span: Span | None
) -> int:
    """The version of a call's configuration, created (with its model) on first sight, and
    the call's span linked to it (None: traces are not logged, the version is all there is);
    the caller holds the write transaction. Returns the version number."""
    found = conn.execute(
        "SELECT version FROM model_versions WHERE name = ? AND config_hash = ?",
        (record.name, record.config_hash),
    ).fetchone()
    if found is None:
        version = conn.execute(
            "SELECT coalesce(max(version), 0) + 1 FROM model_versions WHERE name = ?",
            (record.name,),
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO model_versions (name, version, model_id, config_hash, task, model, "
            "params, prompt_template, signature, input_example, experiment, source_trace_id, "
            "created_ns, last_seen_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.name,
                version,
                record.model_id,
                record.config_hash,
                record.task,
                record.model,
                _json(dict(record.params)),
                _json(record.prompt_template),
                _json(record.signature),
                _json(record.input_example),
                record.experiment,
                span.trace_id if span is not None else None,
                at,
                at,
            ),
        )
    else:
        version = found[0]
        # a switch turned on later fills what is missing; the first example stays the example
        conn.execute(
            "UPDATE model_versions SET last_seen_ns = max(last_seen_ns, ?3), "
            "signature = coalesce(signature, ?4), input_example = coalesce(input_example, ?5) "
            "WHERE name = ?1 AND version = ?2",
            (record.name, version, at, _json(record.signature), _json(record.input_example)),
        )
    conn.execute(
        "INSERT INTO models (name, registered, experiment, created_ns, updated_ns) "
        "VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (name) DO UPDATE SET "
        "updated_ns = max(models.updated_ns, excluded.updated_ns)",
        (record.name, int(record.registered), None if record.registered else record.experiment, at),
    )
    if span is not None:
        conn.execute(
            "INSERT OR REPLACE INTO model_version_spans (span_id, trace_id, name, version, "
            "start_time_ns) VALUES (?, ?, ?, ?, ?)",
            (span.span_id, span.trace_id, record.name, version, at),
        )
    return int(version)


def link_version(conn: sqlite3.Connection, link: VersionLink, at: int, span: Span) -> None:
    """A prediction's span as one of its version's traces, and the version and its model
    marked used at `at`, as a recorded call marks them (the version stays as it is otherwise).
    As for a recorded call, only a call the upstream answered with a 2xx ran the version: an
    attempt refused with a 429 or a 5xx (which predict sends again) keeps its trace, unlinked."""
    status = span.attributes.get("http_status")
    if not (isinstance(status, int) and 200 <= status < 300):
        return
    linked = conn.execute(
        "INSERT OR REPLACE INTO model_version_spans (span_id, trace_id, name, version, "
        "start_time_ns) SELECT ?, ?, name, version, ? FROM model_versions "
        "WHERE name = ? AND version = ?",
        (span.span_id, span.trace_id, at, link.name, link.version),
    )
    if linked.rowcount == 0:  # no such version (a client's own llmtap-model-version)
        return
    conn.execute(
        "UPDATE model_versions SET last_seen_ns = max(last_seen_ns, ?) "
        "WHERE name = ? AND version = ?",
        (at, link.name, link.version),
    )
    conn.execute(
        "UPDATE models SET updated_ns = max(updated_ns, ?) WHERE name = ?", (at, link.name)
    )


# --- reading ---------------------------------------------------------------------------------


def _time(ns: int | None) -> str | None:
    if ns is None:
        return None
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _loads(text: str | None) -> Any:
    return orjson.loads(text) if text else None


def model_uri(name: str, version: int) -> str:
    return f"models:/{name}/{version}"


def parse_model_uri(uri: str) -> tuple[str, str]:
    """(name, version) of `models:/NAME/VERSION` (VERSION may be `latest`), or
    (model_id, "") of `models:/m-...`; ValueError otherwise. NAME may hold slashes."""
    if not uri.startswith("models:/"):
        raise ValueError(f"{uri!r} is not a model URI (models:/NAME/VERSION)")
    rest = uri[len("models:/") :].strip("/")
    name, _, version = rest.rpartition("/")
    if name and (version == "latest" or version_number(version) is not None):
        return name, version
    if rest.startswith("m-") and "/" not in rest:
        return rest, ""
    raise ValueError(f"{uri!r} is not a model URI (models:/NAME/VERSION)")


_VERSION_COLUMNS = (
    "v.*, (SELECT count(DISTINCT trace_id) FROM model_version_spans s "
    "WHERE s.name = v.name AND s.version = v.version) AS trace_count"
)


def version_dict(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "name": row["name"],
        "version": row["version"],
        "model_uri": model_uri(row["name"], row["version"]),
        "model_id": row["model_id"],
        "task": row["task"],
        "model": row["model"],
        "params": _loads(row["params"]) or {},
        "prompt_template": _loads(row["prompt_template"]),
        "signature": _loads(row["signature"]),
        "input_example": _loads(row["input_example"]),
        "experiment": row["experiment"],
        "config_hash": row["config_hash"],
        "source_trace_id": row["source_trace_id"],
        "created_time": _time(row["created_ns"]),
        "last_seen_time": _time(row["last_seen_ns"]),
        "trace_count": row["trace_count"],
    }


def version_number(version: int | str) -> int | None:
    """A version as a number: ASCII digits (`"²".isdigit()` is true, `int("²")` raises) within
    SQLite's integers; None for anything else."""
    if isinstance(version, str):
        if not (version.isascii() and version.isdigit()):
            return None
        version = int(version)
    return version if 0 <= version < 1 << 63 else None


class ModelReader:
    """Read-only queries for the API and the CLI; each opens its own connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = path

    def _read(self, work: Callable[[sqlite3.Connection], list[_T]]) -> list[_T]:
        """`work` on a read-only connection of its own; [] when there is nothing to read."""
        from llmtap.recorder.sqlite import connect_for_reading

        try:
            conn = connect_for_reading(self.path)
        except FileNotFoundError:  # nothing recorded yet
            return []
        with closing(conn):
            try:
                return work(conn)
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):  # a database no llmtap with models has written
                    return []
                raise

    def _query(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        return self._read(lambda conn: conn.execute(sql, params).fetchall())

    def list_models(self) -> list[dict[str, Any]]:
        """Every model, most recently used first, each with its versions (newest first)."""
        models = self._query("SELECT * FROM models ORDER BY updated_ns DESC, name")
        versions: dict[str, list[dict[str, Any]]] = {}
        for row in self._query(
            f"SELECT {_VERSION_COLUMNS} FROM model_versions v ORDER BY name, version DESC"
        ):
            versions.setdefault(row["name"], []).append(version_dict(row))
        return [_model_dict(m, versions.get(m["name"], [])) for m in models]

    def get_model(self, name: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM models WHERE name = ?", name)
        if not rows:
            return None
        versions = self._query(
            f"SELECT {_VERSION_COLUMNS} FROM model_versions v WHERE name = ? ORDER BY version DESC",
            name,
        )
        return _model_dict(rows[0], [version_dict(v) for v in versions])

    def get_version(self, name: str, version: int | str) -> dict[str, Any] | None:
        """One version (a number, or `latest`), or a logged model by id when name is `m-...`
        and version is empty."""
        params: list[Any] = [name]
        if version == "" and name.startswith("m-"):
            where = "model_id = ?"
        elif version == "latest":
            where = "name = ? ORDER BY version DESC LIMIT 1"
        else:
            number = version_number(version)
            if number is None:  # "²", or past SQLite's integers: no such version
                return None
            where, params = "name = ? AND version = ?", [name, number]
        rows = self._query(
            f"SELECT {_VERSION_COLUMNS} FROM model_versions v WHERE {where}", *params
        )
        return version_dict(rows[0]) if rows else None

    def traces_of(self, name: str, version: int, limit: int = 100) -> list[dict[str, Any]]:
        """Lineage, version to traces: the latest `limit` traces that ran it, one entry each,
        newest first (by their latest call with it): `request_time` is that call's time, and
        `span_ids` are the trace's calls that ran the version, in order."""
        return self._read(lambda conn: _traces_of(conn, name, version, limit))

    def versions_of_trace(self, trace_id: str) -> list[dict[str, Any]]:
        """Lineage, trace to versions: one entry per linked span of the trace."""
        rows = self._query(_LINKS, trace_id)
        return [{"span_id": r[0], **_link(r)} for r in rows]


def _traces_of(
    conn: sqlite3.Connection, name: str, version: int, limit: int
) -> list[dict[str, Any]]:
    latest: dict[str, int] = {}  # trace_id -> the start of its latest call with the version
    # the version's calls newest first (its index), read up to the `limit`th trace: a version
    # used a million times is not grouped whole
    for trace_id, at in conn.execute(
        "SELECT trace_id, start_time_ns FROM model_version_spans "
        "WHERE name = ? AND version = ? ORDER BY start_time_ns DESC",
        (name, version),
    ):
        if len(latest) >= limit:
            break
        latest.setdefault(trace_id, at)
    span_ids: dict[str, list[str]] = {trace_id: [] for trace_id in latest}
    if latest:
        for trace_id, span_id in conn.execute(
            "SELECT trace_id, span_id FROM model_version_spans WHERE name = ? AND version = ? "
            f"AND trace_id IN ({', '.join('?' * len(latest))}) ORDER BY start_time_ns, span_id",
            (name, version, *latest),
        ):
            span_ids[trace_id].append(span_id)
    return [
        {"trace_id": t, "request_time": _time(at), "span_ids": span_ids[t]}
        for t, at in latest.items()
    ]


_LINKS = (
    "SELECT s.span_id, s.name, s.version, v.model_id FROM model_version_spans s "
    "JOIN model_versions v ON v.name = s.name AND v.version = s.version "
    "WHERE s.trace_id = ? ORDER BY s.start_time_ns"
)


def _link(row: Any) -> dict[str, Any]:
    return {
        "name": row[1],
        "version": row[2],
        "model_id": row[3],
        "model_uri": model_uri(row[1], row[2]),
    }


def model_links(conn: sqlite3.Connection, trace_id: str) -> dict[str, dict[str, Any]]:
    """span_id -> the model version it ran, for the spans of one trace (on the caller's
    connection); empty for a database that has no registry tables yet."""
    try:
        return {r[0]: _link(r) for r in conn.execute(_LINKS, [trace_id])}
    except sqlite3.OperationalError:
        return {}


def _model_dict(row: sqlite3.Row, versions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": row["name"],
        "registered": bool(row["registered"]),
        "experiment": row["experiment"],
        "created_time": _time(row["created_ns"]),
        "updated_time": _time(row["updated_ns"]),
        "latest_version": versions[0]["version"] if versions else None,
        "versions": versions,
    }
