"""How replay finds a recording: method, path, query and the body in canonical form.

Canonical means key order and whitespace never matter: a JSON body is re-serialised with
sorted keys, without the fields the user chose to ignore (`user`, `metadata`, `seed`...);
a multipart/form-data body (file uploads, audio) is its parts in order without the random
boundary the client drew for it; any other body is compared as it came.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

import orjson

from llmtap.recorder.secret_headers import redacted_query

# RFC 2046 section 5.1.1: 1-70 of these characters, the last one not a space
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_MAX_BOUNDARY = 70
MULTIPART_TAG = b"llmtap-multipart/1\n"
"""Opens the canonical form of a multipart body; no JSON text starts like this."""


def parse_body(body: bytes) -> Any:
    """The JSON value of a body, or the body itself when it is not JSON."""
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return body


def canonical_value(value: Any, ignore: Iterable[str] = ()) -> Any:
    if isinstance(value, dict):
        skip = set(ignore)
        return {k: v for k, v in value.items() if k not in skip} if skip else value
    return value


def multipart_parts(body: bytes) -> list[memoryview] | None:
    """The parts of a multipart body (each its headers, blank line and content), or None.

    The request headers are not at hand, so the body must show it is multipart by itself,
    strictly: it opens with `--BOUNDARY` CRLF, every later `CRLF--BOUNDARY` is followed by CRLF
    (next part) or by `--` and then at most a CRLF (the end), and nothing else follows."""
    if not body.startswith(b"--"):
        return None
    line_end = body.find(b"\r\n", 2, 2 + _MAX_BOUNDARY + 2)
    if line_end < 3 or not _BOUNDARY.fullmatch(body, 2, line_end):
        return None
    delimiter = b"\r\n--" + body[2:line_end]
    view = memoryview(body)
    parts: list[memoryview] = []
    start = line_end + 2
    while (found := body.find(delimiter, start)) >= 0:
        parts.append(view[start:found])
        after = found + len(delimiter)
        tail = body[after : after + 5]  # five bytes: enough to see that more would follow
        if tail[:2] == b"\r\n":
            start = after + 2
        else:
            return parts if tail in (b"--", b"--\r\n") else None
    return None


def canonical_multipart(parts: list[memoryview]) -> bytes:
    """The parts, each preceded by its length: no boundary, and no part can pass for two."""
    pieces: list[bytes | memoryview] = [MULTIPART_TAG]
    for part in parts:
        pieces += (b"%d\n" % len(part), part)
    return b"".join(pieces)


def canonical_body(body: bytes, ignore: Iterable[str] = (), parsed: Any = None) -> bytes:
    """Sorted-key JSON of a JSON body without the ignored top-level fields; a multipart body
    without its boundary; else the bytes.

    `parsed`: the body's JSON object or array, when the caller has parsed it already."""
    if body.startswith(b"--"):  # never JSON, so no parse; JSON bodies pay only this comparison
        parts = multipart_parts(body)
        return body if parts is None else canonical_multipart(parts)
    value = parsed if isinstance(parsed, dict | list) else parse_body(body)
    if isinstance(value, bytes):
        return value
    try:
        return orjson.dumps(canonical_value(value, ignore), option=orjson.OPT_SORT_KEYS)
    except TypeError:  # nested deeper than orjson writes: the bytes stand for themselves
        return body


def match_key(
    method: str,
    path: str,
    body: bytes,
    ignore: Iterable[str] = (),
    query: str = "",
    parsed: Any = None,
) -> str:
    digest = hashlib.sha256()
    # (the query as it is kept: a key in it is not, and a recording must still match)
    digest.update(f"{method.upper()} {path}?{redacted_query(query)}\n".encode())
    digest.update(canonical_body(body, ignore, parsed))
    return digest.hexdigest()


def json_diff(recorded: Any, sent: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, as `path: recorded -> sent` lines, shortest first."""
    if isinstance(recorded, dict) and isinstance(sent, dict):
        lines: list[str] = []
        for key in sorted(set(recorded) | set(sent), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in sent:
                lines.append(f"{sub}: {_short(recorded[key])} -> (absent)")
            elif key not in recorded:
                lines.append(f"{sub}: (absent) -> {_short(sent[key])}")
            else:
                lines.extend(json_diff(recorded[key], sent[key], sub))
        return lines
    if isinstance(recorded, list) and isinstance(sent, list):
        lines = []
        for i in range(max(len(recorded), len(sent))):
            sub = f"{path}[{i}]"
            if i >= len(sent):
                lines.append(f"{sub}: {_short(recorded[i])} -> (absent)")
            elif i >= len(recorded):
                lines.append(f"{sub}: (absent) -> {_short(sent[i])}")
            else:
                lines.extend(json_diff(recorded[i], sent[i], sub))
        return lines
    if isinstance(recorded, bytes) and isinstance(sent, bytes):
        return _bytes_diff(recorded, sent, path)
    if recorded == sent and type(recorded) is type(sent):
        return []
    return [f"{path or '(body)'}: {_short(recorded)} -> {_short(sent)}"]


def _bytes_diff(recorded: bytes, sent: bytes, path: str) -> list[str]:
    """Bodies that are not JSON: equal when canonically equal; two multipart bodies are told
    apart part by part (a header line, or the content), never by their boundaries."""
    if canonical_body(recorded) == canonical_body(sent):
        return []
    ours, theirs = multipart_parts(recorded), multipart_parts(sent)
    if ours is None or theirs is None:
        return [f"{path or '(body)'}: {_short(recorded)} -> {_short(sent)}"]
    return json_diff([_described(p) for p in ours], [_described(p) for p in theirs], "parts")


def _described(part: memoryview) -> dict[str, Any]:
    """A multipart part as JSON: its header lines, and its content as text when it is text."""
    data = bytes(part)
    # a part without headers opens with the blank line itself
    head, _, content = (b"", b"", data[2:]) if data[:2] == b"\r\n" else data.partition(b"\r\n\r\n")
    try:
        text: str = content.decode("utf-8")
    except UnicodeDecodeError:  # a file: its size and a digest tell two apart
        text = f"<{len(content)} bytes, sha256 {hashlib.sha256(content).hexdigest()[:12]}>"
    lines = head.decode("utf-8", "replace").split("\r\n") if head else []
    return {"headers": lines, "content": text}


def _short(value: Any, limit: int = 80) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = orjson.dumps(value).decode() if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
