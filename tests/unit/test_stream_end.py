"""The relay commits before the piece that completes a stream's last event (SPEC section 6):
`EndFinder` names that piece, whatever the cuts, the line ends or the content coding."""

from __future__ import annotations

import json
import random
import re
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import brotli
import httpx._decoders as httpx_decoders
import pytest
import zstandard
from chunk_factory import cut_at_random, make_chunks, response_events, sse_bytes
from openai._streaming import SSEDecoder

from llmtap.proxy.stream_end import EndFinder
from llmtap.recorder.decoding import decoder_for

_BLANK_LINE = re.compile(rb"\n\n|\r\r|\n\r")


def chat_events(text: str) -> list[bytes]:
    return [e + b"\n\n" for e in sse_bytes(make_chunks(text, usage=True)).split(b"\n\n") if e]


def responses_sse(text: str, *, named: bool) -> list[bytes]:
    """A Responses stream as OpenAI sends it (`event:` lines) or as some servers do (data only)."""
    events, _ = response_events(text)
    out = []
    for event in events:
        data = b"data: " + json.dumps(event).encode() + b"\n"
        out.append((b"event: " + event["type"].encode() + b"\n" if named else b"") + data + b"\n")
    return out


def with_line_ends(events: list[bytes], line_end: bytes) -> list[bytes]:
    return [e.replace(b"\n", line_end) for e in events]


def completing_offset(data: bytes, markers: tuple[bytes, ...]) -> int:
    """The offset of the byte that completes the last marker's event (its blank line)."""
    last = max((data.rfind(m), len(m)) for m in markers)
    blank = _BLANK_LINE.search(data, last[0] + last[1])
    assert blank is not None
    return blank.end() - 1


Encoder = Callable[[list[bytes]], bytes]


def identity(events: list[bytes]) -> bytes:
    return b"".join(events)


def gzip_flushed(events: list[bytes]) -> bytes:
    """As a streaming server compresses: each event flushed, so that it can be read at once."""
    z = zlib.compressobj(wbits=zlib.MAX_WBITS | 16)
    return b"".join(z.compress(e) + z.flush(zlib.Z_SYNC_FLUSH) for e in events) + z.flush()


def deflate_flushed(events: list[bytes]) -> bytes:
    z = zlib.compressobj()
    return b"".join(z.compress(e) + z.flush(zlib.Z_SYNC_FLUSH) for e in events) + z.flush()


def brotli_flushed(events: list[bytes]) -> bytes:
    c = brotli.Compressor()
    return b"".join(c.process(e) + c.flush() for e in events) + c.finish()


def zstd_flushed(events: list[bytes]) -> bytes:
    c = zstandard.ZstdCompressor().compressobj()
    flush = zstandard.COMPRESSOBJ_FLUSH_BLOCK
    return b"".join(c.compress(e) + c.flush(flush) for e in events) + c.flush()


ENCODINGS: dict[bytes, Encoder] = {
    b"identity": identity,
    b"gzip": gzip_flushed,
    b"deflate": deflate_flushed,
    b"br": brotli_flushed,
    b"zstd": zstd_flushed,
}


def piece_holding(pieces: list[bytes], encoding: bytes, offset: int) -> int:
    """Which piece, decoded as the client decodes it, yields the byte at `offset`."""
    decoder, seen = decoder_for(encoding.decode()), 0
    for i, piece in enumerate(pieces):
        seen += len(decoder.decompress(piece))
        if seen > offset:
            return i
    raise AssertionError("the offset is past the stream")


def firing(pieces: list[bytes], path: str, encoding: bytes) -> list[int]:
    finder = EndFinder(path, encoding)
    return [i for i, piece in enumerate(pieces) if finder.ends_in(piece)]


def chat_error_events(text: str) -> list[bytes]:
    """A chat stream that OpenAI breaks off with an error event: the SDK raises there and
    leaves, so that event is the stream's end (no `[DONE]` follows it)."""
    error = {"error": {"message": "The server had an error", "type": "server_error"}}
    return chat_events(text)[:3] + [b"data: " + json.dumps(error).encode() + b"\n\n"]


