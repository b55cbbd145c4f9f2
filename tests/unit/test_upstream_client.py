"""The forwarding leg's HTTP/1.1 client against real sockets: raw asyncio servers in the test
write each framing byte for byte (odd ones included), on asyncio's loop and on uvloop."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
from click.testing import CliRunner

from llmtap.proxy.cli import main as llmtap_cli
from llmtap.proxy.upstream_client import (
    Origin,
    Response,
    UnsendableRequest,
    UpstreamClient,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]

LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    def run(coro: Coroutine[Any, Any, Any]) -> Any:
        if request.param == "uvloop":
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coro)
        return asyncio.run(coro)

    return run


class Server:
    """A raw TCP server: `handler` gets each connection; requests and connections counted."""

    def __init__(
        self, handler: Handler, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None
    ):
        self.handler = handler
        self.host = host
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, self.host, 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: Any) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request's head and body, or None at EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def answer_each(response: bytes | Callable[[bytes], bytes]) -> Handler:
    """A keep-alive server: every request on a connection gets `response`."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        while (request := await s.read_request(r)) is not None:
            w.write(response(request) if callable(response) else response)
            await w.drain()

    return handler


async def body_of(response: Response) -> bytes:
    data = b""
    while chunk := await response.read():
        data += chunk
    return data


def client(**kw: Any) -> UpstreamClient:
    return UpstreamClient(**{"connect_timeout": 5, "read_timeout": 5, **kw})


async def get(
    c: UpstreamClient, url: str, method: str = "POST", body: bytes = b"{}", **kw: Any
) -> tuple[Response, bytes]:
    origin = Origin.parse(url, **kw)
    response = await c.request(origin, method, origin.prefix + "/chat/completions", [], body)
    data = await body_of(response)
    response.release()
    return response, data


def test_the_request_goes_as_given(run: Any) -> None:
    async def main() -> None:
        async with Server(answer_each(ok())) as s:
            c = client()
            origin = Origin.parse(s.url + "/")
            headers = [("content-type", "application/json"), ("X-Custom", "a\tb  c")]
            target = origin.prefix + "/files/a%2Fb%20c?x=%C3%A9&y"
            response = await c.request(origin, "POST", target, headers, b'{"a":1}')
            assert (response.status, await body_of(response)) == (200, b"hello")
            response.release()
            await c.close()
        assert s.requests == [
            b"POST /v1/files/a%2Fb%20c?x=%C3%A9&y HTTP/1.1\r\n"
            b"Host: 127.0.0.1:%d\r\n"
            b"content-type: application/json\r\nX-Custom: a\tb  c\r\n"
            b'Content-Length: 7\r\n\r\n{"a":1}'.replace(b"%d", str(s.port).encode())
        ]

    run(main())


def test_no_body_gets_a_length_only_where_a_body_belongs(run: Any) -> None:
    async def main() -> None:
        async with Server(answer_each(ok())) as s:
            c = client()
            for method in ("GET", "DELETE", "POST"):
                await get(c, s.url, method, b"")
            await c.close()
        heads = [
            r.split(b"\r\n")[0] + (b" CL" if b"Content-Length" in r else b"") for r in s.requests
        ]
        assert heads == [
            b"GET /v1/chat/completions HTTP/1.1",
            b"DELETE /v1/chat/completions HTTP/1.1 CL",
            b"POST /v1/chat/completions HTTP/1.1 CL",
        ]

    run(main())


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/x\r\nEvil: 1", []),
        ("/x y", []),
        ("/x", [("x-a", "1\r\nEvil: 1")]),
        ("/x", [("x-a", "1\nEvil: 1")]),
        ("/x", [("x-a", "nul\x00")]),
        ("/x", [("x-a", "bell\x07")]),
        ("/x", [("x-a", "\u20ac")]),
    ],
)
def test_a_request_that_cannot_be_written_is_refused_before_connecting(
    run: Any, path: str, headers: list[tuple[str, str]]
) -> None:
    async def main() -> None:
        c = client()
        with pytest.raises(UnsendableRequest):
            await c.request(Origin.parse("http://127.0.0.1:1"), "POST", path, headers, b"")

    run(main())


