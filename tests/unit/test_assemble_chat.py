"""ChatAssembler: equal to the OpenAI SDK's own accumulator, and sane where the SDK is not."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from chunk_factory import (
    CONTENT_FILTER,
    annotation_chunk,
    azure_chunks,
    cut_at_random,
    envelope,
    make_chunks,
    random_chunks,
    sdk_final_completion,
    sse_bytes,
    usage_body,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from llmtap.proxy.simulator_chat import chat_completion
from llmtap.recorder.assemble import ASSEMBLERS, ChatAssembler
from llmtap.recorder.sse import SseDecoder


def assemble(chunks: list[dict[str, Any]]) -> dict[str, Any] | None:
    assembler = ChatAssembler()
    for chunk in chunks:
        assembler.feed(chunk)
    return assembler.result()


def assemble_from_wire(pieces: list[bytes]) -> ChatAssembler:
    decoder, assembler = SseDecoder(), ChatAssembler()
    events = [e for piece in pieces for e in decoder.feed(piece)] + decoder.finish()
    for event in events:
        if event.data != "[DONE]":
            assembler.feed(json.loads(event.data))
    return assembler


@pytest.mark.parametrize(
    "knobs",
    [
        {},
        {"content": "Hi 🎉 日本語", "usage": True},
        {"content": None, "tool_calls": 3},
        {"content": "", "tool_calls": 1, "usage": True},
        {"content": None, "function_call": ("legacy", '{"x": [1, 2]}')},
        {"refusal": "I can't help with that.", "content": ""},
        {"n": 3, "logprobs": True, "usage": True},
        {"logprobs": True, "refusal": "No.", "content": ""},
        {"n": 2, "tool_calls": 2},
        {"finish_reason": "length"},
        {"finish_reason": "content_filter", "usage": True},
    ],
)
def test_equals_the_sdk_accumulator(knobs: dict[str, Any]) -> None:
    chunks = make_chunks(**knobs)
    assert assemble(chunks) == sdk_final_completion(chunks)


def _chunk(choices: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return {**head, **fields, "choices": choices}


WHOLE = {"role": "assistant", "content": "The whole answer."}


@pytest.mark.parametrize(
    "chunks",
    [
        [_chunk([{"index": 0, "delta": WHOLE, "finish_reason": "stop"}])],
        [
            _chunk([{"index": 0, "delta": WHOLE, "finish_reason": "stop"}]),
            _chunk([], usage={"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}),
        ],
        [_chunk([{"index": 0, "delta": WHOLE, "finish_reason": "stop"}], usage=None)],
        [
            _chunk(
                [
                    {"index": 0, "delta": {"content": "a"}, "finish_reason": None},
                    {
                        "index": 1,
                        "delta": {"content": "b", "refusal": None},
                        "finish_reason": "stop",
                    },
                ]
            ),
            _chunk([{"index": 0, "delta": {"content": "c"}, "finish_reason": "stop"}]),
        ],
    ],
    ids=["one chunk", "one chunk and usage", "one chunk, usage null", "n=2, one choice once"],
)
def test_a_choice_sent_in_one_chunk_equals_the_sdk_accumulator(
    chunks: list[dict[str, Any]],
) -> None:
    """A whole answer in one chunk (a cache, a gateway faking a stream, a simple server): the
    SDK keeps the keys its delta had (and `tool_calls`), and no `usage` unless a chunk said it;
    every message field null and `usage: null` were there only in llmtap's (a review)."""
    for fast in (True, False):
        assembler = ChatAssembler(fast=fast)
        for chunk in chunks:
            assembler.feed(chunk)
        assert assembler.result() == sdk_final_completion(chunks), fast


