"""A compressed stream loses the usage its client did not ask for too: decoded on the way.

llmtap adds `include_usage` to a stream that lacks it and asks for `accept-encoding: identity`,
to take the usage out again. An upstream that compresses anyway (found by a black-box review:
gzip despite identity) gave the client an extra `choices: []` chunk, on which the common
`chunk.choices[0]` loop raises, and `"usage": null` on every chunk. Replay did the same with a
recording made compressed (its client asked for usage and accepted gzip, as the SDK does) for
a client that does not ask. Now such a stream is decoded piece by piece, stripped, and sent
uncompressed; the recording keeps the bytes as the upstream sent them.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import brotli
import httpx
import orjson
import pytest
import zstandard
from openai import OpenAI

from llmtap.recorder.body_codec import unpack_body
from tests.conftest import TEST_KEY, Proxy
from tests.integration.test_proxy_sdk import only_trace
from tests.raw_upstream import Received, raw_upstream

StartProxy = Callable[..., Proxy]
NOWHERE = "http://127.0.0.1:9/v1"  # replay must never call it
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def sse_events(asks_usage: bool) -> list[bytes]:
    """An OpenAI chat stream, as OpenAI writes it: with usage asked for, `"usage":null` on
    every chunk and a last chunk with `choices: []` and the usage."""
    deltas = [
        {"role": "assistant", "content": ""},
        *({"content": t} for t in ("Hel", "lo", " world")),
    ]
    choices = [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None} for d in deltas]
    choices.append({"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"})
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000}
    chunks: list[dict[str, Any]] = [
        {**head, "model": "m", "choices": [choice], **({"usage": None} if asks_usage else {})}
        for choice in choices
    ]
    if asks_usage:
        chunks.append({**chunks[0], "choices": [], "usage": USAGE})
    return [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]


def compress_events(encoding: str, events: list[bytes]) -> list[bytes]:
    """The events compressed as a server does on the fly: flushed after each one."""
    if encoding in ("gzip", "deflate"):
        packer = zlib.compressobj(6, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
        pieces = [packer.compress(e) + packer.flush(zlib.Z_SYNC_FLUSH) for e in events]
        return [*pieces, packer.flush()]
    if encoding == "br":
        packer = brotli.Compressor()
        return [*(packer.process(e) + packer.flush() for e in events), packer.finish()]
    packer = zstandard.ZstdCompressor().compressobj()
    flush = zstandard.COMPRESSOBJ_FLUSH_BLOCK
    return [*(packer.compress(e) + packer.flush(flush) for e in events), packer.flush()]


def chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"


def asks_usage(request: Received) -> bool:
    options = orjson.loads(request.body).get("stream_options") or {}
    return options.get("include_usage") is True


def sse_upstream(encoding: str, always: bool) -> Callable[[Received], bytes]:
    """An upstream streaming in `encoding`: `always`, whatever the request accepts (the
    defect's case); otherwise when the request's Accept-Encoding names it (OpenAI's way)."""

    def answer(request: Received) -> bytes:
        events = sse_events(asks_usage(request))
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        head += b"transfer-encoding: chunked\r\nx-request-id: req-1\r\n"
        if always or encoding in (request.header("accept-encoding") or ""):
            head += b"content-encoding: %s\r\n" % encoding.encode()
            events = compress_events(encoding, events)
        return head + b"\r\n" + chunked(events)

    return answer


@dataclass
class Wire:
    """A streamed answer as it came over the wire."""

    headers: httpx.Headers
    content: bytes
    """The bytes as sent, not decoded."""

    def decoded(self) -> bytes:
        """What a client's HTTP library reads (httpx decodes all four encodings)."""
        return httpx.Response(200, headers=self.headers, content=self.content).read()


def raw_stream(base_url: str, body: dict[str, Any], **headers: str) -> Wire:
    with httpx.stream(
        "POST", f"{base_url}/chat/completions", json=body, headers=headers
    ) as response:
        return Wire(response.headers, b"".join(response.iter_raw()))


def sdk_chunks(base_url: str, **extra: Any) -> list[dict[str, Any]]:
    """The chunks the real SDK yields for the stream, each read the way most code reads it."""
    with OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0) as client:
        chunks = []
        for chunk in client.chat.completions.create(**CHAT, stream=True, **extra):
            if "stream_options" not in extra:  # (what a `choices: []` chunk breaks)
                assert chunk.choices[0].delta is not None
            chunks.append(chunk.model_dump(exclude_unset=True))
    return chunks


def spans(proxy: Proxy) -> list[dict[str, Any]]:
    proxy.flush()
    traces = httpx.get(f"{proxy.url}/api/traces").json()["traces"]
    return [
        span
        for info in traces
        for span in httpx.get(f"{proxy.url}/api/traces/{info['trace_id']}").json()["spans"]
    ]


def assert_gets_the_direct_stream(through: str, direct: str, encoding: str = "gzip") -> None:
    """A client that does not ask for usage gets through llmtap what it gets directly."""
    body = {**CHAT, "stream": True}
    response = raw_stream(through, body)
    assert b'"usage"' not in response.decoded()  # no `choices: []` chunk, no `"usage":null`
    assert response.decoded() == raw_stream(direct, body).decoded()
    assert response.decoded() == b"".join(sse_events(False))
    assert "content-encoding" not in response.headers  # sent decoded
    assert "content-length" not in response.headers
    assert response.content == response.decoded()
    through_sdk = sdk_chunks(through)
    assert len(through_sdk) == 5
    if encoding != "zstd":  # (the SDK's HTTP client reads no zstd: the bytes are compared above)
        assert through_sdk == sdk_chunks(direct)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_a_stream_compressed_despite_identity_reaches_its_client_as_direct(
    start_proxy: StartProxy, encoding: str
) -> None:
    with raw_upstream(sse_upstream(encoding, always=True)) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        assert_gets_the_direct_stream(proxy.base_url, f"{upstream.url}/v1", encoding)
        forwarded = [r for r in upstream.received if r.header("accept-encoding") == "identity"]
    assert len(forwarded) == 2 and all(asks_usage(r) for r in forwarded)
    # the recordings are the stream as the upstream sent it, and their traces have the usage
    recorded = spans(proxy)
    assert len(recorded) == 2
    for span in recorded:
        assert span["outputs"]["choices"][0]["message"]["content"] == "Hello world"
        assert span["outputs"]["usage"]["total_tokens"] == USAGE["total_tokens"]
        assert span["attributes"]["usage"]["total_tokens"] == USAGE["total_tokens"]
        assert span["status"]["code"] == "OK"
    sent = b"".join(compress_events(encoding, sse_events(True)))
    rows = proxy.query("SELECT usage_injected, response_headers, response_body FROM exchanges")
    for row in rows:
        assert row["usage_injected"] == 1
        assert f'"content-encoding","{encoding}"' in row["response_headers"]
        assert unpack_body(bytes(row["response_body"])) == sent


def test_a_paced_compressed_stream_is_decoded_as_it_comes(proxy: Proxy, upstream: str) -> None:
    """The simulator gzips each event as it sends it, 150 ms apart: each reaches the client
    decoded as it comes, not at the end of the stream."""
    headers = {
        "x-simulator-compress": "gzip!",
        "x-simulator-fault": "chunk-delay-ms=150",
        "x-simulator-chunks": "6",
    }
    body = {**CHAT, "model": "gpt-4o-mini", "stream": True}
    arrivals: list[float] = []
    pieces: list[bytes] = []
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{proxy.base_url}/chat/completions", json=body, headers=headers
    ) as response:
        for piece in response.iter_bytes():
            arrivals.append(time.monotonic() - started)
            pieces.append(piece)
    streamed = b"".join(pieces)
    assert b'"usage"' not in streamed and streamed.endswith(b"data: [DONE]\n\n")
    assert "content-encoding" not in response.headers  # sent decoded
    first_content = next(i for i, p in enumerate(pieces) if b'"content"' in p)
    assert arrivals[-1] - arrivals[first_content] > 0.5, arrivals
    direct = raw_stream(upstream, body, **headers).decoded()
    assert _without_varying(streamed) == _without_varying(direct)
    span = only_trace(proxy)["spans"][0]
    assert span["outputs"]["usage"]["total_tokens"] > 0


