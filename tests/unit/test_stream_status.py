"""A streamed call's status is what its client got: whole (OK) or not (ERROR)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from chunk_factory import (
    chat_stream_recording,
    make_chunks,
    response_events,
    response_object,
    sse_bytes,
    usage_body,
)

from llmtap.recorder.recording import Recording
from llmtap.recorder.records import RequestContext
from llmtap.recorder.tracing import build_batch


def streamed(wire: bytes, cut_into: int = 7) -> dict[str, Any]:
    """The span of a chat stream that arrived as `wire` and ended cleanly (no reset)."""
    rec = chat_stream_recording()
    step = max(1, len(wire) // cut_into)
    for at in range(0, len(wire), step):
        rec.feed(wire[at : at + step])
    span = build_batch(rec.finish()).spans[-1]
    return {"code": span.status.code, "message": span.status.message, "outputs": span.outputs}


@pytest.mark.parametrize("done", [True, False])
@pytest.mark.parametrize("n", [1, 3])
def test_a_stream_whose_every_choice_finished_is_whole_with_or_without_done(
    done: bool, n: int
) -> None:
    span = streamed(sse_bytes(make_chunks("All of it.", n=n, usage=True), done=done))
    assert span["code"] == "OK", span["message"]
    assert [c["message"]["content"] for c in span["outputs"]["choices"]] == ["All of it."] * n


def test_a_stream_cut_before_its_finish_is_an_error_with_what_had_arrived() -> None:
    chunks = make_chunks("Cut short here.", n=2)
    unfinished = [c for c in chunks if not c["choices"][0].get("finish_reason")]
    assert len(unfinished) < len(chunks)
    one_finished = chunks[: len(chunks) // 2 + 1]  # the first choice whole, the second not
    for wire in (sse_bytes(unfinished, done=False), sse_bytes(one_finished, done=False)):
        span = streamed(wire)
        assert span["code"] == "ERROR" and "ended before its final event" in span["message"]
        assert span["outputs"]["choices"][0]["message"]["content"]


@pytest.mark.parametrize("bad", [b"data: {not json\n\n", b"data: 42\n\n", b"data: [1, 2]\n\n"])
def test_an_event_the_sdk_cannot_parse_makes_the_call_an_error(bad: bytes) -> None:
    events = [e + b"\n\n" for e in sse_bytes(make_chunks("Fine text.")).split(b"\n\n") if e]
    wire = b"".join([*events[:2], bad, *events[2:]])
    span = streamed(wire)
    assert span["code"] == "ERROR"
    assert "is not JSON" in span["message"] or "is not a JSON object" in span["message"]
    assert span["outputs"]["choices"][0]["message"]["content"] == "Fine text."


def test_an_error_set_on_a_chunk_with_choices_makes_the_call_an_error() -> None:
    """OpenRouter and other gateways end a failed answer with a chunk that has both choices
    and an `error`: the SDK raises at any event whose error is set (before: OK)."""
    chunks = make_chunks("Half an ans")
    broken = {**chunks[1], "error": {"message": "Provider returned error", "code": 502}}
    broken["choices"] = [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]
    span = streamed(sse_bytes([chunks[0], broken]))
    assert span["code"] == "ERROR" and "Provider returned error" in span["message"]


def test_an_error_member_that_is_null_hides_nothing() -> None:
    """`"error": null` on the usage chunk is no error, and its usage counts (before: the chunk
    was skipped as an error event, and the call had no usage)."""
    chunks = make_chunks("All fine.", usage=True)
    chunks = [{**c, "error": None} for c in chunks]
    span = streamed(sse_bytes(chunks))
    assert span["code"] == "OK", span["message"]
    assert span["outputs"]["usage"] == chunks[-1]["usage"]


def test_usage_only_in_groqs_x_groq_is_recorded() -> None:
    """Groq's last chunk carries `x_groq.usage`; when no usage chunk follows (the client or the
    model did not ask for one), that is the call's usage."""
    chunks = make_chunks("Fast tokens.")
    chunks[-1] = {**chunks[-1], "x_groq": {"id": "req_1", "usage": usage_body(5, 7)}}
    rec = chat_stream_recording()
    rec.feed(sse_bytes(chunks))
    span = build_batch(rec.finish()).spans[-1]
    assert span.attributes["usage"] == {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}
    assert span.outputs["usage"] is None  # as the SDK's accumulator has it: no `usage` chunk


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning", "audio"])
def test_time_to_first_token_counts_reasoning_and_audio(field: str) -> None:
    """A reasoning model's first tokens are its reasoning (as Responses streams count them); an
    audio answer's are its audio (before: no time to first token at all for audio)."""
    value: Any = {"id": "audio_1", "data": "AAAA"} if field == "audio" else "Let me think."
    chunks = make_chunks("")
    first = {**chunks[0], "choices": [{"index": 0, "delta": {field: value}}]}
    rec = chat_stream_recording()
    rec.feed(sse_bytes([first]))
    time.sleep(0.02)
    rec.feed(sse_bytes(chunks[1:]))
    span = build_batch(rec.finish()).spans[-1]
    ttft = span.attributes["time_to_first_token_ms"]
    assert ttft < (span.end_time_ns - span.start_time_ns) / 1e6 - 15