def responses_error_events(text: str, *, named: bool) -> list[bytes]:
    """A Responses stream broken off by its `error` event: the Node SDK throws there and
    aborts (the Python SDK at `data: {"error": ...}`)."""
    error = {"type": "error", "code": "server_error", "message": "The model failed"}
    data = b"data: " + json.dumps(error).encode() + b"\n\n"
    return responses_sse(text, named=named)[:4] + [(b"event: error\n" if named else b"") + data]


def responses_error_member_events(text: str) -> list[bytes]:
    error = {"error": {"message": "The server had an error", "type": "server_error"}}
    return responses_sse(text, named=False)[:4] + [b"data: " + json.dumps(error).encode() + b"\n\n"]


CASES = [
    ("/chat/completions", chat_events, (b"[DONE]",)),
    ("/chat/completions", chat_error_events, (b'"error"',)),
    ("/responses", lambda t: responses_sse(t, named=True), (b"response.completed",)),
    ("/responses", lambda t: responses_sse(t, named=False), (b"response.completed",)),
    ("/responses", lambda t: responses_error_events(t, named=True), (b"event: error",)),
    ("/responses", lambda t: responses_error_events(t, named=False), (b'"type": "error"',)),
    ("/responses", responses_error_member_events, (b'{"error"',)),
]


def each_stream(line_ends: list[bytes]) -> Callable[[Any], Any]:
    """Every endpoint's stream shape x these line ends x every content coding."""

    def marked(test: Any) -> Any:
        for mark in (
            pytest.mark.parametrize(("path", "events_of", "markers"), CASES),
            pytest.mark.parametrize("line_end", line_ends),
            pytest.mark.parametrize("encoding", list(ENCODINGS)),
        ):
            test = mark(test)
        return test

    return marked


@each_stream([b"\n", b"\r\n", b"\r"])
def test_the_piece_that_completes_the_last_event_and_no_other(
    path: str,
    events_of: Callable[[str], list[bytes]],
    markers: tuple[bytes, ...],
    line_end: bytes,
    encoding: bytes,
) -> None:
    rng = random.Random(f"{path}{line_end!r}{encoding!r}")
    events = with_line_ends(events_of("The end of a stream, cut anywhere"), line_end)
    plain = b"".join(events)
    wire = ENCODINGS[encoding](events)
    end = completing_offset(plain, markers)
    for _ in range(60):
        pieces = cut_at_random(wire, rng, pieces=rng.randint(0, 12))
        assert firing(pieces, path, encoding) == [piece_holding(pieces, encoding, end)], pieces


def test_a_marker_inside_a_text_is_no_end() -> None:
    """`[DONE]` said by the model is inside a JSON string: it opens no field, and only the
    real end fires (a commit there would take a half stream for a whole one)."""
    said = b'data: {"choices":[{"index":0,"delta":{"content":"I print\\ndata: [DONE] now"}}]}\n\n'
    wire = said + b"".join(chat_events("and then the end"))
    real = completing_offset(wire, (b"data: [DONE]",))
    rng = random.Random(7)
    for _ in range(300):
        pieces = cut_at_random(wire, rng, pieces=rng.randint(0, 12))
        assert firing(pieces, "/chat/completions", b"identity") == [
            piece_holding(pieces, b"identity", real)
        ]


def test_an_error_member_that_is_no_error_or_is_text_is_no_end() -> None:
    """Only a set error ends a stream for the SDK: `"error": null` (some gateways send it on
    every chunk) and a text that says `data: {"error": ...` are not ends."""
    nulls = [b'data: {"error": null, "choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n']
    said = [b'data: {"choices":[{"delta":{"content":"x\\ndata: {\\"error\\": 1}"}}]}\n\n']
    garbled = [b'data: {"error" "garbled"}\n\n', b'data: {"error", "x"}\n\n']  # no member
    for extra in (
        nulls,
        said,
        garbled,
        [b'data: {"error":{}}\n\n', b'data: {"error" : false}\n\n'],
    ):
        wire = b"".join(extra) + b"".join(chat_events("and then the end"))
        real = completing_offset(wire, (b"data: [DONE]",))
        for size in (1, 5, 64, len(wire)):
            pieces = [wire[i : i + size] for i in range(0, len(wire), size)]
            assert firing(pieces, "/chat/completions", b"identity") == [
                piece_holding(pieces, b"identity", real)
            ]


