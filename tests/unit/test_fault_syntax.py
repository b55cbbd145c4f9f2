"""The `llmtap-fault` syntax (proxy/faults.py) and where a stream is cut (proxy/stream_cut.py),
without sockets: the ASGI server's side is a list of what was sent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmtap.proxy.faults import ArmedFaults, Fault, parse_fault
from llmtap.proxy.stream_cut import StreamCut
from llmtap.recorder.recording import Recording
from llmtap.recorder.records import RequestContext


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("429", Fault("429", status=429, retry_after="1")),
        ("429; retry-after=0.2", Fault("429", status=429, retry_after="0.2")),
        ("503", Fault("503", status=503)),
        ("500;retry-after=3", Fault("500", status=500, retry_after="3")),
        ("disconnect", Fault("disconnect")),
        ("timeout=5", Fault("timeout", seconds=5.0)),
        ("timeout=0.25", Fault("timeout", seconds=0.25)),
        ("stream-error", Fault("stream-error", events=1)),
        (" Stream-Cut = 3 ", Fault("stream-cut", events=3)),
        ("stream-error=0", Fault("stream-error", events=0)),
    ],
)
def test_the_syntax(value: str, expected: Fault) -> None:
    assert parse_fault(value) == expected
    assert parse_fault(str(expected)) == expected  # its header form reads back the same


@pytest.mark.parametrize(
    "value",
    ["", "teapot", "200", "600", "timeout", "timeout=x", "timeout=-1", "disconnect=1",
     "stream-cut=-1", "stream-error=1.5", "500; retry=1", "disconnect; retry-after=1"],
)  # fmt: skip
def test_anything_else_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="llmtap-fault"):
        parse_fault(value)


def test_armed_faults_go_in_order_and_a_header_leaves_them() -> None:
    armed = ArmedFaults()
    armed.arm(parse_fault("429"), times=2)
    armed.arm(parse_fault("500"))
    assert armed.take("disconnect") == Fault("disconnect")
    assert [armed.take(None) for _ in range(4)] == [
        parse_fault("429"),
        parse_fault("429"),
        parse_fault("500"),
        None,
    ]
    with pytest.raises(ValueError):
        armed.arm(parse_fault("429"), times=0)


def cut(kind: str, pieces: list[bytes], headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """What the client gets of a stream sent in `pieces` through a StreamCut."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        rec = Recording("POST", "/chat/completions", "", [], b"", RequestContext())
        stream = StreamCut(parse_fault(kind), send, None, None, rec)
        start = headers or [(b"content-type", b"text/event-stream")]
        await stream.send({"type": "http.response.start", "status": 200, "headers": start})
        for i, piece in enumerate(pieces):
            more = i < len(pieces) - 1
            await stream.send({"type": "http.response.body", "body": piece, "more_body": more})

    asyncio.run(run())
    assert sent[-1]["more_body"] is False
    return b"".join(m.get("body", b"") for m in sent[1:])


EVENTS = [b"data: 1\r\n\r\n", b"data: 2\n\n", b"data: 3\r\r", b"data: [DONE]\n\n"]


def test_events_are_counted_however_they_are_cut_into_pieces() -> None:
    whole = b"".join(EVENTS)
    for size in (1, 2, 3, 7, len(whole)):
        pieces = [whole[i : i + size] for i in range(0, len(whole), size)]
        got = cut("stream-error=2", pieces)
        assert got.startswith(EVENTS[0] + EVENTS[1] + b'data: {"error":'), size
        assert got.endswith(b"}}\n\n") and got.count(b"data:") == 3, size


def test_the_cut_comes_before_done_whatever_n_says() -> None:
    got = cut("stream-error=10", EVENTS)
    assert got.startswith(b"".join(EVENTS[:3]) + b'data: {"error":') and b"[DONE]" not in got


def test_no_events_at_all() -> None:
    assert cut("stream-error=0", EVENTS).startswith(b'data: {"error":')


def test_a_body_that_is_no_stream_passes_untouched() -> None:
    body = [b'{"error": {"message": "bad"}}']
    assert cut("stream-error", body, [(b"content-type", b"application/json")]) == body[0]