@pytest.mark.parametrize("streamed_call", [True, False])
def test_a_failed_response_is_an_error(streamed_call: bool) -> None:
    """A Responses stream that ends in `response.failed` (or a response whose status says
    failed) is an ERROR with the response's error (before: OK)."""
    error = {"code": "server_error", "message": "The model failed to answer"}
    failed = response_object("failed", [], error=error)
    rec = Recording(
        "POST", "/responses", "", [], b'{"model": "m", "input": "hi"}', RequestContext()
    )
    if streamed_call:
        rec.respond(200, [("content-type", "text/event-stream")])
        events, _ = response_events("Hel", terminal=False)
        events.append({"type": "response.failed", "response": failed})
        rec.feed(b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events))
    else:
        rec.respond(200, [("content-type", "application/json")])
        rec.feed(orjson.dumps(failed))
    span = build_batch(rec.finish()).spans[-1]
    assert span.status.code == "ERROR" and "failed to answer" in span.status.message
    assert span.outputs["status"] == "failed"


IMAGE = {"id": "ig_1", "type": "image_generation_call", "status": "completed", "result": "aGk="}
CLICK = {
    "id": "cu_1",
    "type": "computer_call",
    "call_id": "call_1",
    "status": "completed",
    "action": {"type": "click", "button": "left", "x": 10, "y": 20},
    "pending_safety_checks": [],
}


@pytest.mark.parametrize(
    ("item", "output"),
    [
        # an image's first output is a partial image, not a delta (a server that sends no
        # `output_item.added` before it: the partial image alone counts)
        (
            IMAGE,
            [
                {
                    "type": "response.image_generation_call.partial_image",
                    "output_index": 0,
                    "item_id": "ig_1",
                    "partial_image_index": 0,
                    "partial_image_b64": "aGk=",
                },
            ],
        ),
        # a computer call comes whole: added, then done, no delta at all
        (CLICK, [{"type": "response.output_item.added", "output_index": 0, "item": CLICK}]),
    ],
    ids=["image", "computer-call"],
)
def test_time_to_first_token_of_responses_output_without_deltas(
    item: dict[str, Any], output: list[dict[str, Any]]
) -> None:
    """Before, only `.delta` events counted: these streams had no time to first token."""
    rec = Recording(
        "POST", "/responses", "", [], b'{"model": "m", "input": "hi"}', RequestContext()
    )
    rec.respond(200, [("content-type", "text/event-stream")])
    opening = response_object("in_progress", [])
    rec.feed(sse_bytes([{"type": "response.created", "response": opening}], done=False))
    time.sleep(0.03)
    done = {"type": "response.output_item.done", "output_index": 0, "item": item}
    final = {"type": "response.completed", "response": response_object("completed", [item])}
    rec.feed(sse_bytes([*output, done, final], done=False))
    span = build_batch(rec.finish()).spans[-1]
    assert span.status.code == "OK", span.status.message
    assert span.attributes["time_to_first_token_ms"] >= 25


