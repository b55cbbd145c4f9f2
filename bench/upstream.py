"""A fast fake OpenAI upstream for the benchmark: raw asyncio (uvloop) + httptools.

It must never be the bottleneck, so every answer is prebuilt bytes written in one call:

- a non-streamed `chat.completion` (any request whose body does not say `"stream": true`);
- a streamed `chat.completion.chunk` SSE answer of `x-bench-events` chunks (default 100) plus
  `[DONE]`, chunked transfer encoding, all written at once ("bulk");
- with `x-bench-pace-ms: N`, the same stream paced: one event per write, N ms apart, each event
  carrying its send time (`"obfuscation": "<CLOCK_MONOTONIC ns>"`) so that a client on the same
  machine can measure each event's delay through a proxy. OpenAI's own `obfuscation` field is
  the one that changes from event to event (random padding); `system_fingerprint` stays the
  same for a whole stream, as it does from OpenAI (a stamp there made every event unlike the
  one before, which no real stream does).

A request that asks for `stream_options.include_usage` (llmtap injects it) also gets the
final usage chunk and `"usage": null` on every other chunk, as OpenAI sends them.

    python bench/upstream.py [--port 0]      # prints "upstream listening on http://..."
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import time

import httptools
import orjson

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

MODEL = "gpt-4o-mini-2024-07-18"
CREATED = 1_730_000_000

COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello! This is a canned answer from the benchmark upstream. "
                    "It is about as long as a short real reply.",
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 25,
            "completion_tokens": 21,
            "total_tokens": 46,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "system_fingerprint": "fp_bench",
    }
)


def _chunk(delta: dict, finish: str | None, usage: bool, stamp: str | None) -> dict:
    c = {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage:
        c["usage"] = None
    if stamp is not None:
        c["obfuscation"] = stamp
    return c


def stream_events(n: int, usage: bool, stamp: str | None = None) -> list[bytes]:
    """The SSE events (each `data: ...\\n\\n`) of an n-chunk streamed answer, [DONE] last;
    `stamp`: the `obfuscation` of every chunk."""
    out = []
    for i in range(n):
        if i == 0:
            delta, finish = {"role": "assistant", "content": "", "refusal": None}, None
        elif i == n - 1:
            delta, finish = {}, "stop"
        else:
            delta, finish = {"content": f"tok{i} "}, None
        out.append(b"data: " + orjson.dumps(_chunk(delta, finish, usage, stamp)) + b"\n\n")
    if usage:
        u = {
            "id": "chatcmpl-bench0000000000000000000000",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [],
            "usage": {"prompt_tokens": 25, "completion_tokens": n, "total_tokens": 25 + n},
        }
        if stamp is not None:
            u["obfuscation"] = stamp
        out.append(b"data: " + orjson.dumps(u) + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def _frame(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_COMMON = b"x-request-id: req_bench\r\nopenai-processing-ms: 1\r\n"
JSON_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    + _COMMON
    + b"content-length: %d\r\n\r\n" % len(COMPLETION)
    + COMPLETION
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    + _COMMON
    + b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)
_END = b"0\r\n\r\n"
_bulk_cache: dict[tuple[int, bool], bytes] = {}


def bulk_stream(n: int, usage: bool) -> bytes:
    key = (n, usage)
    if key not in _bulk_cache:
        events = stream_events(n, usage)
        _bulk_cache[key] = STREAM_HEAD + b"".join(_frame(e) for e in events) + _END
    return _bulk_cache[key]


class Upstream(asyncio.Protocol):
    __slots__ = ("transport", "parser", "body", "headers", "busy", "paced")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.headers: dict[bytes, bytes] = {}
        self.paced: asyncio.Task | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.paced is not None:
            self.paced.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()  # type: ignore[union-attr]

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.body = []
        self.headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        if name[:8].lower() == b"x-bench-":
            self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.body)
        if b'"stream":true' not in body.replace(b" ", b""):
            self.transport.write(JSON_RESPONSE)  # type: ignore[union-attr]
            return
        usage = b"include_usage" in body
        n = int(self.headers.get(b"x-bench-events", b"100"))
        pace = self.headers.get(b"x-bench-pace-ms")
        if pace is None:
            self.transport.write(bulk_stream(n, usage))  # type: ignore[union-attr]
        else:
            self.paced = asyncio.ensure_future(self._paced(n, usage, float(pace) / 1000))

    async def _paced(self, n: int, usage: bool, pace: float) -> None:
        t = self.transport
        assert t is not None
        t.write(STREAM_HEAD)
        loop = asyncio.get_running_loop()
        start = loop.time()
        count = n + (1 if usage else 0) + 1
        for i in range(count):
            # the usage chunk and [DONE] go out together, right after the last content chunk's
            # pace, as OpenAI sends them: [DONE] is due at start + n * pace either way
            if i and i <= n:
                # absolute schedule, so that late wake-ups do not accumulate
                delay = start + i * pace - loop.time()
                await asyncio.sleep(max(delay, 0))
            # each event is built at send time, with its send time in it
            stamp = b"%d" % time.monotonic_ns()
            if i < n:
                event = stream_events_one(i, n, usage, stamp)
            elif usage and i == n:
                event = stream_events(1, True, stamp.decode())[-2]
            else:
                event = b"data: [DONE]\n\n"
            t.write(_frame(event))
        t.write(_END)


_paced_cache: dict[tuple[int, int, bool], bytes] = {}


def stream_events_one(i: int, n: int, usage: bool, stamp: bytes) -> bytes:
    """Event i of n, stamped with `stamp`."""
    key = (i, n, usage)
    if key not in _paced_cache:
        _paced_cache[key] = stream_events(n, usage, "STAMP")[i]
    return _paced_cache[key].replace(b'"obfuscation":"STAMP"', b'"obfuscation":"%s"' % stamp)


async def serve(host: str, port: int, ready: asyncio.Future | None = None) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    server = await loop.create_server(Upstream, sock=sock, backlog=4096)
    h, p = sock.getsockname()[:2]
    print(f"upstream listening on http://{h}:{p}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    runner = uvloop.run if uvloop is not None else asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())