def _without_varying(stream: bytes) -> list[Any]:
    """The events, without the two fields the simulator changes on every call."""
    events = []
    for event in stream.split(b"\n\n"):
        if event.startswith(b"data: {"):
            chunk = orjson.loads(event[6:])
            del chunk["id"], chunk["created"]
            events.append(chunk)
        elif event:
            events.append(event)
    return events


@pytest.mark.parametrize("recorded_by", ["client", "llmtap"])
def test_a_compressed_recording_with_usage_replays_without_it_to_a_client_that_does_not_ask(
    start_proxy: StartProxy, recorded_by: str
) -> None:
    """Recorded with the usage asked for by the client (the upstream gzips, as the SDK accepts
    gzip) or by llmtap (the upstream gzips despite identity); replayed to a client that does
    not ask: the events it would get directly. A client that asks gets the recording."""
    with raw_upstream(sse_upstream("gzip", always=recorded_by == "llmtap")) as upstream:
        direct = f"{upstream.url}/v1"
        recorder = start_proxy(upstream=direct)
        options = {"include_usage": True}
        extra = {"stream_options": options} if recorded_by == "client" else {}
        recorded = sdk_chunks(recorder.base_url, **extra)
        assert len(recorded) == (6 if recorded_by == "client" else 5)
        (row,) = recorder.query("SELECT usage_injected, response_headers FROM exchanges")
        assert row["usage_injected"] == (recorded_by == "llmtap")
        assert '"content-encoding","gzip"' in row["response_headers"]
        replay = start_proxy(mode="replay", upstream=NOWHERE, db=str(recorder.db))
        assert_gets_the_direct_stream(replay.base_url, direct)
    asked = raw_stream(
        replay.base_url,
        {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
        **{"accept-encoding": "gzip"},
    )
    assert asked.headers["content-encoding"] == "gzip"
    assert asked.decoded() == b"".join(sse_events(True))


def test_a_stream_in_an_encoding_nothing_reads_is_relayed_as_it_came(
    start_proxy: StartProxy,
) -> None:
    """An unknown encoding cannot be edited: the client gets the bytes as sent, usage and all
    (as before), live and replayed."""
    body = b"".join(sse_events(True))

    def answer(request: Received) -> bytes:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        head += b"content-encoding: x-unknown\r\ntransfer-encoding: chunked\r\n\r\n"
        return head + chunked([body])

    with raw_upstream(answer) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        live = raw_stream(proxy.base_url, {**CHAT, "stream": True})
        proxy.flush()
    assert live.headers["content-encoding"] == "x-unknown" and live.content == body
    replay = start_proxy(mode="replay", upstream=NOWHERE, db=str(proxy.db))
    again = raw_stream(replay.base_url, {**CHAT, "stream": True})
    assert again.headers["content-encoding"] == "x-unknown" and again.content == body