@pytest.mark.parametrize("broke", [None, "upstream broke mid-response: connection reset"])
def test_an_event_cut_off_at_the_end_is_not_what_failed(broke: str | None) -> None:
    """The rest of an event that a break (or the server's close) cut off is no event an SDK
    dispatches: the break is what happened (before: "the upstream sent an event is not JSON:
    '{"id":...' (upstream broke mid-response: ...)"), or the stream's missing end."""
    events = [e + b"\n\n" for e in sse_bytes(make_chunks("Cut in the middle")).split(b"\n\n") if e]
    wire = b"".join(events[:2]) + events[2][: len(events[2]) // 2]
    rec = chat_stream_recording()
    for at in range(0, len(wire), 50):
        rec.feed(wire[at : at + 50])
    rec = rec.fail(broke) if broke else rec.finish()
    span = build_batch(rec).spans[-1]
    assert span.status.code == "ERROR"
    if broke:
        assert span.status.message == broke
    else:
        assert span.status.message == "the stream ended before its final event"
    assert span.outputs["choices"][0]["message"]["content"]


@pytest.mark.parametrize("named", [False, True])
def test_the_output_stops_at_an_error_event(named: bool) -> None:
    """The SDK raises at an error event and its client reads no further: the output is what it
    had, as the SDK's accumulator holds it there (before: the text an upstream sent after the
    error was in the output, with its finish reason)."""
    events = [e + b"\n\n" for e in sse_bytes(make_chunks("Said before.")).split(b"\n\n") if e]
    error = b'{"error": {"message": "oops", "type": "server_error"}}'
    bad = (b"event: error\ndata: " if named else b"data: ") + error + b"\n\n"
    after = [e + b"\n\n" for e in sse_bytes(make_chunks(" Never read.")).split(b"\n\n") if e]
    half = len(events) // 2
    span = streamed(b"".join([*events[:half], bad, *after[1:]]))
    assert span["code"] == "ERROR" and "oops" in span["message"]
    choice = span["outputs"]["choices"][0]
    said = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in make_chunks("Said before.")[:half]
    )
    assert choice["message"]["content"] == said and "Never" not in said
    assert choice["finish_reason"] is None


def test_a_responses_error_event_leaves_the_rest_of_the_stream_in_the_output() -> None:
    """A Responses `error` event has no `error` member: the Python SDK passes it on and reads
    on, so what follows stays the output (a review found it wiped: `failed`, no output, no
    usage), while the span still says the call met an error."""
    rec = Recording(
        "POST", "/responses", "", [], b'{"model": "m", "input": "hi"}', RequestContext()
    )
    rec.respond(200, [("content-type", "text/event-stream")])
    events, final = response_events("Hi")
    error = {"type": "error", "code": "server_error", "message": "transient", "param": None}
    wire = [b"data: " + orjson.dumps(e) + b"\n\n" for e in events]
    wire.insert(2, b"event: error\ndata: " + orjson.dumps(error) + b"\n\n")
    rec.feed(b"".join(wire))
    span = build_batch(rec.finish()).spans[-1]
    assert span.status.code == "ERROR" and "transient" in span.status.message
    assert span.outputs["status"] == "completed"
    assert span.outputs["output"] == final["output"]


def test_an_error_chunk_with_choices_is_not_in_the_output() -> None:
    """OpenRouter ends a failed answer with a chunk holding both `choices` and `error`: the SDK
    raises before its caller has that chunk, so its text is not the output."""
    chunks = make_chunks("A")
    broken = {**chunks[1], "error": {"message": "Provider returned error", "code": 502}}
    broken["choices"] = [{"index": 0, "delta": {"content": "X"}, "finish_reason": "error"}]
    span = streamed(sse_bytes([*chunks[:-1], broken]))
    assert span["code"] == "ERROR" and "Provider returned error" in span["message"]
    assert span["outputs"]["choices"][0]["message"]["content"] == "A"


@pytest.mark.parametrize("cut_into", [1, 7, 400])
def test_nothing_after_done_is_in_the_output_or_the_usage(cut_into: int) -> None:
    """The SDKs stop reading at `[DONE]`: what a gateway sends after it (more text, a usage
    chunk, a second stream end to end) reached no client, and was in the output, the usage and
    the trace's token totals (a review found "Hi AFTER DONE" recorded for "Hi")."""
    first = sse_bytes(make_chunks("Hi"))
    after = sse_bytes(make_chunks(" AFTER DONE", usage=True))
    span = streamed(first + after, cut_into)
    assert span["code"] == "OK"
    assert span["outputs"]["choices"][0]["message"]["content"] == "Hi"
    assert span["outputs"]["usage"] is None
