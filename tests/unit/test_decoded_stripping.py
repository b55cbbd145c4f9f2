"""A compressed stream's unasked usage, taken out piece by piece: decoded, stripped, identity."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from typing import Any

import brotli
import orjson
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from llmtap.proxy.decoded_stripping import (
    DecodedStripper,
    HeadFirst,
    UndecodableStream,
    client_headers,
    stripper_for,
)
from llmtap.proxy.usage_injection import UsageStripper
from llmtap.recorder.decoding import PIECE_AT_MOST


def sse(with_usage: bool, n: int = 6, line_end: bytes = b"\n") -> bytes:
    """An OpenAI chat stream: with usage asked for, `"usage":null` on every chunk and a last
    `choices: []` chunk with the usage."""
    chunks: list[dict[str, object]] = []
    for i in range(n):
        chunk: dict[str, object] = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}],
        }
        if with_usage:
            chunk["usage"] = None
        chunks.append(chunk)
    if with_usage:
        usage = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
        chunks.append({**chunks[0], "choices": [], "usage": usage})
    events = [b"data: " + orjson.dumps(c) for c in chunks] + [b"data: [DONE]"]
    return b"".join(e + line_end * 2 for e in events)


def _zlib(wbits: int) -> Callable[[list[bytes]], bytes]:
    def encode(events: list[bytes]) -> bytes:
        packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
        flushed = [packer.compress(e) + packer.flush(zlib.Z_SYNC_FLUSH) for e in events]
        return b"".join(flushed) + packer.flush()

    return encode


def _brotli(events: list[bytes]) -> bytes:
    packer = brotli.Compressor()
    return b"".join(packer.process(e) + packer.flush() for e in events) + packer.finish()


def _zstd(events: list[bytes]) -> bytes:
    packer = zstandard.ZstdCompressor().compressobj()
    flushed = [packer.compress(e) + packer.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK) for e in events]
    return b"".join(flushed) + packer.flush()


# as a server compressing a stream on the fly writes it: flushed after every event
ENCODERS: dict[str, Callable[[list[bytes]], bytes]] = {
    "gzip": _zlib(31),
    "deflate": _zlib(15),
    "br": _brotli,
    "zstd": _zstd,
}


def compressed(encoding: str, text: bytes) -> bytes:
    end = b"\r\n\r\n" if b"\r\n" in text else b"\n\n"
    events = [e + end for e in text.split(end) if e]
    assert b"".join(events) == text
    return ENCODERS[encoding](events)


def fed(stripper: DecodedStripper, data: bytes, cuts: list[int]) -> bytes:
    bounds = [0, *sorted(cuts), len(data)]
    out = [stripper.feed(data[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    return b"".join(out) + stripper.flush()


def stripped_whole(text: bytes) -> bytes:
    stripper = UsageStripper()
    return stripper.feed(text) + stripper.flush()


@pytest.mark.parametrize("encoding", ENCODERS)
@given(data=st.data())
@settings(max_examples=150, deadline=None)
def test_any_cuts_give_the_stripped_decoded_whole(encoding: str, data: st.DataObject) -> None:
    text = sse(
        True, n=data.draw(st.integers(1, 12)), line_end=data.draw(st.sampled_from([b"\n", b"\r\n"]))
    )
    body = compressed(encoding, text)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=12))
    stripper = stripper_for(encoding)
    assert isinstance(stripper, DecodedStripper)
    assert fed(stripper, body, cuts) == stripped_whole(text)
    assert stripper.decoded


@pytest.mark.parametrize("encoding", ENCODERS)
def test_the_client_gets_the_stream_it_would_have_got_without_usage(encoding: str) -> None:
    stripper = stripper_for(encoding)
    assert isinstance(stripper, DecodedStripper)
    body = compressed(encoding, sse(True))
    assert fed(stripper, body, list(range(7, len(body), 23))) == sse(False)


def test_a_stream_compressed_whole_in_one_go_decodes_too() -> None:
    body = zlib.compress(sse(True), wbits=31)  # one member, no flushes
    stripper = stripper_for(b"gzip")
    assert isinstance(stripper, DecodedStripper)
    assert fed(stripper, body, [3, 40, 41, len(body) - 4]) == sse(False)


def test_no_piece_decodes_to_more_than_the_bound() -> None:
    """A few KB of gzip can be gigabytes: a piece is read decoded only up to the bound."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = packer.compress(sse(True, n=1)) + packer.flush(zlib.Z_SYNC_FLUSH)
    zeros = b"\0" * (1 << 20)
    bomb = b"".join(packer.compress(zeros) for _ in range((PIECE_AT_MOST >> 20) + 1))
    bomb += packer.flush()
    assert len(bomb) < 32 << 10
    stripper = stripper_for("gzip")
    assert isinstance(stripper, DecodedStripper)
    assert stripper.feed(first) == sse(False, n=1)
    with pytest.raises(UndecodableStream, match="decodes to more than"):
        stripper.feed(bomb)