def test_content_stream_gives_the_chat_completion() -> None:
    result = assemble(make_chunks("Hello there!", usage=True))
    assert result is not None
    assert result["object"] == "chat.completion"
    assert result["id"] == "chatcmpl-abc123"
    assert result["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello there!",
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "tool_calls": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert result["usage"] == usage_body()


def test_parallel_tool_calls_merge_by_index() -> None:
    calls = [("get_weather", '{"city": "Paris"}'), ("search", '{"q": "rain"}')]
    result = assemble(make_chunks(None, tool_calls=calls))
    assert result is not None
    tool_calls = result["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in tool_calls] == [
        ("call_0_0", "get_weather", '{"city": "Paris"}'),
        ("call_0_1", "search", '{"q": "rain"}'),
    ]
    assert result["choices"][0]["finish_reason"] == "tool_calls"


def test_logprobs_lists_are_concatenated() -> None:
    result = assemble(make_chunks("abcdefgh", logprobs=True))
    assert result is not None
    tokens = [t["token"] for t in result["choices"][0]["logprobs"]["content"]]
    assert tokens == ["abcd", "efgh"]


def test_empty_stream_gives_none() -> None:
    assert assemble([]) is None
    assert ASSEMBLERS["chat.completions"]().result() is None


# the conformance corpus: random streams, on the wire, cut anywhere


@pytest.mark.parametrize("seed", range(300))
def test_conformance_corpus(seed: int) -> None:
    rng = random.Random(seed)
    chunks = random_chunks(rng)
    line_end = rng.choice(["\n", "\r\n", "\r"])
    wire = sse_bytes(chunks, line_end=line_end)
    assembler = assemble_from_wire(cut_at_random(wire, rng, pieces=rng.randint(1, 40)))
    assert assembler.result() == sdk_final_completion(chunks)
    assert assembler.problems == []


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), data=st.data())
def test_conformance_any_cut(seed: int, data: st.DataObject) -> None:
    chunks = random_chunks(random.Random(seed))
    wire = sse_bytes(chunks)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=30)))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    assert assemble_from_wire(pieces).result() == sdk_final_completion(chunks)


# odd shapes real providers send


def test_usage_on_a_chunk_with_choices_survives_later_chunks() -> None:
    """LiteLLM #36168: the SDK keeps only the last chunk's usage (here null); we keep it."""
    chunks = make_chunks("hi")
    chunks[-2]["usage"] = usage_body()
    chunks[-1]["usage"] = None
    assert assemble(chunks)["usage"] == usage_body()  # type: ignore[index]
    assert sdk_final_completion(chunks)["usage"] is None


def test_usage_on_the_last_chunk_with_choices() -> None:
    chunks = make_chunks("hi")
    chunks[-1]["usage"] = usage_body()
    assert assemble(chunks) == sdk_final_completion(chunks)


# Azure OpenAI: the prompt's filter results first, in a chunk with an empty envelope


@pytest.mark.parametrize(
    "knobs",
    [
        {},
        {"usage": True},
        {"content": None, "tool_calls": 2, "usage": True},
        {"n": 2, "logprobs": True, "usage": True},
        {"refusal": "I can't help with that.", "content": ""},
        {"finish_reason": "content_filter", "usage": True},
    ],
)
def test_azure_stream_equals_the_sdk_accumulator(knobs: dict[str, Any]) -> None:
    chunks = azure_chunks(**knobs)
    assert assemble(chunks) == sdk_final_completion(chunks)


def test_azure_filter_events_are_skipped_as_the_sdks_stream_skips_them() -> None:
    """Azure's asynchronous filter events (`"object": ""`: the prompt's filter results first,
    the completion's after) are no chunks of the answer: `chat.completions.stream()` skips
    them, and so do we. The envelope is the first real chunk's; a choice keeps its first
    chunk's filter results."""
    chunks = azure_chunks("hi", usage=True)
    result = assemble(chunks)
    assert result == sdk_final_completion(chunks)
    assert chunks[0]["object"] == "" and chunks[0]["id"] == ""
    assert result["id"] and result["model"] and result["created"]
    assert result["object"] == "chat.completion"
    assert "prompt_filter_results" not in result and "content_filter_results" not in result
    assert result["choices"][0]["content_filter_results"] == {}  # its role chunk's
    assert result["system_fingerprint"] == "fp_44709d6fcb" and result["usage"] == usage_body()


def test_azure_filter_results_last_leave_the_fingerprint() -> None:
    """A stream may end on a filter event, with a null fingerprint: skipped, it changes
    nothing, in the SDK's stream as here."""
    trailer = annotation_chunk(content_filter_results=CONTENT_FILTER)
    chunks = [*azure_chunks("hi"), trailer]
    assert assemble(chunks) == sdk_final_completion(chunks) == assemble(chunks[:-1])
    assert assemble(chunks)["system_fingerprint"] == "fp_44709d6fcb"


@pytest.mark.parametrize("n", [1, 2])
def test_the_simulators_azure_stream_equals_the_sdk_accumulator(n: int) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "AZURE_ANNOTATIONS"}]}
    stream = chat_completion({**body, "stream": True, "n": n}, 1, 1_700_000_000, None)
    assert not isinstance(stream, dict)
    wire = b"".join(stream.events)
    chunks = [json.loads(e.data) for e in SseDecoder().feed(wire) if e.data != "[DONE]"]
    assert chunks[0]["prompt_filter_results"] and chunks[-2]["content_filter_results"]
    assembler = assemble_from_wire(cut_at_random(wire, random.Random(n), pieces=12))
    assert assembler.result() == sdk_final_completion(chunks)
    assert assembler.problems == []


