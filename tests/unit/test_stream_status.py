"""A streamed call's status is what its client got: whole (OK) or not (ERROR)."""

from __future__ import annotations

from typing import Any

import pytest
from chunk_factory import chat_stream_recording, make_chunks, sse_bytes

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