def test_an_event_that_never_ends_is_not_held_past_the_bound() -> None:
    """Pieces each under the bound, of one event that never ends: not held in memory whole."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = b"\0" * (1 << 20)
    stripper = stripper_for("gzip")
    assert isinstance(stripper, DecodedStripper)
    assert stripper.feed(packer.compress(b"data: ") + packer.flush(zlib.Z_SYNC_FLUSH)) == b""
    with pytest.raises(UndecodableStream, match="an event decodes to more than"):
        for _ in range(2 * (PIECE_AT_MOST >> 20)):
            piece = packer.compress(zeros) + packer.flush(zlib.Z_SYNC_FLUSH)
            assert stripper.feed(piece) == b""


@pytest.mark.parametrize("first", [b"not gzip at all", b"\x1f\x8b\x08\x00" + b"\xff" * 40])
def test_a_first_piece_that_does_not_decode_passes_through_as_it_came(first: bytes) -> None:
    stripper = stripper_for("gzip")
    assert isinstance(stripper, DecodedStripper)
    assert stripper.feed(first) == first
    assert not stripper.decoded
    assert stripper.feed(b"more") == b"more" and stripper.flush() == b""
    head = [(b"content-type", b"text/event-stream"), (b"content-encoding", b"gzip")]
    assert client_headers(head, stripper) == head  # relayed as it came, its encoding said


def test_a_bomb_as_the_first_piece_passes_through() -> None:
    bomb = brotli.compress(b"\0" * (PIECE_AT_MOST + 1), quality=5)
    stripper = stripper_for("br")
    assert isinstance(stripper, DecodedStripper)
    assert stripper.feed(bomb) == bomb and not stripper.decoded


def test_a_stream_that_stops_decoding_later_raises() -> None:
    body = compressed("gzip", sse(True))
    stripper = stripper_for("gzip")
    assert isinstance(stripper, DecodedStripper)
    stripper.feed(body[:30])
    with pytest.raises(UndecodableStream):
        stripper.feed(b"\xff" * 64)


@pytest.mark.parametrize(
    ("encoding", "kind"),
    [
        (None, UsageStripper),
        ("", UsageStripper),
        (b"identity", UsageStripper),
        ("gzip", DecodedStripper),
        (b"x-gzip", DecodedStripper),
        ("Deflate", DecodedStripper),
        (b"br", DecodedStripper),
        ("zstd", DecodedStripper),
        ("compress", type(None)),
        ("gzip, br", type(None)),  # stacked: not decoded, relayed as it is
        (b"x-unknown", type(None)),
    ],
)
def test_stripper_for_each_encoding(encoding: str | bytes | None, kind: type) -> None:
    assert type(stripper_for(encoding)) is kind


def test_client_headers() -> None:
    head = [
        (b"content-type", b"text/event-stream"),
        (b"Content-Encoding", b"gzip"),  # (a cassette's names may come in any case)
        (b"content-length", b"123"),
        (b"x-request-id", b"r"),
    ]
    decoded = stripper_for("gzip")
    assert client_headers(head, decoded) == [head[0], head[3]]
    assert client_headers(head, UsageStripper()) == [head[0], head[1], head[3]]
    assert client_headers(head, None) == head


def test_a_decoded_streams_head_goes_out_once_before_its_body_as_the_first_piece_decided() -> None:
    head = [(b"content-type", b"text/event-stream"), (b"content-encoding", b"gzip")]
    start = {"type": "http.response.start", "status": 200, "headers": head}

    async def relay(first: bytes) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        stripper = stripper_for("gzip")
        assert isinstance(stripper, DecodedStripper)
        send_first = HeadFirst(send, start, stripper)
        out = stripper.feed(first)
        await send_first({"type": "http.response.body", "body": out, "more_body": True})
        await send_first({"type": "http.response.body", "body": b"", "more_body": False})
        await send_first.head()  # (gone already: nothing more)
        return sent

    decoded = asyncio.run(relay(compressed("gzip", sse(True))))
    assert [m["type"] for m in decoded] == ["http.response.start"] + ["http.response.body"] * 2
    assert decoded[0]["headers"] == head[:1] and decoded[1]["body"] == sse(False)
    as_it_came = asyncio.run(relay(b"not gzip"))
    assert as_it_came[0]["headers"] == head and as_it_came[1]["body"] == b"not gzip"
