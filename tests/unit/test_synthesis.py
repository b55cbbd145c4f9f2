"""Answers in the other shape: a synthesized stream reassembles into the answer it came from."""

from __future__ import annotations

import gzip
from typing import Any

import orjson
import pytest

from llmtap.recorder.synthesis import json_from_stream, reshapes, stream_from_json
from tests.integration.test_replay_reshaped import bare

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
    assert reshapes("/responses", True)
    assert not reshapes("/embeddings", True) and not reshapes("/embeddings", False)
    assert stream_from_json("/embeddings", b'{"data": []}', None, False) is None
    assert stream_from_json("/chat/completions", b"not json", None, False) is None


RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 7,
    "model": "gpt-4o-mini",
    "status": "incomplete",
    "incomplete_details": {"reason": "max_output_tokens"},
    "error": None,
    "output": [
        {"id": "rs_1", "type": "reasoning", "summary": [{"type": "summary_text", "text": "hm"}]},
        {
            "id": "fc_1",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_1",
            "name": "f",
            "arguments": '{"x": 1}',
        },
        {
            "id": "msg_1",
            "type": "message",
            "status": "incomplete",
            "role": "assistant",
            "content": [
                {"type": "refusal", "refusal": "no"},
                {"type": "output_text", "text": "partly", "annotations": [], "logprobs": []},
            ],
        },
    ],
    "usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7},
}


def test_a_responses_answer_streams_and_reassembles_into_itself() -> None:
    """Through llmtap's own assembler, and through the SDK's stream state: the same response,
    its ending (incomplete) told by its last event."""
    from openai import NOT_GIVEN
    from openai._models import construct_type
    from openai.lib.streaming.responses._responses import ResponseStreamState
    from openai.types.responses import ResponseStreamEvent

    stream = stream_from_json("/responses", orjson.dumps(RESPONSE), None, False)
    assert stream is not None and b"[DONE]" not in stream
    assert orjson.loads(json_from_stream("/responses", stream, None) or b"null") == RESPONSE
    events = [orjson.loads(e.split(b"data: ", 1)[1]) for e in stream.split(b"\n\n") if e]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"] == RESPONSE
    state = ResponseStreamState(input_tools=NOT_GIVEN, text_format=NOT_GIVEN)
    for event in events:  # (it raises on an item or index it did not see added)
        list(state.handle_event(construct_type(type_=ResponseStreamEvent, value=event)))


def test_a_response_still_running_has_no_stream_to_give() -> None:
    """A background response read before its end (queued, in progress) ends no stream."""
    for status in ("queued", "in_progress"):
        running = orjson.dumps({**RESPONSE, "status": status})
        assert stream_from_json("/responses", running, None, False) is None
    failed = stream_from_json(
        "/responses", orjson.dumps({**RESPONSE, "status": "failed"}), None, False
    )
    assert failed is not None and failed.rstrip().endswith(b"}") and b"response.failed" in failed
