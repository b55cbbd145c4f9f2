"""How replay finds a recording: method, path, query and the body in canonical form.

Canonical means key order, whitespace and the way a client writes the same request never
matter: a JSON body is re-serialised with sorted keys, whole floats as integers, without the
fields the user chose to ignore (`user`, `metadata`, `seed`...) and without the fields that are
null or hold their default; a multipart/form-data body (file uploads, audio) is its parts by
name without the random boundary the client drew for it or their content types; any other body
is compared as it came. A compressed request (Content-Encoding) is compared decoded: gzip's
header holds the time it was made, so the same JSON never compresses to the same bytes twice.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import orjson

from llmtap.recorder.decoding import DECODED_AT_MOST, decode_at_most, is_identity
from llmtap.recorder.secret_headers import redacted_query
from llmtap.recorder.stream_usage import canonical_stream_options

# RFC 2046 section 5.1.1: 1-70 of these characters, the last one not a space
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_MAX_BOUNDARY = 70
MULTIPART_TAG = b"llmtap-multipart/1\n"
"""Opens the canonical form of a multipart body; no JSON text starts like this."""


def content_encoding(headers: Iterable[Sequence[str]]) -> str | None:
    """The Content-Encoding of a request's or an answer's headers (as stored: name-value pairs,
    names in any case, as a cassette from elsewhere may have them), or None."""
    for name, value in headers:
        if name.lower() == "content-encoding":
            return value
    return None


def decoded_request(body: bytes, coding: str | None) -> bytes:
    """The request as the upstream reads it, what replay matches and a span shows: `body`
    itself when it is not compressed, does not decode, or decodes to more than
    `DECODED_AT_MOST` (then the bytes as sent stand for themselves)."""
    if is_identity(coding):
        return body
    try:
        decoded = decode_at_most(body, coding, DECODED_AT_MOST)
    except Exception:  # the upstream gets it as sent and will say what is wrong with it
        return body
    return body if decoded is None else decoded


def parse_body(body: bytes) -> Any:
    """The JSON value of a body, or the body itself when it is not JSON."""
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return body


# A request field set to what the API takes when it is left out: the same request either way.
# (SDKs and frameworks differ: LangChain sends `n: 1` and `stream: false`, the Node SDK leaves
# them out.) Only defaults that hold for every model; not temperature or top_p.
_DEFAULTS: dict[str, Any] = {
    "stream": False,
    "n": 1,
    "logprobs": False,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "parallel_tool_calls": True,
}


def canonical_value(
    value: Any, ignore: Iterable[str] = (), whole_floats: bool = True, path: str = ""
) -> Any:
    """A body's JSON value as replay compares it: without the ignored top-level fields, the
    fields that are null or hold their default (a null field is an absent one to the API), and
    with every whole float an integer (`0.0` and `0` are one JSON number, and JavaScript can
    only send `0`: a recording made from Python must answer a Node client). `whole_floats`
    False: the caller knows the body has none. `path`: the request's API path, which says
    whether `stream_options.include_usage` matters (`canonical_stream_options`)."""
    if isinstance(value, dict):
        skip = set(ignore)
        if value.get("stream") is not True:
            skip.add("stream_options")  # read only for streams
        value = {
            k: v
            for k, v in value.items()
            if k not in skip and v is not None and not _is_default(k, v)
        }
        if "stream_options" in value:
            options = canonical_stream_options(value.pop("stream_options"), path)
            if options is not None:
                value["stream_options"] = options
    return _whole_floats_as_ints(value) if whole_floats else value


def _is_default(key: str, value: Any) -> bool:
    if key not in _DEFAULTS:
        return False
    default = _DEFAULTS[key]
    if isinstance(default, bool) or isinstance(value, bool):
        return value is default  # (True == 1 in Python: `n: true` is no default)
    return isinstance(value, int | float) and value == default


def _whole_floats_as_ints(value: Any) -> Any:
    if type(value) is float:
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, dict):
        return {k: _whole_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_floats_as_ints(v) for v in value]
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


_DISPOSITION = re.compile(rb"^content-disposition:(.*)$", re.IGNORECASE | re.MULTILINE)
_PARAM = re.compile(rb';\s*(name|filename)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))', re.IGNORECASE)


def canonical_multipart(parts: list[memoryview]) -> bytes:
    """The parts in the order of their names, each as its name, file name and content,
    preceded by its length: no boundary, and no part can pass for two. The order of the parts
    and a file's Content-Type are the client's (httpx sends `purpose` before `file`, Node's
    fetch after it; one says `audio/x-wav` where the other says `application/octet-stream`):
    the same upload from either SDK matches."""
    named = sorted((_canonical_part(part) for part in parts), key=lambda p: p[0])
    pieces: list[bytes] = [MULTIPART_TAG]
    for _, part in named:
        pieces += (b"%d\n" % len(part), part)
    return b"".join(pieces)


def _canonical_part(part: memoryview) -> tuple[bytes, bytes]:
    """(name, `name=...;filename=...` LF content) of one part; a part without a readable
    Content-Disposition stands for itself (and sorts first)."""
    raw = bytes(part)
    head, sep, content = raw.partition(b"\r\n\r\n")
    found = _DISPOSITION.search(head) if sep else None
    if found is None:
        return b"", raw
    params = {m[1].lower(): m[2] or m[3] for m in _PARAM.finditer(found[1])}
    name = params.get(b"name", b"")
    return name, b"name=%s;filename=%s\n%s" % (name, params.get(b"filename", b""), content)


def canonical_body(
    body: bytes, ignore: Iterable[str] = (), parsed: Any = None, path: str = ""
) -> bytes:
    """Sorted-key JSON of a JSON body in its canonical form (`canonical_value`); a multipart
    body without its boundary; else the bytes.

    `parsed`: the body's JSON object or array, when the caller has parsed it already."""
    if body.startswith(b"--"):  # never JSON, so no parse; JSON bodies pay only this comparison
        parts = multipart_parts(body)
        return body if parts is None else canonical_multipart(parts)
    value = parsed if isinstance(parsed, dict | list) else parse_body(body)
    if isinstance(value, bytes):
        return value
    try:
        # (a whole float is written `1.0` by every JSON writer that writes one at all)
        canonical = canonical_value(value, ignore, b".0" in body, path)
        return orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # nested deeper than orjson writes: the bytes stand for themselves
        return body


def canonical_query(query: str) -> str:
    """A query string as replay compares it: as it is kept (a key in it is not, and a recording
    must still match: `redacted_query`), decoded, and its parameters in the order of their
    names (repeated ones in their own order). The SDKs write one query differently: Python's
    `after=x&limit=2` and `a+b`, Node's `limit=2&after=x` and `a%20b`."""
    if not query:
        return query
    pairs = parse_qsl(redacted_query(query), keep_blank_values=True)
    return urlencode(sorted(pairs, key=lambda pair: pair[0]), quote_via=quote)


def match_key(
    method: str,
    path: str,
    body: bytes,
    ignore: Iterable[str] = (),
    query: str = "",
    parsed: Any = None,
) -> str:
    """The key replay finds a recording by; `body` as `decoded_request` gives it. The one
    function for both sides: the key stored with a recording and the key a replayed request
    is looked up by."""
    digest = hashlib.sha256()
    digest.update(f"{method.upper()} {path}?{canonical_query(query)}\n".encode())
    digest.update(canonical_body(body, ignore, parsed, path))
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
