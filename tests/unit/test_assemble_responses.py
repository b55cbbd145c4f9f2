"""ResponsesAssembler: the terminal response when it came, the best rebuild when it did not."""

from __future__ import annotations

import copy
import json
import warnings
from typing import Any

import pytest
from chunk_factory import RESPONSE_ITEM_KINDS, response_events, response_item_stream
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._models import construct_type
from openai._types import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from llmtap.recorder.assemble import ASSEMBLERS, ResponsesAssembler


def assemble(events: list[dict[str, Any]]) -> ResponsesAssembler:
    assembler = ResponsesAssembler()
    for event in events:
        assembler.feed(event)
    return assembler


def sdk_final_response(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The SDK's `get_final_response()`, without what its parser adds (`parsed...`)."""
    state: Any = ResponseStreamState(input_tools=omit, text_format=omit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for event in events:
            state.handle_event(construct_type(type_=ResponseStreamEvent, value=event))
        dumped: dict[str, Any] = state._completed_response.to_dict(mode="json", warnings=False)
    for item in dumped["output"]:
        item.pop("parsed_arguments", None)
        for part in item.get("content") or []:
            part.pop("parsed", None)
    return dumped


def test_terminal_response_is_the_result() -> None:
    events, final = response_events(call=("get_weather", '{"city": "Paris"}'))
    assert assemble(events).result() == final
    assert assemble(events).result() == sdk_final_response(events)
    assert assemble(events).problems == []


def test_terminal_without_output_takes_the_done_items() -> None:
    """As the SDK does when `response.completed` carries no output."""
    events, final = response_events(call=("f", "{}"))
    events[-1]["response"] = {**final, "output": None}
    assert assemble(events).result() == final
    assert assemble(events).result() == sdk_final_response(events)


def test_failed_and_incomplete_terminals() -> None:
    for kind, status in [("response.failed", "failed"), ("response.incomplete", "incomplete")]:
        events, final = response_events(terminal=False)
        body = {**final, "status": status}
        assert assemble([*events, {"type": kind, "response": body}]).result() == body


def test_missing_terminal_rebuilds_from_done_items() -> None:
    events, final = response_events(call=("f", '{"a": 1}'), terminal=False)
    result = assemble(events).result()
    assert result is not None
    assert result["status"] == "incomplete"
    assert result["id"] == "resp_123"
    assert result["output"] == final["output"]


def test_missing_terminal_rebuilds_partial_items_from_deltas() -> None:
    events, _ = response_events("Hello world", call=("lookup", '{"user": 42}'), terminal=False)
    cut = [e for e in events if e["type"] != "response.output_item.done"]
    cut = [e for e in cut if not e["type"].endswith((".done",))][:-2]  # stop mid-arguments
    result = assemble(cut).result()
    assert result is not None
    message, call = result["output"]
    assert message["content"][0]["text"] == "Hello world"
    assert message["status"] == "in_progress"
    assert call["type"] == "function_call"
    assert '{"user": 42}'.startswith(call["arguments"]) and call["arguments"]


def test_error_event_marks_the_rebuild_failed() -> None:
    events, _ = response_events(terminal=False)
    error = {"type": "error", "code": "server_error", "message": "boom", "param": None}
    result = assemble([*events[:5], error]).result()
    assert result is not None
    assert result["status"] == "failed"
    assert result["error"] == {"code": "server_error", "message": "boom", "param": None}


def test_function_call_arguments_from_deltas_match_done() -> None:
    events, final = response_events(call=("get_weather", '{"city": "Zürich", "days": 3}'))
    without_done = [
        e
        for e in events
        if e["type"] not in ("response.output_item.done", "response.function_call_arguments.done")
    ]
    rebuilt = assemble(without_done[:-1]).result()
    assert rebuilt["output"][1]["arguments"] == final["output"][1]["arguments"]  # type: ignore[index]


def test_empty_stream_gives_none() -> None:
    assert ResponsesAssembler().result() is None
    assert ASSEMBLERS["responses"]().result() is None


def test_does_not_mutate_the_events() -> None:
    events, _ = response_events(call=("f", "{}"), terminal=False)
    before = copy.deepcopy(events)
    assemble(events).result()
    assert events == before


def test_delta_before_its_item_is_noted() -> None:
    event = {
        "type": "response.output_text.delta",
        "output_index": 3,
        "content_index": 0,
        "delta": "x",
    }
    assembler = assemble([event])
    assert assembler.result() is None
    assert assembler.problems


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 3) | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            [
                "response.created",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.function_call_arguments.delta",
                "response.custom_tool_call_input.delta",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_part.done",
                "response.output_text.annotation.added",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
                "error",
                "other",
            ]
        )
        | json_values
    },
    optional={
        "output_index": json_values,
        "content_index": json_values,
        "summary_index": json_values,
        "annotation_index": json_values,
        "annotation": json_values,
        "logprobs": json_values,
        "delta": json_values,
        "item": json_values,
        "part": json_values,
        "response": json_values,
        "text": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.lists(event_like | json_values, max_size=10))
def test_junk_never_raises(events: list[Any]) -> None:
    result = assemble(events).result()
    json.dumps(result)


@pytest.mark.parametrize("kind", RESPONSE_ITEM_KINDS)
def test_a_cut_stream_keeps_what_every_kind_of_delta_said(kind: str) -> None:
    """Cut before any `.done`: the item is what its deltas built, whatever their kind (custom
    tool input, code interpreter code, MCP arguments, reasoning summary and text, a text's
    annotations and logprobs); the `.done` events alone build it the same way."""
    events, final = response_item_stream(kind)
    expected = {**final["output"][0], "status": "in_progress"}
    if kind == "reasoning":
        del expected["status"]  # a reasoning item has no status
    deltas_only = [e for e in events if not e["type"].endswith((".done", ".completed"))]
    assert assemble(deltas_only).result()["output"] == [expected]  # type: ignore[index]
    before_item_done = events[:-2]
    assert assemble(before_item_done).result()["output"] == [expected]  # type: ignore[index]


@pytest.mark.parametrize("kind", RESPONSE_ITEM_KINDS)
def test_a_complete_stream_of_every_kind_is_its_final_response(kind: str) -> None:
    events, final = response_item_stream(kind)
    assert assemble(events).result() == final == sdk_final_response(events)