def test_keep_alive_reuses_one_connection(run: Any) -> None:
    async def main() -> None:
        async with Server(answer_each(ok())) as s:
            c = client()
            for _ in range(5):
                assert (await get(c, s.url))[1] == b"hello"
            assert s.connections == 1
            assert c.idle_connections(Origin.parse(s.url)) == 1
            await c.close()

    run(main())


def test_chunked_with_extensions_and_trailers(run: Any) -> None:
    body = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n1;a=b;c\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n"
    )

    async def main() -> None:
        async with Server(answer_each(body)) as s:
            c = client()
            response, data = await get(c, s.url)
            assert data == b"hello world"
            assert (b"Transfer-Encoding", b"chunked") in response.raw_headers
            assert (await get(c, s.url))[1] == b"hello world"
            assert s.connections == 1
            await c.close()

    run(main())


def test_a_body_delimited_by_close(run: Any) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
        await w.drain()
        await asyncio.sleep(0.05)
        w.write(b"part two")
        await w.drain()
        w.close()

    async def main() -> None:
        async with Server(handler) as s:
            c = client()
            assert (await get(c, s.url))[1] == b"part one, part two"
            assert c.idle_connections(Origin.parse(s.url)) == 0
            assert (await get(c, s.url))[1] == b"part one, part two"
            assert s.connections == 2
            await c.close()

    run(main())


def test_interim_responses_are_skipped(run: Any) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        while await s.read_request(r) is not None:
            w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await w.drain()
            await asyncio.sleep(0.01)
            w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n")
            w.write(ok(b"final", b"X-Final: 1\r\n"))
            await w.drain()

    async def main() -> None:
        async with Server(handler) as s:
            c = client()
            for _ in range(2):
                response, data = await get(c, s.url)
                assert (response.status, data) == (200, b"final")
                assert [n for n, _ in response.raw_headers] == [b"Content-Length", b"X-Final"]
            assert s.connections == 1
            await c.close()

    run(main())


@pytest.mark.parametrize("seed", range(8))
def test_responses_cut_anywhere_across_reads(run: Any, seed: int) -> None:
    rng = random.Random(seed)
    chunked = (
        b"HTTP/1.1 201 Created\r\nContent-Type: text/event-stream\r\nX-Long: "
        + b"v" * 300
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\ndata: %d\n\n\r\n" % (len(b"data: %d\n\n" % i), i) for i in range(20))
        + b"0\r\n\r\n"
    )
    wanted = b"".join(b"data: %d\n\n" % i for i in range(20))
    responses = [chunked, ok(wanted, b"X-Other: yes\r\n")]

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        while await s.read_request(r) is not None:
            raw = responses[(len(s.requests) - 1) % 2]
            cuts = sorted(rng.sample(range(1, len(raw)), 12))
            for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True):
                w.write(raw[a:b])
                await w.drain()
                await asyncio.sleep(0.001)

    async def main() -> None:
        async with Server(handler) as s:
            c = client()
            for status in (201, 200, 201, 200):
                response, data = await get(c, s.url)
                assert (response.status, data) == (status, wanted)
            assert s.connections == 1
            await c.close()

    run(main())


def test_a_pooled_connection_the_server_closed_is_not_used(run: Any) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(r)
        w.write(ok())
        await w.drain()
        w.close()  # keep-alive was promised; the server closes anyway (an idle timeout)

    async def main() -> None:
        async with Server(handler) as s:
            c = client()
            assert (await get(c, s.url))[1] == b"hello"
            assert c.idle_connections(Origin.parse(s.url)) == 1  # the FIN may come later
            await asyncio.sleep(0.05)
            assert (await get(c, s.url))[1] == b"hello"
            assert s.connections == 2
            assert len(s.requests) == 2  # each request sent once
            await c.close()

    run(main())


