"""`stream_options` in the match key, and whether a request asks for a stream's usage."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from llmtap.recorder.matching import match_key
from llmtap.recorder.stream_usage import asks_for_usage, canonical_stream_options

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def key(path: str, **fields: Any) -> str:
    return match_key("POST", path, orjson.dumps({**CHAT, **fields}))


@pytest.mark.parametrize(
    "path", ["/chat/completions", "/completions", "/deployments/d/completions"]
)
@pytest.mark.parametrize("options", [None, {}, {"include_usage": False}, {"include_usage": True}])
def test_include_usage_is_no_part_of_a_usage_streams_key(
    path: str, options: dict[str, Any] | None
) -> None:
    assert key(path, stream=True, stream_options=options) == key(path, stream=True)


def test_other_stream_options_still_count() -> None:
    path = "/chat/completions"
    obfuscated = key(path, stream=True, stream_options={"include_obfuscation": False})
    assert obfuscated != key(path, stream=True)
    both = {"include_obfuscation": False, "include_usage": True}
    assert key(path, stream=True, stream_options=both) == obfuscated


def test_where_a_recording_may_lack_the_usage_asking_for_it_counts() -> None:
    """Not a path llmtap adds usage to: the recording holds what was asked, no more."""
    path = "/responses"
    assert key(path, stream=True, stream_options={"include_usage": True}) != key(path, stream=True)
    assert key(path, stream=True, stream_options={"include_usage": False}) == key(path, stream=True)


def test_a_malformed_stream_options_is_compared_as_sent() -> None:
    assert canonical_stream_options(False, "/chat/completions") is False
    assert canonical_stream_options("x", "/chat/completions") == "x"
    assert key("/chat/completions", stream=True, stream_options=[]) != key(
        "/chat/completions", stream=True
    )


@pytest.mark.parametrize(
    ("path", "fields", "asks"),
    [
        ("/chat/completions", {"stream": True, "stream_options": {"include_usage": True}}, True),
        ("/completions", {"stream": True, "stream_options": {"include_usage": True}}, True),
        ("/chat/completions", {"stream": True, "stream_options": {"include_usage": False}}, False),
        ("/chat/completions", {"stream": True}, False),
        ("/chat/completions", {"stream_options": {"include_usage": True}}, False),
        ("/responses", {"stream": True, "stream_options": {"include_usage": True}}, False),
    ],
)
def test_asks_for_usage(path: str, fields: dict[str, Any], asks: bool) -> None:
    assert asks_for_usage(path, orjson.dumps({**CHAT, **fields})) is asks


def test_a_body_that_is_not_json_asks_for_nothing() -> None:
    assert not asks_for_usage("/chat/completions", b'{"include_usage": true')
