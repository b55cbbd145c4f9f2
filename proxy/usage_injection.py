"""Token usage for every stream, without changing what the client receives.

OpenAI reports usage in a stream only when the request says `stream_options.include_usage`.
When a client streams without it, llmtap asks for it anyway, records the usage, and takes back
out of the client's stream what the client did not ask for: the final usage chunk
(`"choices": []` with `usage`) and the `"usage": null` that every other chunk then carries.
The client receives the events it would have received directly, byte for byte.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any
from urllib.parse import urlsplit

import orjson

from llmtap.recorder.decoding import DECODING_ERRORS, decoder_for
from llmtap.recorder.stream_usage import usage_on_request

_BLANK_LINE = re.compile(rb"(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r)")
"""The line end of an event's last line and the blank line after it, which ends the event,
whatever the line ends: LF, CRLF or a lone CR, mixed too (`\n\r\n`, `\r\r\n`...)."""
_COMPACT_NULL = b',"usage":null'  # how OpenAI writes it: removed without parsing anything
_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null|"usage"\s*:\s*null\s*,?')


USAGE_ALWAYS = ("openrouter.ai",)
"""Hosts (and their subdomains) whose streams carry usage whether asked or not: OpenRouter's
docs call `stream_options.include_usage` deprecated, with no effect. Asked for it there,
llmtap would take out of the client's stream a usage chunk its client gets directly."""


def streams_usage_unasked(upstream: str) -> bool:
    """Whether the upstream sends a stream's usage unasked (`USAGE_ALWAYS`): then llmtap asks
    for nothing and takes nothing out; the usage it records is the one sent anyway."""
    try:
        host = (urlsplit(upstream).hostname or "").rstrip(".")
    except ValueError:  # a URL that does not parse: each request says so (a 502)
        return False
    return any(host == known or host.endswith("." + known) for known in USAGE_ALWAYS)


def injected_body(path: str, body: bytes) -> bytes | None:
    """The body with usage requested, when the client streams without it; else None."""
    if b'"stream"' not in body or not usage_on_request(path):
        return None
    try:
        request: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(request, dict) or request.get("stream") is not True:
        return None
    options = request.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return None
    if options is not None and not isinstance(options, dict):
        return None  # malformed: forward as sent and let the upstream say so
    options = dict(options or {})
    # vLLM's `continuous_usage_stats` puts usage on every chunk once usage is on: without
    # include_usage the client gets none, so the option goes only when llmtap adds usage
    options.pop("continuous_usage_stats", None)
    request["stream_options"] = {**options, "include_usage": True}
    return orjson.dumps(request)


REFUSAL_READ = 64 << 10
"""Bytes of a 400 or 422 answer read to tell a refusal of `stream_options` from any other."""


def refuses_usage(body: bytes, content_encoding: str | None) -> bool:
    """Whether a 400 or 422 answer to a request llmtap asked usage for refuses the option: a
    server that forbids unknown fields (a pydantic 422 naming `stream_options`) or predates
    it. Then the request goes again exactly as sent; any other error is the client's own,
    relayed as it came, and the request is not sent twice."""
    try:
        text = decoder_for(content_encoding).decompress(body, 16 * REFUSAL_READ)
    except DECODING_ERRORS:
        text = body
    # a pydantic 422 echoes the request under `input`: the option llmtap added is in it
    with contextlib.suppress(orjson.JSONDecodeError):
        text = orjson.dumps(_without_inputs(orjson.loads(text)))
    text = text.lower()
    return any(name in text for name in (b"stream_options", b"include_usage", b"stream options"))


def _without_inputs(value: Any, depth: int = 0) -> Any:
    """A JSON error without the `input` members that echo what was sent."""
    if depth > 32:
        return None
    if isinstance(value, dict):
        return {k: _without_inputs(v, depth + 1) for k, v in value.items() if k != "input"}
    if isinstance(value, list):
        return [_without_inputs(v, depth + 1) for v in value]
    return value


class UsageStripper:
    """Removes the usage the client did not ask for from an SSE byte stream.

    `feed(chunk)` returns the bytes of every complete event so far (an event still arriving is
    held until its end, which no client could have parsed anyway); `flush()` returns the rest.
    The event held is kept in pieces and only a piece's own bytes are searched for its end:
    a multi-megabyte event (a partial image, base64) costs its length once, not once a piece.
    """

    __slots__ = ("_held", "_after_cr", "_dropped")

    def __init__(self) -> None:
        self._held: list[bytes] = []  # the event still arriving
        self._after_cr = False  # the last event ended with a CR that ended its piece
        self._dropped = False  # ... and was dropped

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        lead = b""
        if self._after_cr:
            # a LF right after that CR is the rest of its CRLF: it goes where the event went
            self._after_cr = False
            if chunk[:1] == b"\n":
                lead = b"" if self._dropped else b"\n"
                chunk = chunk[1:]
                if not chunk:
                    return lead
        held = self._held
        if held:
            # the bytes before `chunk` that a blank line ending in it may begin with (3 at most)
            before = _last_bytes(held, 3)
            end = _last_event_end(before + chunk, len(before) + len(chunk)) - len(before)
        else:
            end = _last_event_end(chunk, len(chunk))
        if end <= 0:
            held.append(chunk)
            return lead
        if end == len(chunk):  # the usual read: whole events (one a read, when paced)
            if held:
                data = b"".join((*held, chunk))
                self._held = []
            else:
                data = chunk  # (no list made: this is once a read)
            # a CR that ends the read may be the first half of a CRLF (see above)
            self._after_cr = chunk[-1:] == b"\r"
        else:
            data = b"".join((*held, chunk[:end])) if held else chunk[:end]
            self._held = [chunk[end:]]
        out = self._complete(data)
        return lead + out if lead else out

    def flush(self) -> bytes:
        rest = b"".join(self._held)
        self._held = []
        return (strip_event(rest) or b"") if rest else b""

    def _complete(self, data: bytes) -> bytes:
        """`data`, whole events, without the usage the client did not ask for; `_dropped`
        says whether its last event was dropped."""
        self._dropped = False
        if _COMPACT_NULL in data:
            # (split and join: 26 us on a 100-event read where `replace` takes 37)
            data = b"".join(data.split(_COMPACT_NULL))
        first = data.find(b'"usage"')
        if first < 0:
            return data
        # the events before the first usage pass untouched, without a look at each one
        start = _last_event_end(data, first)
        out: list[bytes] = [data[:start]]
        for match in _BLANK_LINE.finditer(data, start):
            event = strip_event(data[start : match.start()])
            self._dropped = event is None
            if event is not None:
                out.append(event + match.group())
            start = match.end()
        if start < len(data):  # line ends that follow the last blank line (empty lines)
            out.append(data[start:])
            self._dropped = False
        return b"".join(out)


