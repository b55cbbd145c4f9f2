"""A replayed answer reaches a client in a coding it reads (found by a review with Go, Java
and curl clients).

Live, the upstream picks a coding from the client's own Accept-Encoding. A recording keeps the
coding its recording client took: the Python SDK takes br and zstd, Go's net/http only gzip,
Java's HttpClient and curl without `--compressed` none. Replay sent the recorded bytes to
every client: Go got a br body it could not parse, Java and curl got binary. Now a recording in
a coding the replaying client does not take is decoded on the way, JSON answers and streams.
"""

from __future__ import annotations

import http.client
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import brotli
import orjson
import pytest
import zstandard

from llmtap.proxy.accept_encoding import accepts
from tests.conftest import TEST_KEY, Proxy
from tests.integration.test_compressed_usage_strip import (
    CHAT,
    NOWHERE,
    compress_events,
    raw_stream,
    sse_events,
    sse_upstream,
)
from tests.raw_upstream import Received, raw_upstream

StartProxy = Callable[..., Proxy]
ANSWER = orjson.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello world " * 40},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 80, "total_tokens": 85},
    }
)


def compressed(encoding: str, body: bytes) -> bytes:
    if encoding == "gzip":
        return zlib.compress(body, wbits=31)
    if encoding == "deflate":
        return zlib.compress(body)
    if encoding == "br":
        return brotli.compress(body)
    return zstandard.ZstdCompressor().compress(body)


def json_upstream(request: Received) -> bytes:
    """An upstream that compresses its JSON answer in the first coding the client takes."""
    offered = [c.strip() for c in (request.header("accept-encoding") or "").split(",")]
    coding = next((c for c in offered if c in ("zstd", "br", "gzip", "deflate")), None)
    body = compressed(coding, ANSWER) if coding else ANSWER
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    if coding:
        head += b"content-encoding: %s\r\n" % coding.encode()
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


def plain_post(base_url: str, body: dict[str, Any], accept: str | None) -> tuple[dict, bytes]:
    """A POST as Java's HttpClient or curl without --compressed sends it (`accept` None: no
    Accept-Encoding at all); the answer's headers and its bytes as sent, not decoded."""
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=20)
    try:
        conn.putrequest("POST", f"{url.path}/chat/completions", skip_accept_encoding=True)
        payload = orjson.dumps(body)
        headers = {
            "content-type": "application/json",
            "content-length": str(len(payload)),
            "authorization": f"Bearer {TEST_KEY}",
            **({"accept-encoding": accept} if accept is not None else {}),
        }
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders(payload)
        response = conn.getresponse()
        return {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("recorded_in", ["gzip", "deflate", "br", "zstd"])
def test_a_compressed_json_answer_replays_decoded_to_a_client_that_does_not_take_its_coding(
    start_proxy: StartProxy, recorded_in: str
) -> None:
    with raw_upstream(json_upstream) as upstream:
        recorder = start_proxy(upstream=f"{upstream.url}/v1")
        headers, sent = plain_post(recorder.base_url, CHAT, recorded_in)
        assert headers["content-encoding"] == recorded_in and sent != ANSWER
        recorder.flush()
    replay = start_proxy(mode="replay", upstream=NOWHERE, db=str(recorder.db))
    # no Accept-Encoding (Java, curl), identity, or codings without the recorded one (Go: gzip)
    others = "gzip" if recorded_in != "gzip" else "br"
    for accept in (None, "identity", others, f"{recorded_in};q=0, {others}"):
        headers, body = plain_post(replay.base_url, CHAT, accept)
        assert "content-encoding" not in headers, (accept, headers)
        assert body == ANSWER, accept
        assert headers["content-length"] == str(len(ANSWER))
    # a client that takes it gets the recorded bytes, as before
    for accept in (recorded_in, f"{others}, {recorded_in};q=0.5", "*"):
        headers, body = plain_post(replay.base_url, CHAT, accept)
        assert headers["content-encoding"] == recorded_in, accept
        assert body == sent and headers["content-length"] == str(len(sent))


@pytest.mark.parametrize("recorded_in", ["gzip", "br", "zstd"])
def test_a_compressed_stream_replays_decoded_to_a_client_that_does_not_take_its_coding(
    start_proxy: StartProxy, recorded_in: str
) -> None:
    """A stream whose client asked for its usage (so nothing is stripped on replay) and took
    its coding; replayed to a client that asks for the usage too but takes no coding."""
    stream = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with raw_upstream(sse_upstream(recorded_in, always=False)) as upstream:
        recorder = start_proxy(upstream=f"{upstream.url}/v1")
        live = raw_stream(recorder.base_url, stream, **{"accept-encoding": recorded_in})
        assert live.headers["content-encoding"] == recorded_in
        assert live.content == b"".join(compress_events(recorded_in, sse_events(True)))
        recorder.flush()
    replay = start_proxy(mode="replay", upstream=NOWHERE, db=str(recorder.db))
    for accept in (None, "identity"):
        headers, body = plain_post(replay.base_url, stream, accept)
        assert "content-encoding" not in headers and "content-length" not in headers, accept
        assert body == b"".join(sse_events(True)), accept
    again = raw_stream(replay.base_url, stream, **{"accept-encoding": recorded_in})
    assert again.headers["content-encoding"] == recorded_in
    assert again.content == live.content


@pytest.mark.parametrize(
    ("accept", "coding", "taken"),
    [
        (None, "gzip", False),
        ("", "gzip", False),
        ("gzip", "gzip", True),
        ("GZIP", "gzip", True),
        ("x-gzip", "gzip", True),
        ("gzip", "x-gzip", True),
        ("gzip, deflate, br, zstd", "zstd", True),
        ("gzip;q=0", "gzip", False),
        ("gzip; q=0.001", "gzip", True),
        ("gzip;q=abc", "gzip", False),
        ("gzip;q=nan", "gzip", False),
        ("*", "br", True),
        ("*;q=0", "br", False),
        ("*, br;q=0", "br", False),
        ("br;q=0, *", "gzip", True),
        ("identity", "gzip", False),
        ("gzip", "gzip, br", False),
        ("gzip, br", "gzip, br", True),
        (None, "identity", True),
    ],
)
def test_accepts_reads_accept_encoding_as_rfc_9110_does(
    accept: str | None, coding: str, taken: bool
) -> None:
    assert accepts(accept, coding) is taken
