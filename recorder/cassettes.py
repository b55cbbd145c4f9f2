"""Cassettes: recorded exchanges as YAML files that live in git.

One exchange per list item, bodies as literal text blocks (a stream reads as its `data:`
lines), keys in a fixed order, so that a changed prompt is a readable diff. A body is kept
exactly, so a replay from a cassette sends the same bytes; a compressed body is decoded first
(the `content-encoding` header goes with it) and its pieces' sizes are recomputed; so is a
compressed request (replay matches it decoded).

Secrets are scrubbed in both directions at export and again at import, whatever the database
held; `find_secrets()` is the check that fails a CI run when a cassette looks like it holds a key.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import yaml

from llmtap.recorder.body_codec import pack_body, unpack_body
from llmtap.recorder.decoding import (
    DECODED_AT_MOST,
    DecodedTooLarge,
    decode_at_most,
    decoder_for,
    is_identity,
    readable,
)
from llmtap.recorder.matching import content_encoding, decoded_request, match_key
from llmtap.recorder.schema import RESPONSE_BODY
from llmtap.recorder.secret_headers import is_secret_header
from llmtap.recorder.sqlite import connect_for_reading, connect_for_writing

VERSION = 1
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "api-key",
        "x-api-key",
        "cookie",
        "set-cookie",
        "set-cookie2",
        "openai-organization",
        "openai-project",
        "proxy-authorization",
        "x-goog-api-key",
    }
)
# what API keys and tokens look like: OpenAI (sk-, sk-proj-), Anthropic, Google, AWS, GitHub,
# Slack, bearer tokens and JWTs
SECRET_PATTERNS = (
    re.compile(r"\bsk-(?:proj-|ant-|svcacct-)?[A-Za-z0-9_-]{20,}"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    re.compile(r"\bBearer\s+[A-Za-z0-9._~+/-]{16,}"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
)
_COLUMNS = (
    "exchange_id, experiment, method, path, query, match_key, request_headers, request_body, "
    "status, response_headers, {body}, chunks, stream, started_ns, first_byte_ns, "
    "ended_ns, error, key_fingerprint, usage_injected"
)
"""The columns a cassette carries; `{body}`: the body read (`RESPONSE_BODY AS response_body`)
or written (`response_body`)."""


class _Dumper(yaml.SafeDumper):
    """Multi-line text as literal blocks: a body reads as it was sent."""


_OTHER_BREAKS = ("\r", "\x85", "\u2028", "\u2029")
"""What YAML reads as a line break besides LF: in a literal block each comes back as an LF
(a NEL, U+0085, is what cp1252's ellipsis becomes read as Latin-1), so a text holding one is
written quoted, with escapes."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if any(b in value for b in _OTHER_BREAKS) else "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def _dump(value: Any) -> str:
    # width: never fold a long line; default_flow_style=None: header pairs and chunk sizes on
    # one line each, the rest in blocks
    return yaml.dump(
        value,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=1 << 30,
        default_flow_style=None,
    )


def _body(data: bytes) -> dict[str, Any]:
    """`json:` a JSON body as YAML when that gives back the very same bytes (compact JSON, as
    OpenAI streams and SDKs send it); else `body:` the text, or the bytes (YAML's !!binary)."""
    try:
        value = orjson.loads(data)
        if (
            isinstance(value, (dict, list))
            and orjson.dumps(value) == data
            and orjson.dumps(yaml.safe_load(_dump(value))) == data
        ):
            return {"json": value}
    except (orjson.JSONDecodeError, yaml.YAMLError):
        pass
    try:
        return {"body": data.decode("utf-8")}  # (`_text` writes it so that YAML gives it back)
    except UnicodeDecodeError:
        return {"body": data}


def _raw(side: dict[str, Any]) -> bytes:
    if "json" in side:
        return orjson.dumps(side["json"])
    value = side.get("body")
    return value.encode("utf-8") if isinstance(value, str) else value or b""


def _clean(headers: Iterable[list[str] | tuple[str, str]]) -> list[list[str]]:
    return [[k, v] for k, v in headers if not _secret(k, v)]


def _secret(name: Any, value: Any) -> bool:
    """A header that must not be in a cassette: a known name, or one the proxy's rules keep
    out of the database, on either side (`secret_headers`: a database written before a rule
    was added, or a cassette from elsewhere, may still hold it)."""
    name, value = str(name), str(value)
    return name.lower() in SECRET_HEADERS or is_secret_header(name, value)


def _decoded(
    headers: list[list[str]], body: bytes, chunks: list[list[float]]
) -> tuple[list[list[str]], bytes, list[list[float]]]:
    """The body without its content-encoding, and each piece's decoded size; as it is when it
    decodes to more than `DECODED_AT_MOST` (a compression bomb stays compressed)."""
    encoding = content_encoding(headers)
    if is_identity(encoding):
        return headers, body, chunks
    if not chunks:
        plain = decode_at_most(body, encoding, DECODED_AT_MOST)
        if plain is None:
            return headers, body, chunks
        return [h for h in headers if h[0] not in ("content-encoding", "content-length")], plain, []
    decoder = decoder_for(encoding)
    out, sizes, offset, room = [], [], 0, DECODED_AT_MOST
    for size, at_ms in chunks:
        try:
            piece = decoder.decompress(body[offset : offset + int(size)], max(room, 1))
        except DecodedTooLarge:
            return headers, body, chunks
        room -= len(piece)
        offset += int(size)
        out.append(piece)
        sizes.append([len(piece), at_ms])
    tail = decoder.flush()
    if tail:
        out.append(tail)
        sizes.append([len(tail), sizes[-1][1] if sizes else 0.0])
    return [h for h in headers if h[0] != "content-encoding"], b"".join(out), sizes


def _decoded_request(headers: list[list[str]], body: bytes) -> tuple[list[list[str]], bytes]:
    """A compressed request decoded, without its content-encoding; as recorded when it does not
    decode (or is too large decoded: `decoded_request`)."""
    decoded = decoded_request(body, content_encoding(headers))
    if decoded is body:  # (`decoded_request` gives the very bytes it was given back)
        return headers, body
    return [h for h in headers if h[0].lower() != "content-encoding"], decoded


def _entry(row: sqlite3.Row) -> dict[str, Any]:
    response_headers = _clean(orjson.loads(row["response_headers"]))
    chunks = orjson.loads(row["chunks"])
    # replay takes out the usage llmtap asked for only where the client's stream had it taken
    # out: a stream the upstream compressed anyway was decoded on its way when its encoding
    # is one llmtap reads, and reached its client whole otherwise (and leaves here decoded,
    # where replay could no longer tell)
    usage_stripped = bool(row["usage_injected"]) and readable(content_encoding(response_headers))
    response_headers, body, chunks = _decoded(
        response_headers, unpack_body(bytes(row["response_body"])), chunks
    )
    response: dict[str, Any] = {"status": row["status"], "headers": response_headers, **_body(body)}
    request_headers, request_body = _decoded_request(
        _clean(orjson.loads(row["request_headers"])), unpack_body(bytes(row["request_body"]))
    )
    if row["stream"]:
        response["chunks"] = chunks
    return {
        "id": row["exchange_id"],
        "experiment": row["experiment"],
        "started_ns": row["started_ns"],
        "ended_ns": row["ended_ns"],
        "stream": bool(row["stream"]),
        "usage_injected": usage_stripped,
        "request": {
            "method": row["method"],
            "path": row["path"],
            "query": row["query"],
            "headers": request_headers,
            **_body(request_body),
        },
        "response": response,
    }


def exchange_rows(
    db: str | Path,
    experiment: str | None = None,
    ids: Iterable[str] | None = None,
    trace_ids: Iterable[str] | None = None,
    session: str | None = None,
    refused_key: str | None = None,
) -> Iterator[sqlite3.Row]:
    """Replayable exchanges (not llmtap's own failures), oldest first: all, or those of an
    experiment, of some traces, or of the traces of a session (a test fixture made from a
    run that was seen go right or wrong). `refused_key`: the fingerprint of a key whose 401
    answers are left out (the pytest plugin's stand-in key, which the upstream refuses)."""
    columns = _COLUMNS.format(body=f"{RESPONSE_BODY} AS response_body")
    sql = f"SELECT {columns} FROM exchanges WHERE error IS NULL AND status IS NOT NULL"
    params: list[Any] = []
    if refused_key is not None:
        sql += " AND NOT (status = 401 AND key_fingerprint IS ?)"
        params.append(refused_key)
    if experiment is not None:
        sql += " AND experiment = ?"
        params.append(experiment)
    if trace_ids is not None:
        wanted_traces = list(trace_ids)
        sql += f" AND trace_id IN ({','.join('?' * len(wanted_traces)) or 'NULL'})"
        params += wanted_traces
    if session is not None:
        sql += " AND trace_id IN (SELECT trace_id FROM traces WHERE session = ?)"
        params.append(session)
    wanted = set(ids) if ids is not None else None
    with closing(connect_for_reading(db)) as conn:
        for row in conn.execute(sql + " ORDER BY started_ns, rowid", params):
            if wanted is None or row["exchange_id"] in wanted:
                yield row


def dump_cassette(rows: Iterable[sqlite3.Row]) -> str:
    return _dump({"llmtap_cassette": VERSION, "exchanges": [_entry(row) for row in rows]})


def export_cassette(
    db: str | Path,
    path: str | Path,
    experiment: str | None = None,
    skip_empty: bool = False,
    trace_ids: Iterable[str] | None = None,
    session: str | None = None,
    refused_key: str | None = None,
) -> int:
    """Write the database's exchanges (see `exchange_rows`) to a cassette file; returns how
    many."""
    rows = list(
        exchange_rows(db, experiment, trace_ids=trace_ids, session=session, refused_key=refused_key)
    )
    if skip_empty and not rows:
        return 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(dump_cassette(rows), encoding="utf-8")
    return len(rows)


def load_cassette(path: str | Path) -> list[dict[str, Any]]:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or data.get("llmtap_cassette") != VERSION:
        raise ValueError(f"{path} is not an llmtap cassette (version {VERSION})")
    exchanges = data.get("exchanges") or []
    if not isinstance(exchanges, list):
        raise ValueError(f"{path}: exchanges must be a list")
    return exchanges


def import_cassette(path: str | Path, db: str | Path) -> int:
    """Add a cassette's exchanges to the database (again: replaced, not duplicated)."""
    entries = load_cassette(path)
    rows = []
    for e in entries:
        req, resp = e["request"], e["response"]
        body = _raw(req)
        matched = decoded_request(body, content_encoding(req.get("headers") or []))
        rows.append(
            (
                e["id"],
                e.get("experiment") or "Default",
                req["method"],
                req["path"],
                req.get("query") or "",
                match_key(req["method"], req["path"], matched, query=req.get("query") or ""),
                orjson.dumps(_clean(req.get("headers") or [])).decode(),
                pack_body(body),
                resp["status"],
                orjson.dumps(_clean(resp.get("headers") or [])).decode(),
                pack_body(_raw(resp)),
                orjson.dumps(resp.get("chunks") or []).decode(),
                int(bool(e.get("stream"))),
                e["started_ns"],
                None,
                e.get("ended_ns") or e["started_ns"],
                None,
                None,
                int(bool(e.get("usage_injected"))),
            )
        )
    conn = connect_for_writing(db)
    if not rows:
        conn.close()
        return 0
    try:
        with conn:
            conn.execute("BEGIN")
            columns = _COLUMNS.format(body="response_body")
            conn.executemany(
                f"INSERT OR REPLACE INTO exchanges ({columns}) VALUES "
                f"({', '.join('?' * len(rows[0]))})",
                rows,
            )
            conn.executemany(
                "INSERT OR IGNORE INTO experiments (name, created_at) "
                "VALUES (?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                sorted({(r[1],) for r in rows}),
            )
    finally:
        conn.close()
    return len(rows)


def find_secrets(path: str | Path) -> list[str]:
    """What in a cassette looks like a credential (shortened, for a report): key-shaped
    strings anywhere in its text, and secret headers in its exchanges."""
    text = Path(path).read_text(encoding="utf-8")
    found = []
    for pattern in SECRET_PATTERNS:
        for match in pattern.finditer(text):
            secret = match.group()
            found.append(f"{secret[:8]}… (looks like a key)")
    for i, entry in enumerate(load_cassette(path)):
        for side in ("request", "response"):
            for name, value in (entry.get(side) or {}).get("headers") or []:
                if _secret(name, value):
                    found.append(f"exchange {i}: {side} header {name}")
    return found