def _last_bytes(pieces: list[bytes], n: int) -> bytes:
    """The last `n` bytes of `pieces` (not empty)."""
    last = pieces[-1]
    if len(last) >= n or len(pieces) == 1:
        return last[-n:]
    return b"".join(pieces[-n:])[-n:]


def _last_event_end(data: bytes, before: int) -> int:
    """Where the last event that ends before `before` ends (0: none does), by `rfind` in C
    rather than a Python loop over every event of a 100-event read. Every blank line holds
    `\n\n`, `\n\r` or `\r\r` (see `_BLANK_LINE`); the CR forms are looked for only in
    bytes that hold a CR (a search for one that is absent reads it all)."""
    at = data.rfind(b"\n\n", 0, before)
    end = at + 2 if at >= 0 else 0
    if b"\r" in data:
        for pair in (b"\n\r", b"\r\r"):
            at = data.rfind(pair, 0, before)
            if at >= 0:
                # a LF after the CR is the CRLF that ends the blank line
                end = max(end, at + 3 if data[at + 2 : at + 3] == b"\n" else at + 2)
    return end


def strip_event(event: bytes) -> bytes | None:
    """One SSE event without the usage the client did not ask for; None to drop it whole."""
    if b'"usage"' not in event:
        return event
    lines = event.splitlines()
    data_at = [i for i, line in enumerate(lines) if line.startswith(b"data:")]
    if not data_at:
        return event
    # a client joins an event's data lines with "\n" (pretty-printed JSON spans several)
    payload = b"\n".join(_field_value(lines[i]) for i in data_at)
    try:
        chunk = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return event
    if not isinstance(chunk, dict) or "usage" not in chunk:
        return event
    if chunk["usage"] is None:
        return _without_usage_null(event, lines, data_at, payload, chunk)
    choices = chunk.get("choices")
    if not choices or (isinstance(choices, list) and all(map(_says_nothing, choices))):
        # the usage chunk exists only because llmtap asked for it: OpenAI's has no choices,
        # LiteLLM's a choice with an empty delta (`{"index": 0}` on legacy completions)
        return None
    # usage on a content chunk: OpenAI never does this, however it is asked; the providers
    # that do (Mistral, Together and others put it on their last chunk) do it unasked, so the
    # client would have received it directly too
    return event


_NOTHING = (None, "", [], {})


def _says_nothing(choice: Any) -> bool:
    """A choice with nothing in it but its index: no text, no delta, no finish reason."""
    if not isinstance(choice, dict):
        return False
    for key, value in choice.items():
        if key == "delta" and isinstance(value, dict):
            if any(v not in _NOTHING for v in value.values()):
                return False
        elif key != "index" and value not in _NOTHING:
            return False
    return True


def _field_value(line: bytes) -> bytes:
    value = line[5:]
    return value[1:] if value[:1] == b" " else value


def _without_usage_null(
    event: bytes, lines: list[bytes], data_at: list[int], payload: bytes, chunk: dict[str, Any]
) -> bytes:
    """The event with its `"usage": null` member cut out of the JSON text and every other byte
    as it was; the event unchanged if the cut would not leave the same chunk."""
    cut = _USAGE_NULL.sub(b"", payload, count=1)
    try:
        same = orjson.loads(cut) == {k: v for k, v in chunk.items() if k != "usage"}
    except orjson.JSONDecodeError:
        same = False
    if not same:
        return event
    # the cut takes one run of the text: the data lines before and after it stay as they were
    # (each with its own `data:` or `data: `), the line or two it touched become one
    raw = [lines[i] for i in data_at]
    values = payload.split(b"\n")
    parts = cut.split(b"\n")
    front = 0
    while front < len(parts) and parts[front] == values[front]:
        front += 1
    back = 0
    while back < len(parts) - front and parts[-1 - back] == values[-1 - back]:
        back += 1
    opening = raw[front][: len(raw[front]) - len(values[front])] if front < len(raw) else b"data: "
    touched = [opening + part for part in parts[front : len(parts) - back]]
    data_lines = raw[:front] + touched + raw[len(raw) - back :]
    others = [line for i, line in enumerate(lines) if i not in data_at]
    at = data_at[0]  # the other fields before the first data line stay before it
    return _line_end(event).join(others[:at] + data_lines + others[at:])


def _line_end(event: bytes) -> bytes:
    if b"\r\n" in event:
        return b"\r\n"
    return b"\r" if b"\r" in event else b"\n"