def test_a_close_the_event_loop_has_not_seen_yet_is_caught_before_writing(run: Any) -> None:
    """The server's FIN is in the socket, not yet handled by the loop, when the connection is
    taken from the pool: a poll of the socket sees it, and the POST goes on a new one."""
    requests: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:  # in a thread: it closes while the client's loop is blocked
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                data = b""
                while not data.endswith(b"{}"):
                    data += conn.recv(65536)
                requests.append(data)
                conn.sendall(ok())

    thread = threading.Thread(target=serve)
    thread.start()

    async def main() -> None:
        c = client()
        url = f"http://127.0.0.1:{port}/v1"
        assert (await get(c, url))[1] == b"hello"
        time.sleep(0.2)  # the loop cannot run: the FIN waits in the socket
        assert (await get(c, url))[1] == b"hello"
        await c.close()

    try:
        run(main())
    finally:
        thread.join(5)
        listener.close()
    assert len(requests) == 2


def make_drop_after_first(drop: list[bool]) -> Handler:
    """First request answered with keep-alive; the second one read, then the connection
    dropped without an answer (what a race with an idle timeout looks like to the client)."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        first = True
        while await s.read_request(r) is not None:
            if not first and drop[0]:
                drop[0] = False
                w.transport.abort()
                return
            first = False
            w.write(ok())
            await w.drain()

    return handler


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_an_idempotent_request_lost_on_a_reused_connection_is_retried(
    run: Any, method: str
) -> None:
    async def main() -> None:
        async with Server(make_drop_after_first([True])) as s:
            c = client()
            assert (await get(c, s.url, method))[1] == b"hello"
            assert (await get(c, s.url, method))[1] == b"hello"
            assert s.connections == 2 and len(s.requests) == 3
            await c.close()

    run(main())


def test_a_post_that_may_have_been_seen_is_not_sent_twice(run: Any) -> None:
    async def main() -> None:
        async with Server(make_drop_after_first([True])) as s:
            c = client()
            assert (await get(c, s.url))[1] == b"hello"
            with pytest.raises(UpstreamDisconnected):
                await get(c, s.url)
            assert len(s.requests) == 2
            # unless it says it may be: an idempotency key
            origin = Origin.parse(s.url)
            s2 = Server(make_drop_after_first([True]))
            async with s2:
                o2 = Origin.parse(s2.url)
                first = await c.request(o2, "POST", "/x", [], b"{}")
                assert await body_of(first) == b"hello"
                first.release()
                keyed = [("Idempotency-Key", "k1")]
                response = await c.request(o2, "POST", "/x", keyed, b"{}")
                assert await body_of(response) == b"hello"
                assert len(s2.requests) == 3
            assert origin.key != o2.key
            await c.close()

    run(main())


def test_a_fresh_connection_is_never_retried(run: Any) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(r)
        w.transport.abort()

    async def main() -> None:
        async with Server(handler) as s:
            c = client()
            with pytest.raises(UpstreamDisconnected):
                await get(c, s.url, "GET")
            assert len(s.requests) == 1
            await c.close()

    run(main())


@pytest.mark.parametrize(
    "response",
    [
        ok(b"bye", b"Connection: close\r\n"),
        b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nbye",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_no_reuse_when_the_server_says_close(run: Any, response: bytes) -> None:
    async def main() -> None:
        async with Server(answer_each(response)) as s:
            c = client()
            for _ in range(3):
                assert (await get(c, s.url))[1] == b"bye"
            assert c.idle_connections(Origin.parse(s.url)) == 0
            assert s.connections == 3
            await c.close()

    run(main())


def test_http_1_0_keep_alive_is_reused(run: Any) -> None:
    response = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"

    async def main() -> None:
        async with Server(answer_each(response)) as s:
            c = client()
            for _ in range(3):
                assert (await get(c, s.url))[1] == b"ok"
            assert s.connections == 1
            await c.close()

    run(main())


def test_head_204_and_304_have_no_body(run: Any) -> None:
    def respond(request: bytes) -> bytes:
        if request.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
        if b"/204" in request:
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        return b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"

    async def main() -> None:
        async with Server(answer_each(respond)) as s:
            c = client()
            origin = Origin.parse(s.url)
            for method, path, status in [("HEAD", "/h", 200), ("GET", "/204", 204)] * 2 + [
                ("GET", "/304", 304)
            ]:
                response = await c.request(origin, method, path, [], b"")
                assert response.status == status
                assert await asyncio.wait_for(response.read(), 1) == b""
                response.release()
            # HEAD's connection is not trusted again (its parser expected 1000 bytes)
            assert s.connections == 3
            await c.close()

    run(main())


def test_a_slow_reader_pauses_the_upstream(run: Any) -> None:
    size = 16 * 1024 * 1024
    sent = {"buffered": 0}

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        while await s.read_request(r) is not None:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            piece = b"x" * 65536
            for _ in range(size // len(piece)):
                w.write(piece)
                sent["buffered"] = w.transport.get_write_buffer_size()
                await w.drain()

    async def main() -> None:
        async with Server(handler) as s:
            c = client(high_water=64 * 1024)
            origin = Origin.parse(s.url)
            response = await c.request(origin, "GET", "/big", [], b"")
            await asyncio.sleep(0.3)  # read nothing meanwhile
            held = response._conn.buffered
            assert held <= 64 * 1024 + 256 * 1024, held  # high water plus one socket read
            assert response._conn.paused
            assert sent["buffered"] > 0  # the server is the one waiting
            total = 0
            while chunk := await response.read():
                total += len(chunk)
            assert total == size
            response.release()
            assert (await get(c, s.url))[1] == b"x" * size
            assert s.connections == 1
            await c.close()

    run(main())


def test_read_timeouts(run: Any) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        request = await s.read_request(r)
        assert request is not None
        if b"/stall-body" in request:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await w.drain()
        await asyncio.sleep(5)

    async def main() -> None:
        async with Server(handler) as s:
            c = client(read_timeout=0.2)
            origin = Origin.parse(s.url)
            with pytest.raises(TimeoutError, match="response head"):
                await c.request(origin, "POST", "/stall-head", [], b"")
            response = await c.request(origin, "POST", "/stall-body", [], b"")
            assert await response.read() == b"abc"
            with pytest.raises(TimeoutError, match="response body"):
                await response.read()
            response.close()
            await c.close()

    run(main())


def test_a_reset_mid_body_comes_after_the_bytes_before_it(run: Any) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
        await s.read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
        await w.drain()
        await asyncio.sleep(0.05)
        sock = w.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        w.transport.abort()

    async def main() -> None:
        async with Server(handler) as s:
            c = client()
            response = await c.request(Origin.parse(s.url), "POST", "/x", [], b"")
            assert await response.read() == b"first"
            with pytest.raises(UpstreamDisconnected):
                await response.read()
            response.close()
            await c.close()

    run(main())


@pytest.mark.parametrize(
    "raw",
    [b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"],
    ids=["not-http", "bad-length"],
)
def test_garbage_is_a_protocol_error(run: Any, raw: bytes) -> None:
    async def main() -> None:
        async with Server(answer_each(raw)) as s:
            with pytest.raises(UpstreamProtocolError):
                await get(client(), s.url)

    run(main())


def test_an_unreachable_upstream(run: Any) -> None:
    async def main() -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # bound, not listening: refused
            with pytest.raises(UpstreamError, match="cannot connect") as info:
                await get(client(), f"http://127.0.0.1:{port}/v1")
        assert not isinstance(info.value, ValueError)

    run(main())


def test_ipv6_literal(run: Any) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")

    async def main() -> None:
        async with Server(answer_each(ok()), host="::1") as s:
            assert (await get(client(), s.url))[1] == b"hello"
        assert b"Host: [::1]:%d\r\n" % s.port in s.requests[0]

    run(main())


def test_origin_parsing() -> None:
    o = Origin.parse("https://api.openai.com/v1/")
    assert (o.scheme, o.host, o.port, o.host_header, o.prefix) == (
        "https",
        "api.openai.com",
        443,
        "api.openai.com",
        "/v1",
    )
    assert o.ssl is not None
    o = Origin.parse("http://user:p%40ss@[::1]:8080")
    assert (o.host, o.port, o.host_header, o.prefix) == ("::1", 8080, "[::1]:8080", "")
    assert o.authorization == "Basic dXNlcjpwQHNz"
    assert Origin.parse("http://bücher.example/a b").host == "xn--bcher-kva.example"
    assert Origin.parse("http://bücher.example/a b").prefix == "/a%20b"
    for bad in ("ftp://x", "localhost:8080", "http://", "http://x:99999"):
        with pytest.raises(UpstreamError):
            Origin.parse(bad)


def self_signed(folder: Path, name: str, alt_names: str) -> tuple[Path, Path]:
    """A certificate for `name` (and `alt_names`, openssl's subjectAltName) and its key."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}"]
        + ["-addext", f"subjectAltName={alt_names}"],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"), "localhost", "DNS:localhost,IP:127.0.0.1")


def test_tls(run: Any, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        async with Server(answer_each(ok(b"secret")), tls=server_side) as s:
            c = client()
            for host in ("localhost", "127.0.0.1"):
                url = f"https://{host}:{s.port}/v1"
                for _ in range(3):
                    assert (await get(c, url, ssl_context=trusting))[1] == b"secret"
            assert s.connections == 2  # one per origin, each reused
            # the system's trust store does not know this certificate: a 502, not a 400
            with pytest.raises(UpstreamError, match="cannot connect") as info:
                await get(client(), s.url)
            assert not isinstance(info.value, ValueError)
            await c.close()

    run(main())


def test_a_cancelled_request_closes_its_connection(run: Any) -> None:
    async def main() -> None:
        seen_eof = asyncio.Event()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: Server) -> None:
            await s.read_request(r)
            assert await r.read() == b""  # the client hung up
            seen_eof.set()

        async with Server(handler) as s:
            c = client()
            task = asyncio.create_task(get(c, s.url))
            while not s.requests:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(seen_eof.wait(), 2)
            assert not c._busy and c.idle_connections(Origin.parse(s.url)) == 0
            await c.close()

    run(main())


def test_a_name_with_several_addresses(run: Any) -> None:
    """`localhost` may be ::1 and 127.0.0.1; the server listens on the latter only."""

    async def main() -> None:
        async with Server(answer_each(ok())) as s:
            c = client()
            url = f"http://localhost:{s.port}/v1"
            for _ in range(2):
                assert (await get(c, url))[1] == b"hello"
            assert s.connections == 1
            await c.close()
        assert b"Host: localhost:%d\r\n" % s.port in s.requests[0]

    run(main())


def test_an_address_that_never_answers_does_not_hold_up_the_next(run: Any) -> None:
    """Happy Eyeballs: the first address drops SYNs (a full accept queue), the second is
    tried after 250 ms. The name's two addresses are put in the client's DNS cache."""

    async def main() -> None:
        async with Server(answer_each(ok())) as s:
            hole = socket.socket()
            hole.bind(("127.0.0.2", s.port))
            hole.listen(0)
            fillers = []
            for _ in range(4):  # fill the accept queue: further SYNs are dropped
                f = socket.socket()
                f.setblocking(False)
                f.connect_ex(("127.0.0.2", s.port))
                fillers.append(f)
            await asyncio.sleep(0.1)
            c = client(connect_timeout=3)
            loop_time = asyncio.get_running_loop().time()
            c._dns[("example.test", s.port)] = (
                loop_time + 60,
                [(socket.AF_INET, "127.0.0.2"), (socket.AF_INET, "127.0.0.1")],
            )
            began = time.monotonic()
            assert (await get(c, f"http://example.test:{s.port}/v1"))[1] == b"hello"
            assert 0.2 < time.monotonic() - began < 2
            assert b"Host: example.test:%d\r\n" % s.port in s.requests[0]
            await c.close()
            for f in fillers:
                f.close()
            hole.close()

    run(main())


# --- through an HTTP proxy (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) --------------------------------

PROXIED = "api.proxied.test"
"""An upstream name only the test's proxy knows (it leads to 127.0.0.1): reached directly,
it does not resolve."""


@pytest.fixture(scope="module")
def proxied_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls-proxied"), PROXIED, f"DNS:{PROXIED}")


class ForwardProxy:
    """A minimal HTTP proxy: CONNECT tunnels (to 127.0.0.1 for PROXIED), and absolute-form
    requests, which it answers itself; what it was asked is kept in `seen`."""

    def __init__(self, password: str | None = None) -> None:
        self.password = password
        self.seen: list[bytes] = []
        self.port = 0

    async def __aenter__(self) -> ForwardProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: Any) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.seen.append(head)
            if self.password is not None and f"Basic {self.password}".encode() not in head:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                return
            method, target, _ = head.split(b" ", 2)
            if method != b"CONNECT":
                writer.write(ok(b"answered by the proxy for " + target))
                await writer.drain()
                return
            port = int(target.rsplit(b":", 1)[1])
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(ConnectionError):
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                dst.close()

            try:
                await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            finally:
                up_writer.close()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def test_an_https_upstream_is_reached_through_a_connect_tunnel(
    run: Any, proxied_certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a corporate proxy the SDK reaches the API (httpx reads HTTPS_PROXY) and llmtap,
    which connected directly, did not: TLS now goes end to end inside a CONNECT tunnel."""
    cert, key = proxied_certificate
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        async with (
            Server(answer_each(ok(b"secret")), tls=server_side) as s,
            ForwardProxy(password=base64.b64encode(b"me:p@ss").decode()) as p,
        ):
            monkeypatch.setenv("HTTPS_PROXY", f"http://me:p%40ss@127.0.0.1:{p.port}")
            c = client()
            url = f"https://{PROXIED}:{s.port}/v1"
            for _ in range(2):
                assert (await get(c, url, ssl_context=trusting))[1] == b"secret"
            assert len(p.seen) == 1 and s.connections == 1  # one tunnel, kept alive
            assert p.seen[0].startswith(f"CONNECT {PROXIED}:{s.port} HTTP/1.1".encode())
            assert b"secret" not in p.seen[0] and b"/v1" not in p.seen[0]  # TLS inside
            monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{p.port}")  # no password
            refused = client()
            with pytest.raises(UpstreamError, match="refused the tunnel: HTTP/1.1 407"):
                await get(refused, url, ssl_context=trusting)
            await refused.close()
            await c.close()

    run(main())


def test_an_http_upstream_goes_to_the_proxy_with_its_absolute_url(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with ForwardProxy(password=base64.b64encode(b"u:").decode()) as p:
            monkeypatch.setenv("HTTP_PROXY", f"u@127.0.0.1:{p.port}")  # (no scheme: http)
            c = client()
            _, body = await get(c, f"http://{PROXIED}:8000/v1")
            await c.close()
            assert (
                body
                == f"answered by the proxy for http://{PROXIED}:8000/v1/chat/completions".encode()
            )
            assert f"Host: {PROXIED}:8000".encode() in p.seen[0]

    run(main())


def test_no_proxy_and_this_machine_go_direct(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a dead proxy: used, it fails
    monkeypatch.setenv("NO_PROXY", "proxied.test")
    assert Origin.parse(f"http://{PROXIED}/v1").via is None  # a domain suffix in NO_PROXY
    assert Origin.parse("http://api.elsewhere.test/v1").via is not None
    monkeypatch.delenv("NO_PROXY")
    for local in ("localhost", "127.0.0.1", "[::1]"):
        assert Origin.parse(f"http://{local}:8000/v1").via is None

    async def main() -> None:
        async with Server(answer_each(ok(b"direct"))) as s:
            c = client()
            assert (await get(c, s.url))[1] == b"direct"
            await c.close()

    run(main())
    monkeypatch.setenv("HTTPS_PROXY", "https://proxy.example:3128")
    with pytest.raises(UpstreamError, match="only http:// proxies"):
        Origin.parse("https://api.openai.com/v1")
    refused = CliRunner().invoke(llmtap_cli, ["serve", "--port", "0", "--db", "unused.db"])
    assert refused.exit_code == 1 and "only http:// proxies" in refused.output  # at start
    # as httpx reads them: ALL_PROXY for any scheme, and NO_PROXY's networks
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("HTTP_PROXY")
    monkeypatch.setenv("ALL_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "10.0.0.0/8")
    assert Origin.parse("https://api.openai.com/v1").via is not None
    assert Origin.parse("http://10.1.2.3:8000/v1").via is None
    assert Origin.parse("http://11.1.2.3:8000/v1").via is not None
    assert Origin.parse("http://127.1:8000/v1").via is None  # loopback in any form
