"""The key replay finds a recording by: method, path and the body in canonical form.

Canonical means key order and whitespace never matter: a JSON body is re-serialised with
sorted keys; a body that is not JSON is hashed as it came.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson


def canonical_body(body: bytes, ignore: Iterable[str] = ()) -> bytes:
    """Sorted-key JSON of a JSON body without the ignored top-level fields; else the bytes."""
    if not body:
        return b""
    try:
        value: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if isinstance(value, dict):
        for name in ignore:
            value.pop(name, None)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def match_key(method: str, path: str, body: bytes, ignore: Iterable[str] = ()) -> str:
    digest = hashlib.sha256()
    digest.update(method.upper().encode())
    digest.update(b" ")
    digest.update(path.encode())
    digest.update(b"\n")
    digest.update(canonical_body(body, ignore))
    return digest.hexdigest()
