"""The SQLite schema, as migrations. docs/schema.md documents every table and column here.

Each migration is applied once, in order, inside a transaction (sqlite-utils `Migrations`);
a database written by an older llmtap moves forward when it is opened for writing.
"""

from __future__ import annotations

import os
import sqlite3

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from llmtap.recorder.model_store import create_tables

migrations = Migrations("llmtap")

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS experiments (
    name TEXT PRIMARY KEY,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    session TEXT,
    status TEXT NOT NULL,
    request_time TEXT NOT NULL,
    start_time_ns INTEGER NOT NULL,
    end_time_ns INTEGER NOT NULL,
    execution_time_ms REAL NOT NULL,
    tags TEXT NOT NULL DEFAULT '{}',
    span_count INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    total_cost REAL
);
CREATE INDEX IF NOT EXISTS traces_by_time ON traces (start_time_ns DESC);
CREATE INDEX IF NOT EXISTS traces_by_experiment ON traces (experiment, start_time_ns DESC);
CREATE INDEX IF NOT EXISTS traces_by_session ON traces (session, start_time_ns DESC);
CREATE TABLE IF NOT EXISTS spans (
    span_id TEXT PRIMARY KEY,
    trace_id TEXT NOT NULL,
    parent_id TEXT,
    name TEXT NOT NULL,
    span_type TEXT NOT NULL,
    model TEXT,
    start_time_ns INTEGER NOT NULL,
    end_time_ns INTEGER NOT NULL,
    status_code TEXT NOT NULL,
    status_message TEXT NOT NULL DEFAULT '',
    inputs TEXT,
    outputs TEXT,
    attributes TEXT NOT NULL DEFAULT '{}',
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    total_cost REAL,
    exchange_id TEXT
);
CREATE INDEX IF NOT EXISTS spans_by_trace ON spans (trace_id, start_time_ns);
CREATE INDEX IF NOT EXISTS spans_by_model ON spans (model, trace_id);
CREATE TABLE IF NOT EXISTS exchanges (
    exchange_id TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    trace_id TEXT,
    span_id TEXT,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT NOT NULL DEFAULT '',
    match_key TEXT NOT NULL,
    request_headers TEXT NOT NULL,
    request_body BLOB NOT NULL,
    status INTEGER,
    response_headers TEXT NOT NULL,
    response_body BLOB NOT NULL,
    chunks TEXT NOT NULL,
    stream INTEGER NOT NULL DEFAULT 0,
    started_ns INTEGER NOT NULL,
    first_byte_ns INTEGER,
    ended_ns INTEGER NOT NULL,
    error TEXT,
    key_fingerprint TEXT,
    usage_injected INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS exchanges_by_key ON exchanges (match_key, started_ns);
CREATE INDEX IF NOT EXISTS exchanges_by_time ON exchanges (started_ns);
"""


@migrations(name="0001_initial")
def initial(db: Database) -> None:
    # one statement at a time: executescript() would COMMIT the migration's transaction
    for statement in SCHEMA_V1.split(";"):
        if statement.strip():
            db.execute(statement)


@migrations(name="0002_models")
def models(db: Database) -> None:
    create_tables(db)  # the registry's SQL lives with its queries, in model_store


@migrations(name="0003_lighter_indexes")
def lighter_indexes(db: Database) -> None:
    """Every index is a page more to write in each transaction (measured: 17.7 -> 14.8 pages
    a lone chat recording, 77 -> 62 us of SQLite a recording in batches of 16):
    - `exchanges_by_key` is read by nothing: replay matches in memory, with keys made from the
      request bodies under the replay's own `ignore` rules;
    - `traces_by_session` holds only traces that have a session (its queries all name one);
    - `spans_by_model` orders a model's spans by time instead of by random trace id, so new
      spans append to it; it still covers `SELECT trace_id ... WHERE model = ?`.
    """
    for statement in (
        "DROP INDEX IF EXISTS exchanges_by_key",
        "DROP INDEX IF EXISTS traces_by_session",
        "CREATE INDEX traces_by_session ON traces (session, start_time_ns DESC)"
        " WHERE session IS NOT NULL",
        "DROP INDEX IF EXISTS spans_by_model",
        "CREATE INDEX spans_by_model ON spans (model, start_time_ns, trace_id)",
    ):
        db.execute(statement)


RESPONSE_BODY = "coalesce(long_response_body, response_body)"
"""An exchange's response body, wherever it is (see 0004): for a reader's SELECT."""


@migrations(name="0004_long_response_body")
def long_response_body(db: Database) -> None:
    """A body too long to hold in memory (a stream past `spool.KEEP_IN_MEMORY`) is written into
    its row a block at a time, into a `zeroblob` of its size. SQLite keeps a zeroblob unexpanded
    only in a row's last column: in `response_body`, in the middle of the row, it took 561 MB
    of memory for a 266 MB body. So such a body goes into this column, last in every row (keep
    it last: add no column after it), and `response_body` is empty; readers take
    `coalesce(long_response_body, response_body)`."""
    db.execute("ALTER TABLE exchanges ADD COLUMN long_response_body BLOB")


@migrations(name="0005_key_salt")
def key_salt(db: Database) -> None:
    """A random salt of this database's own, for the keys' fingerprints (`exchanges.
    key_fingerprint`): a keyed hash, so that nobody holding the file can match a fingerprint
    against a list of known keys, nor link two databases by a key they share."""
    db.execute("CREATE TABLE IF NOT EXISTS llmtap_settings (name TEXT PRIMARY KEY, value BLOB)")
    db.execute(
        "INSERT OR IGNORE INTO llmtap_settings (name, value) VALUES ('key_salt', ?)",
        [os.urandom(16)],
    )


def read_key_salt(conn: sqlite3.Connection) -> bytes:
    """The database's salt for key fingerprints; empty before its migration 0005."""
    try:
        row = conn.execute("SELECT value FROM llmtap_settings WHERE name = 'key_salt'").fetchone()
    except sqlite3.OperationalError:  # no such table: a file an older llmtap wrote, read only
        return b""
    return bytes(row[0]) if row else b""


def migrate(db: Database) -> None:
    migrations.apply(db)
