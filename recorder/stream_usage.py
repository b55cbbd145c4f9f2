"""Token usage in a stream: which endpoints send it only on request, and who asked for it.

Chat and legacy completions streams carry usage only when the request says
`stream_options.include_usage`. llmtap asks for it on every stream it records and takes it
back out of the client's stream when the client did not ask (`proxy/usage_injection.py`), so
a recording of either request holds the usage: `include_usage` does not change which
recording answers a request, only which of its bytes the client receives.
"""

from __future__ import annotations

from typing import Any

import orjson

from llmtap.recorder.endpoints import operation_path

USAGE_PATHS = frozenset({"/chat/completions", "/completions"})
"""The paths whose streams carry usage only on request."""


def usage_on_request(path: str) -> bool:
    """Whether a stream from this path carries usage only when the request asks for it."""
    return operation_path(path) in USAGE_PATHS


def canonical_stream_options(options: Any, path: str) -> Any:
    """`stream_options` as replay compares them, None when nothing is left: without
    `include_usage: false` (the default) and, where a recording holds the usage whatever was
    asked (`USAGE_PATHS`), without `include_usage` at all."""
    if not isinstance(options, dict):
        return options  # malformed: compared as sent
    asked = options.get("include_usage")
    if asked is False or (asked is True and usage_on_request(path)):
        options = {k: v for k, v in options.items() if k != "include_usage"}
    return options or None  # (an empty object asks for nothing)


def asks_for_usage(path: str, body: bytes) -> bool:
    """Whether a request (its JSON body, decoded) streams from a `USAGE_PATHS` endpoint with
    `stream_options.include_usage` true."""
    if b'"include_usage"' not in body or not usage_on_request(path):
        return False  # (nearly every request: no parse)
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(request, dict) or request.get("stream") is not True:
        return False
    options = request.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True
