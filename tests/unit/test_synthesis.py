"""Answers in the other shape: a synthesized stream reassembles into the answer it came from."""

from __future__ import annotations

import gzip
from typing import Any

import orjson
import pytest

from llmtap.recorder.synthesis import json_from_stream, reshapes, stream_from_json

CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 7,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "b", "type": "function", "function": {"name": "g", "arguments": "[1]"}},
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "hi", "refusal": None},
            "logprobs": {"content": [{"token": "hi", "logprob": -0.1}], "refusal": None},
            "finish_reason": "stop",
        },
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
LEGACY = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 7,
    "model": "m",
    "choices": [{"text": " said", "index": 0, "logprobs": None, "finish_reason": "length"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


def bare(value: Any, parent: str | None = None) -> Any:
    if isinstance(value, dict):
        return {
            k: bare(v, k)
            for k, v in value.items()
            if v is not None and not (parent == "tool_calls" and k == "index")
        }
    if isinstance(value, list):
        return [bare(v, parent) for v in value]
    return value


def events(stream: bytes) -> list[Any]:
    return [orjson.loads(e[6:]) for e in stream.split(b"\n\n") if e.startswith(b"data: {")]


@pytest.mark.parametrize(
    ("path", "answer"), [("/chat/completions", CHAT), ("/completions", LEGACY)]
)
def test_a_synthesized_stream_reassembles_into_its_answer(path: str, answer: dict) -> None:
    stream = stream_from_json(path, orjson.dumps(answer), None, include_usage=True)
    assert stream is not None and stream.endswith(b"data: [DONE]\n\n")
    back = json_from_stream(path, stream, None)
    assert back is not None and bare(orjson.loads(back)) == bare(answer)
    chunks = events(stream)
    assert all("usage" in c for c in chunks) and chunks[-1]["choices"] == []


def test_usage_only_when_asked_and_tool_calls_by_index() -> None:
    stream = stream_from_json("/chat/completions", orjson.dumps(CHAT), None, include_usage=False)
    assert stream is not None
    chunks = events(stream)
    assert all("usage" not in c for c in chunks)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    deltas = [c["choices"][0]["delta"] for c in chunks]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert [(c["index"], c["id"]) for c in calls] == [(0, "a"), (1, "b")]
    first = chunks[0]["choices"][0]["delta"]
    assert first == {"role": "assistant", "content": None, "refusal": None}


def test_a_compressed_recording_is_read_decoded() -> None:
    body = gzip.compress(orjson.dumps(LEGACY))
    stream = stream_from_json("/completions", body, "gzip", include_usage=False)
    assert stream is not None and b" said" in stream


def test_a_stream_that_did_not_end_is_no_answer() -> None:
    stream = stream_from_json("/chat/completions", orjson.dumps(CHAT), None, False)
    assert stream is not None
    assert json_from_stream("/chat/completions", stream[: -len(b"data: [DONE]\n\n")], None) is None
    broken = b'data: {"error": {"message": "overloaded"}}\n\ndata: [DONE]\n\n'
    assert json_from_stream("/chat/completions", broken, None) is None


def test_which_endpoints_reshape() -> None:
    assert reshapes("/chat/completions", True) and reshapes("/chat/completions", False)
    assert reshapes("/completions", True) and reshapes("/responses", False)
    assert not reshapes("/responses", True)  # a Responses stream is not synthesized
    assert not reshapes("/embeddings", True) and not reshapes("/embeddings", False)
    assert stream_from_json("/embeddings", b'{"data": []}', None, False) is None
    assert stream_from_json("/chat/completions", b"not json", None, False) is None