@pytest.mark.parametrize("seed", range(100))
def test_azure_conformance_corpus(seed: int) -> None:
    rng = random.Random(seed)
    chunks = random_chunks(rng, azure=True)
    wire = sse_bytes(chunks, line_end=rng.choice(["\n", "\r\n", "\r"]))
    assembler = assemble_from_wire(cut_at_random(wire, rng, pieces=rng.randint(1, 40)))
    assert assembler.result() == sdk_final_completion(chunks)
    assert assembler.problems == []


def test_annotation_chunk_mid_stream_changes_nothing() -> None:
    chunks = make_chunks("hi", usage=True)
    chunks.insert(2, annotation_chunk())
    assert assemble(chunks) == assemble(make_chunks("hi", usage=True))


def test_list_content_parts_are_joined() -> None:
    """Databricks sends content as a list of text parts; the SDK drops it, we join it."""
    chunks = make_chunks(None)
    chunks.insert(
        1, envelope([{"index": 0, "delta": {"content": [{"type": "text", "text": "a"}]}}])
    )
    part = {"type": "text", "text": "b"}
    chunks.insert(2, envelope([{"index": 0, "delta": {"content": [part, {"type": "image"}]}}]))
    assembler = ChatAssembler()
    for chunk in chunks:
        assembler.feed(chunk)
    assert assembler.result()["choices"][0]["message"]["content"] == "ab"  # type: ignore[index]
    assert len(assembler.problems) == 1


def test_repeated_role_and_tool_call_id_are_kept_once() -> None:
    """Some providers repeat role, id and name on every delta; the SDK concatenates them."""
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}
    chunks = [
        envelope([{"index": 0, "delta": {"role": "assistant", "tool_calls": [call]}}]),
        envelope(
            [
                {
                    "index": 0,
                    "delta": {
                        "role": "assistant",
                        "tool_calls": [{**call, "function": {"name": "f", "arguments": '{"a"'}}],
                    },
                }
            ]
        ),
        envelope(
            [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{**call, "function": {"name": "f", "arguments": ": 1}"}}]
                    },
                    "finish_reason": "tool_calls",
                }
            ]
        ),
    ]
    message = assemble(chunks)["choices"][0]["message"]  # type: ignore[index]
    assert message["role"] == "assistant"
    assert message["tool_calls"] == [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "f", "arguments": '{"a": 1}'},
        }
    ]


def test_out_of_order_choice_and_tool_indexes() -> None:
    """The SDK places by position and cross-wires (or crashes); we key by index."""
    chunks = [
        envelope([{"index": 1, "delta": {"role": "assistant", "content": "one"}}]),
        envelope(
            [
                {
                    "index": 0,
                    "delta": {
                        "role": "assistant",
                        "tool_calls": [
                            {"index": 2, "id": "b", "function": {"name": "g", "arguments": "{}"}},
                            {"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}},
                        ],
                    },
                }
            ]
        ),
        envelope(
            [{"index": 0, "delta": {"tool_calls": [{"index": 2, "function": {"arguments": "!"}}]}}]
        ),
    ]
    result = assemble(chunks)
    assert [c["index"] for c in result["choices"]] == [0, 1]  # type: ignore[index]
    calls = result["choices"][0]["message"]["tool_calls"]  # type: ignore[index]
    assert [(c["id"], c["function"]["arguments"]) for c in calls] == [("a", "{}"), ("b", "{}!")]


def test_tool_call_delta_without_index_is_kept_and_noted() -> None:
    chunks = make_chunks(None, tool_calls=1)
    chunks.insert(
        -1,
        envelope(
            [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"id": "x", "function": {"name": "h", "arguments": "{}"}}]
                    },
                }
            ]
        ),
    )
    assembler = ChatAssembler()
    for chunk in chunks:
        assembler.feed(chunk)
    assert len(assembler.result()["choices"][0]["message"]["tool_calls"]) == 2  # type: ignore[index]
    assert any("index" in problem for problem in assembler.problems)