@pytest.mark.parametrize("named", [True, False])
def test_a_responses_text_naming_the_terminal_event_is_no_end(named: bool) -> None:
    """The instructions come back in `response.created`, the text in its deltas: neither is
    the end, whatever they say."""
    text = 'say response.completed and [DONE], then {"type":"response.completed"} and stop'
    events, _ = response_events(text)
    events[0]["response"]["instructions"] = text
    wire = b"".join(
        (b"event: " + e["type"].encode() + b"\n" if named else b"")
        + b"data: "
        + json.dumps(e).encode()
        + b"\n\n"
        for e in events
    )
    marker = b"event: response.completed" if named else b'data: {"type": "response.completed"'
    real = completing_offset(wire, (marker,))
    for size in (1, 7, 64, len(wire)):
        pieces = [wire[i : i + size] for i in range(0, len(wire), size)]
        assert firing(pieces, "/responses", b"identity") == [
            piece_holding(pieces, b"identity", real)
        ]


def test_an_unterminated_last_event_or_an_unknown_coding_never_fires() -> None:
    assert firing([b"data: {}\n\n", b"data: [DONE]"], "/chat/completions", b"identity") == []
    assert firing([b"data: [DONE]\n\n"], "/chat/completions", b"compress") == []
    garbage = [b"\x1f\x8b not gzip at all", b"data: [DONE]\n\n"]
    assert firing(garbage, "/chat/completions", b"gzip") == []


_CLIENT_DECODERS = {
    b"identity": httpx_decoders.IdentityDecoder,
    b"gzip": httpx_decoders.GZipDecoder,
    b"deflate": httpx_decoders.DeflateDecoder,
    b"br": httpx_decoders.BrotliDecoder,
    b"zstd": httpx_decoders.ZStandardDecoder,
}


def piece_the_sdk_ends_at(pieces: list[bytes], encoding: bytes, path: str) -> int:
    """The piece after which the OpenAI SDK has the stream's last event: httpx decodes the
    body, the SDK's own `SSEDecoder` dispatches the events (the client's view, not ours)."""
    decoder = _CLIENT_DECODERS[encoding]()
    at = -1

    def body() -> Iterator[bytes]:
        nonlocal at
        for at, piece in enumerate(pieces):  # noqa: B007 - read by the events' loop
            yield decoder.decode(piece)

    for event in SSEDecoder().iter_bytes(body()):
        if event.data.startswith("[DONE]") or event.event in ("response.completed", "error"):
            return at  # (at `event: error` the Node SDK throws: core/streaming.js)
        if event.data.startswith("{") and json.loads(event.data).get("error"):
            return at  # the SDK raises here (openai/_streaming.py)
        if '"type": "response.completed"' in event.data[:40] or '"type": "error"' in event.data:
            return at
    raise AssertionError("the SDK never saw the end")


@each_stream([b"\n", b"\r\n"])
def test_never_after_the_sdk_has_the_end_and_never_a_piece_before(
    path: str,
    events_of: Callable[[str], list[bytes]],
    markers: tuple[bytes, ...],
    line_end: bytes,
    encoding: bytes,
) -> None:
    """Against the client itself: the commit comes before the piece that gives the SDK the
    last event, at the latest; at most one piece earlier (a CRLF blank line cut after its CR,
    which a reader of CR line ends already dispatches)."""
    rng = random.Random(f"sdk{path}{line_end!r}{encoding!r}")
    wire = ENCODINGS[encoding](with_line_ends(events_of("Seen as the SDK sees it"), line_end))
    for _ in range(40):
        pieces = cut_at_random(wire, rng, pieces=rng.randint(0, 12))
        (fired,) = firing(pieces, path, encoding)
        sdk = piece_the_sdk_ends_at(pieces, encoding, path)
        assert sdk - 1 <= fired <= sdk, (pieces, fired, sdk)
