"""The forwarding leg's HTTP/1.1 client against the simulator (uvicorn + httptools): the bytes
it hands over are the bytes httpx reads raw, streams arrive piece by piece, connections are
reused, and the simulator's faults surface as the errors forward.py maps."""

from __future__ import annotations

import asyncio
import gzip
import re
import time
from typing import Any

import brotli
import httpx
import orjson
import pytest
import uvloop

from llmtap.proxy.upstream_client import (
    Origin,
    Response,
    UpstreamClient,
    UpstreamDisconnected,
)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


def run(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def call(
    client: UpstreamClient, origin: Origin, body: dict[str, Any], headers: dict[str, str]
) -> tuple[Response, list[tuple[float, bytes]]]:
    """The response, and each piece of its body with the time it was handed over."""
    response = await client.request(
        origin,
        "POST",
        origin.prefix + "/chat/completions",
        [("content-type", "application/json"), *headers.items()],
        orjson.dumps(body),
    )
    pieces = []
    while chunk := await response.read():
        pieces.append((time.monotonic(), chunk))
    response.release()
    return response, pieces


def raw_httpx(upstream: str, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    with httpx.stream("POST", f"{upstream}/chat/completions", json=body, headers=headers) as r:
        return b"".join(r.iter_raw())


def decoded(raw: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        raw = gzip.decompress(raw)
    elif encoding == "br":
        raw = brotli.decompress(raw)
    # ids and timestamps differ from one answer to the next
    return re.sub(rb'"(id|created|system_fingerprint)":\s*("[^"]*"|\d+)', b"", raw)


@pytest.mark.parametrize(
    ("body", "headers", "encoding"),
    [
        (CHAT, {}, None),
        ({**CHAT, "stream": True}, {"x-simulator-chunks": "40"}, None),
        (CHAT, {"x-simulator-compress": "gzip!"}, "gzip"),
        ({**CHAT, "stream": True}, {"x-simulator-compress": "br!"}, "br"),
    ],
    ids=["chat", "stream", "gzip", "br-stream"],
)
def test_bytes_as_sent(
    upstream: str, body: dict[str, Any], headers: dict[str, str], encoding: str | None
) -> None:
    """No decompression, no re-chunking: the body httpx reads raw."""
    expected = decoded(raw_httpx(upstream, body, headers), encoding)

    async def main() -> None:
        client = UpstreamClient(connect_timeout=5, read_timeout=10)
        origin = Origin.parse(upstream)
        try:
            for _ in range(3):
                response, pieces = await call(client, origin, body, headers)
                assert response.status == 200
                got = {k.lower(): v for k, v in response.raw_headers}
                assert got.get(b"content-encoding") == (encoding and encoding.encode())
                assert decoded(b"".join(c for _, c in pieces), encoding) == expected
            assert client.idle_connections(origin) == 1  # one connection, reused
        finally:
            await client.close()

    run(main())


def test_a_paced_stream_arrives_piece_by_piece(upstream: str) -> None:
    body = {**CHAT, "stream": True}
    headers = {"x-simulator-chunks": "5", "x-simulator-fault": "chunk-delay-ms=50"}

    async def main() -> None:
        client = UpstreamClient(connect_timeout=5, read_timeout=10)
        _, arrivals = await call(client, Origin.parse(upstream), body, headers)
        await client.close()
        events = [c for _, c in arrivals if b"data:" in c]
        assert len(events) >= 5, arrivals
        spread = arrivals[-1][0] - arrivals[0][0]
        assert spread > 0.15, arrivals  # handed over as they came, not at the end

    run(main())


def test_a_reset_mid_stream_is_an_upstream_error(upstream: str) -> None:
    body = {**CHAT, "stream": True}

    async def main() -> None:
        client = UpstreamClient(connect_timeout=5, read_timeout=10)
        origin = Origin.parse(upstream)
        with pytest.raises(UpstreamDisconnected):
            await call(client, origin, body, {"x-simulator-fault": "reset-mid-stream"})
        # the next request gets a connection that works
        response, _ = await call(client, origin, CHAT, {})
        assert response.status == 200
        await client.close()

    run(main())