def test_calls_numbered_alike_each_whole_in_its_chunk_are_kept_apart() -> None:
    """Gemini's answers through some gateways: every call has index 0, each whole in its own
    chunk with its own id. Merged (the SDK's way), two calls made one with both argument
    texts run together; a fragment that follows (no id, no name) goes to the last of them."""

    def call(**fields: Any) -> dict[str, Any]:
        return envelope([{"index": 0, "delta": {"tool_calls": [{"index": 0, **fields}]}}])

    chunks = [
        envelope([{"index": 0, "delta": {"role": "assistant", "content": None}}]),
        call(id="call_1", type="function", function={"name": "weather", "arguments": '{"c":"P'}),
        call(function={"arguments": 'aris"}'}),
        call(id="call_2", type="function", function={"name": "clock", "arguments": '{"tz":'}),
        call(function={"arguments": '"CET"}'}),
        call(id="call_2", function={"arguments": ""}),  # an id repeated on a fragment: same call
        envelope([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]),
    ]
    assembler = ChatAssembler()
    for chunk in chunks:
        assembler.feed(chunk)
    calls = assembler.result()["choices"][0]["message"]["tool_calls"]  # type: ignore[index]
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("call_1", "weather", '{"c":"Paris"}'),
        ("call_2", "clock", '{"tz":"CET"}'),
    ]
    assert any("kept apart" in problem for problem in assembler.problems)


def test_an_empty_tool_calls_list_ends_as_none_as_the_sdk_has_it() -> None:
    """Groq sends `"tool_calls": []` in every delta of a text answer: the SDK's final
    completion says None, and so does ours."""
    chunks = make_chunks("Just text.")
    for chunk in chunks:
        for choice in chunk["choices"]:
            choice["delta"]["tool_calls"] = []
    result = assemble(chunks)
    expected = sdk_final_completion(chunks)
    assert result["choices"][0]["message"]["tool_calls"] is None  # type: ignore[index]
    assert result["choices"] == expected["choices"]  # type: ignore[index]


def test_missing_identity_fields_are_filled_later() -> None:
    """The SDK leaves out an `id` or `model` the first chunk has no key for; we fill them."""
    chunks = make_chunks("hi")
    del chunks[0]["id"], chunks[0]["model"]
    result = assemble(chunks)
    assert result["id"] == "chatcmpl-abc123"  # type: ignore[index]
    assert result["model"] == "gpt-4o-mini-2024-07-18"  # type: ignore[index]


def test_system_fingerprint_last_non_null_wins() -> None:
    chunks = make_chunks("hi")
    chunks[-1]["system_fingerprint"] = None
    assert assemble(chunks)["system_fingerprint"] == "fp_44709d6fcb"  # type: ignore[index]


def test_feed_does_not_mutate_or_alias_the_chunks() -> None:
    chunks = make_chunks("abc", tool_calls=1, logprobs=True)
    before = json.dumps(chunks)
    result = assemble(chunks)
    assert json.dumps(chunks) == before
    result["choices"][0]["message"]["tool_calls"][0]["id"] = "changed"  # type: ignore[index]
    assert json.dumps(chunks) == before


# junk never raises

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
choice_like = st.fixed_dictionaries(
    {},
    optional={
        "index": st.integers(-2, 3) | json_values,
        "delta": st.dictionaries(
            st.sampled_from(["role", "content", "refusal", "tool_calls", "function_call", "x"]),
            json_values,
        )
        | json_values,
        "logprobs": json_values,
        "finish_reason": json_values,
    },
)
chunk_like = st.fixed_dictionaries(
    {},
    optional={
        "choices": st.lists(choice_like, max_size=3) | json_values,
        "usage": json_values,
        "id": json_values,
        "model": json_values,
        "created": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(chunk_like | json_values, max_size=8))
def test_junk_never_raises(chunks: list[Any]) -> None:
    assembler = ChatAssembler()
    for chunk in chunks:
        assembler.feed(chunk)
    result = assembler.result()
    assert result is None or result["object"] == "chat.completion"
    json.dumps(result)  # still plain JSON


def test_a_role_or_tool_call_type_never_sent_is_null_as_in_the_sdk() -> None:
    """Servers whose deltas never say `role` (llama.cpp-style) or a call's `type` (some
    gateways): the SDK's completion has them null; the span left the keys out."""
    envelope = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    call = {"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}
    rest = {"index": 0, "function": {"arguments": '{"a": 1}'}}
    chunks = [
        {**envelope, "choices": [{"index": 0, "delta": {"content": "Hi"}}]},
        {**envelope, "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]},
        {**envelope, "choices": [{"index": 0, "delta": {"tool_calls": [rest]}}]},
        {**envelope, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    final = assemble(chunks)
    assert final == sdk_final_completion(chunks)
    assert final is not None
    message = final["choices"][0]["message"]
    assert message["role"] is None and message["tool_calls"][0]["type"] is None
