"""How replay finds a recording: method, path, query and the body in canonical form.

Canonical means key order and whitespace never matter: a JSON body is re-serialised with
sorted keys, without the fields the user chose to ignore (`user`, `metadata`, `seed`...);
a body that is not JSON is compared as it came.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson


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


def canonical_body(body: bytes, ignore: Iterable[str] = (), parsed: Any = None) -> bytes:
    """Sorted-key JSON of a JSON body without the ignored top-level fields; else the bytes.

    `parsed`: the body's JSON object or array, when the caller has parsed it already."""
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
    digest.update(f"{method.upper()} {path}?{query}\n".encode())
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
    if recorded == sent and type(recorded) is type(sent):
        return []
    return [f"{path or '(body)'}: {_short(recorded)} -> {_short(sent)}"]


def _short(value: Any, limit: int = 80) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = orjson.dumps(value).decode() if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
