"""A small raw-socket HTTP/1.1 load client (asyncio + uvloop + httptools) for what wrk cannot
measure: time to first event and each event's arrival in a streamed answer, runs of an
exact number of requests (the memory scenario), and an open loop at a steady rate
(`run_at_rate`: latency at a load that does not saturate, as LiteLLM publishes its overhead).

Each connection is kept alive and sends one request at a time. Time stamps are
CLOCK_MONOTONIC (`time.monotonic_ns()`), the clock the fake upstream writes into each paced
event, so `arrival - sent` is the event's delay from the upstream's write to the client's read.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools

_STAMP = re.compile(rb'"obfuscation":"(\d+)"')  # the upstream's send time (bench/upstream.py)


@dataclass(slots=True)
class Result:
    status: int = 0
    sent_ns: int = 0
    first_body_ns: int = 0
    done_ns: int = 0
    body_size: int = 0
    chunks: list[tuple[int, bytes]] = field(default_factory=list)

    def end_delay_ns(self, pace_ns: int) -> int | None:
        """End of the answer (after [DONE]) minus when the upstream wrote [DONE]: one pace
        after the last stamped event (the upstream keeps an absolute schedule)."""
        stamps = _STAMP.findall(b"".join(c for _, c in self.chunks))
        return self.done_ns - (int(stamps[-1]) + pace_ns) if stamps else None

    def event_delays_ns(self) -> list[int]:
        """For each event stamped by the upstream: client arrival minus upstream send time."""
        data = b"".join(c for _, c in self.chunks)
        ends: list[int] = []
        pos = 0
        for _, c in self.chunks:
            pos += len(c)
            ends.append(pos)
        out = []
        i = 0
        for m in _STAMP.finditer(data):
            while ends[i] < m.end():
                i += 1
            out.append(self.chunks[i][0] - int(m.group(1)))
        return out


class _Conn(asyncio.Protocol):
    def __init__(self, keep_chunks: bool) -> None:
        self.keep_chunks = keep_chunks
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Result] | None = None
        self.result = Result()
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_headers_complete(self) -> None:
        self.result.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        r = self.result
        now = time.monotonic_ns()
        if not r.first_body_ns:
            r.first_body_ns = now
        r.body_size += len(body)
        if self.keep_chunks:
            r.chunks.append((now, bytes(body)))

    def on_message_complete(self) -> None:
        self.result.done_ns = time.monotonic_ns()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.result)

    async def request(self, raw: bytes) -> Result:
        self.result = Result()
        self.waiter = asyncio.get_running_loop().create_future()
        self.result.sent_ns = time.monotonic_ns()
        assert self.transport is not None
        self.transport.write(raw)
        return await self.waiter


def build_request(url: str, body: bytes, headers: dict[str, str]) -> bytes:
    u = urlsplit(url)
    path = u.path + ("?" + u.query if u.query else "")
    lines = [
        f"POST {path} HTTP/1.1",
        f"host: {u.netloc}",
        "content-type: application/json",
        "authorization: Bearer sk-bench-not-a-key",
        f"content-length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def run(
    url: str,
    requests: Callable[[int], bytes],
    concurrency: int,
    *,
    total: int | None = None,
    duration: float | None = None,
    keep_chunks: bool = False,
    on_done: Callable[[int], None] | None = None,
) -> list[Result]:
    """Send requests (the i-th is `requests(i)`) over `concurrency` connections, until
    `total` are done or `duration` seconds have passed; returns every result."""
    u = urlsplit(url)
    loop = asyncio.get_running_loop()
    results: list[Result] = []
    counter = iter(range(10**12))
    deadline = loop.time() + duration if duration is not None else None

    async def worker() -> None:
        _, conn = await loop.create_connection(lambda: _Conn(keep_chunks), u.hostname, u.port or 80)
        try:
            while True:
                i = next(counter)
                if total is not None and i >= total:
                    return
                if deadline is not None and loop.time() >= deadline:
                    return
                r = await conn.request(requests(i))
                results.append(r)
                if on_done is not None:
                    on_done(len(results))
        finally:
            if conn.transport is not None:
                conn.transport.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


@dataclass(slots=True)
class RateRun:
    results: list[Result]
    late_ns: list[int]
    """For each request, how long after it was due it was sent (timer granularity; or, in an
    overloaded system, the wait for a free connection)."""
    seconds: float


async def run_at_rate(
    url: str,
    request: bytes,
    rate: float,
    duration: float,
    *,
    max_connections: int = 256,
    prewarm: int = 8,
) -> RateRun:
    """Open loop: the i-th request is due `i / rate` seconds after the start and is sent then,
    whether or not the earlier ones were answered, on a free keep-alive connection (a new one
    while fewer than `max_connections` are open). A slow answer holds nothing else back, so it
    is not hidden (no coordinated omission): each latency is `done - sent`, and how late each
    request was sent is kept beside it."""
    u = urlsplit(url)
    loop = asyncio.get_running_loop()
    free: list[_Conn] = []
    opened: list[_Conn] = []
    queued: deque[asyncio.Future[_Conn]] = deque()
    results: list[Result] = []
    late: list[int] = []

    async def connect() -> _Conn:
        _, conn = await loop.create_connection(lambda: _Conn(False), u.hostname, u.port or 80)
        opened.append(conn)
        return conn

    async def acquire() -> _Conn:
        if free:
            return free.pop()
        if len(opened) < max_connections:
            return await connect()
        waiter: asyncio.Future[_Conn] = loop.create_future()
        queued.append(waiter)
        return await waiter

    def release(conn: _Conn) -> None:
        while queued:
            waiter = queued.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        free.append(conn)

    async def one(due_ns: int) -> None:
        conn = await acquire()
        late.append(time.monotonic_ns() - due_ns)
        try:
            results.append(await conn.request(request))
        except ConnectionError:
            results.append(Result())  # status 0: counted as an error
            opened.remove(conn)
            if queued and len(opened) < max_connections:  # a waiter gets a new connection
                release(await connect())
            return
        release(conn)

    free.extend([await connect() for _ in range(min(prewarm, max_connections))])
    interval_ns = 1e9 / rate
    start = time.monotonic_ns() + 1_000_000
    end = start + int(duration * 1e9)
    tasks: list[asyncio.Task[None]] = []
    i = 0
    while (due := start + int(i * interval_ns)) < end:
        now = time.monotonic_ns()
        if due > now:
            await asyncio.sleep((due - now) / 1e9)
            now = time.monotonic_ns()
        while due <= now and due < end:  # every request due by now goes out now
            tasks.append(asyncio.ensure_future(one(due)))
            i += 1
            due = start + int(i * interval_ns)
    await asyncio.gather(*tasks)
    seconds = (time.monotonic_ns() - start) / 1e9
    for conn in opened:
        if conn.transport is not None:
            conn.transport.close()
    return RateRun(results, late, seconds)
