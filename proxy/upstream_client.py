"""A small HTTP/1.1 client for the forwarding leg: asyncio protocols, httptools, a keep-alive pool.

It does what forwarding needs and nothing else: one request at a time per connection (no
pipelining), the request head and body in one write, the response body handed over as it
arrives, no decompression, no cookies, no redirects, no default headers.

    origin = Origin.parse("https://api.openai.com/v1")
    client = UpstreamClient(connect_timeout=10, read_timeout=600)
    response = await client.request(origin, "POST", origin.prefix + "/chat/completions",
                                     [("content-type", "application/json")], body)
    while chunk := await response.read():
        ...
    response.release()   # pooled if read to the end and keep-alive, closed otherwise

Framing: Content-Length, chunked (extensions and trailers ignored) and read-until-close
bodies; 1xx interim responses are skipped; HEAD, 204 and 304 answers have no body.

Proxies: `HTTPS_PROXY`, `HTTP_PROXY` and `NO_PROXY` are read as the SDK reads them
(`upstream_proxy`): a CONNECT tunnel to an https:// upstream, absolute URLs to an http:// one.

Connecting: the host's addresses come from `getaddrinfo`, cached for `DNS_TTL` as aiohttp's
connector did, and are tried Happy Eyeballs style (RFC 8305), address families interleaved,
the next one after 250 ms or at once on a failure, so that a host whose IPv6 route is a
black hole is still reached over IPv4.

Timeouts: `connect_timeout` bounds resolving, the TCP connect and the TLS handshake;
`read_timeout` bounds each wait for the upstream's next bytes (the head, then each piece of
the body). Both raise `TimeoutError`. While reading is paused for back-pressure the upstream
is not waited for, so the clock does not run.

Back-pressure: body bytes not yet taken by `read()` are buffered up to `HIGH_WATER`; past it
the socket is no longer read (`pause_reading`) until the reader has taken them, so a slow
downstream client makes the upstream wait (TCP flow control) instead of growing memory.

Reuse and the retry rule. A connection goes back to the pool only if its response was read
to the end and neither side asked to close (`Connection: close`, HTTP/1.0 without
keep-alive, a read-until-close body, an interrupted response). An idle connection the
server closed is dropped when taken from the pool: the protocol has seen the EOF, or
a zero-timeout poll of the socket shows bytes or EOF the event loop has not handled yet.
A request is sent again, once, on a new connection only when the upstream cannot have seen
it or may see it twice:

- the write failed at once (the transport was closing right after `write`): nothing went out;
- the pooled connection ended with no byte of response and the request is idempotent
  (GET, HEAD, OPTIONS, TRACE, PUT, DELETE, or it carries an `Idempotency-Key` header).

A POST without an idempotency key on a connection that the server closes just after our
write (the microseconds between the poll and the write) is not retried: the upstream may
have read it before closing, and sending a completion request twice costs the user twice.
That case surfaces as `UpstreamDisconnected`, as it did with aiohttp, which never retried
non-idempotent requests either.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import functools
import itertools
import re
import select
import socket
import ssl
from asyncio import staggered
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

import httptools

from llmtap.proxy.upstream_proxy import Via, open_tunnel, via_from_environment
from llmtap.recorder.secret_headers import redacted_query

HIGH_WATER = 128 * 1024
"""Unread body bytes past which the upstream socket is no longer read."""
IDLE_TIMEOUT = 15.0
"""Seconds a pooled connection may sit idle before it is closed instead of reused."""
DNS_TTL = 300.0
"""Seconds a host's addresses are reused before it is resolved again (aiohttp's default)."""
HAPPY_EYEBALLS = 0.25
"""Seconds before the next address is tried while one is still connecting (RFC 8305)."""
MAX_RESPONSE_HEAD = 1024 * 1024
"""Bytes of a response head (interim answers included) past which the exchange fails: httptools
grows a header's value with `bytes +=`, and a head that never ends would keep the loop copying."""

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# methods that get `Content-Length: 0` without a body (aiohttp's rule, kept)
_NO_LENGTH_WHEN_EMPTY = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# headers the client writes itself: any copy in the caller's list is not sent
_OWN_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te"}
)
_IDEMPOTENCY_HEADERS = frozenset({"idempotency-key", "x-idempotency-key"})
# control characters other than tab, CR and LF; CR and LF are counted separately
_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class UpstreamError(Exception):
    """The upstream could not be reached, or broke the response (not a `ValueError`)."""


class UpstreamDisconnected(UpstreamError):
    """The upstream closed or reset the connection before the response was complete."""


class RequestUnsent(UpstreamDisconnected):
    """The connection was closed before the request went out: nothing reached the upstream."""


class UpstreamProtocolError(UpstreamError):
    """The upstream sent something that is not an HTTP/1.x response."""


class UnsendableRequest(ValueError):
    """The request cannot be written as HTTP/1.1 as it is (control characters, a space...)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: parsed once from a base URL such as `http://[::1]:8080/v1`."""

    scheme: str
    host: str
    """For connecting: no brackets, IDNA-encoded."""
    port: int
    host_header: str
    prefix: str
    """The base URL's path, percent-encoded, no trailing slash: prepend it to request paths."""
    ssl: ssl.SSLContext | None
    authorization: str | None
    """`Basic ...` from credentials in the base URL, sent when the request has none."""
    query: str = ""
    """The base URL's query (Azure's `?api-version=...`), added to every request's own."""
    via: Via | None = None
    """The HTTP proxy the environment names for it (`upstream_proxy`), or None: direct."""

    def target(self, path_and_query: str) -> str:
        """The request target upstream for a path below the base URL (with its query)."""
        if not self.query:
            return self.prefix + path_and_query
        return self.prefix + path_and_query + ("&" if "?" in path_and_query else "?") + self.query

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @classmethod
    def parse(cls, url: str, ssl_context: ssl.SSLContext | None = None) -> Origin:
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # an unclosed IPv6 bracket...
            raise UpstreamError(f"invalid upstream URL {shown_url(url)!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise UpstreamError(
                f"unsupported upstream URL {shown_url(url)!r}: http:// or https:// only"
            )
        try:
            host = parts.hostname
            port = parts.port
        except ValueError as exc:
            raise UpstreamError(f"invalid upstream URL {shown_url(url)!r}: {exc}") from None
        if not host:
            raise UpstreamError(f"invalid upstream URL {shown_url(url)!r}: no host")
        if ":" in host:  # an IPv6 literal
            shown = f"[{host}]"
        else:
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError as exc:
                raise UpstreamError(f"invalid upstream host {host!r}: {exc}") from None
            shown = host
        default = 443 if scheme == "https" else 80
        port = port or default
        authorization = None
        if parts.username is not None:
            user = unquote(parts.username)
            password = unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            authorization = "Basic " + token
        context = None
        if scheme == "https":
            context = ssl_context or ssl.create_default_context()
        prefix = quote(parts.path.rstrip("/"), safe="/:@!$&'()*+,;=-._~%")
        try:
            via = via_from_environment(scheme, host)
        except ValueError as exc:
            raise UpstreamError(f"cannot reach {shown} through the proxy: {exc}") from None
        return cls(
            scheme,
            host,
            port,
            shown if port == default else f"{shown}:{port}",
            prefix,
            context,
            authorization,
            parts.query,
            via,
        )


def shown_url(url: str) -> str:
    """A base URL as messages, logs and the API may show it: without its credentials
    (`https://user:password@host/v1` authenticates llmtap; the password is a secret) and with
    a key in its query as `***` (`?api-key=...`, Azure's `?sig=...`).

    Cut by hand, not by `urlsplit`: a password with an unencoded `/`, `?` or `#` ends the
    authority early for a parser, which then sees no credentials at all. What comes before the
    last `@` is credentials when it has no `/`, `?` or `#` before its first `:` (`user:pa/ss`,
    `token`); an `@` in a path or a query (`/team@acme`, `?user=me@example.com`) is not."""
    scheme, sep, rest = url.partition("//")
    if not sep:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    if at and _is_userinfo(userinfo):
        rest = "***@" + host
    base, question, query = rest.partition("?")
    if question:
        query, hash_, fragment = query.partition("#")
        rest = f"{base}?{redacted_query(query)}{hash_}{fragment}"
    return f"{scheme}{sep}{rest}"


def _is_userinfo(text: str) -> bool:
    colon = text.find(":")
    head = text if colon < 0 else text[:colon]
    return not any(c in head for c in "/?#")


class UpstreamClient:
    """Keep-alive connections per (scheme, host, port), reused most recent first."""

    def __init__(
        self,
        connect_timeout: float,
        read_timeout: float,
        idle_timeout: float = IDLE_TIMEOUT,
        high_water: int = HIGH_WATER,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.high_water = high_water
        self._idle: dict[tuple[str, str, int], collections.deque[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._closed = False
        self._poll = select.poll()
        self._dns: dict[tuple[str, int], tuple[float, list[tuple[int, str]]]] = {}

    async def request(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes = b"",
    ) -> Response:
        """Send one request; return once the response head has arrived.

        `target` is the path and query exactly as they go on the request line (already
        percent-encoded). `headers` are sent as given, in order; Host and Content-Length are
        added. Raises `UnsendableRequest`, `TimeoutError` or `UpstreamError` (a connect
        failure or an early close, with the `OSError` as its cause).
        """
        data = _request_bytes(origin, method, target, headers, body)
        is_head = method == "HEAD"
        conn = self._pooled(origin.key)
        if conn is None:
            conn = await self._connect(origin)
            return await conn.exchange(data, is_head)
        try:
            return await conn.exchange(data, is_head)
        except UpstreamDisconnected:
            if conn.got_bytes or not (conn.unsent or _replayable(method, headers)):
                raise
        conn = await self._connect(origin)
        return await conn.exchange(data, is_head)

    async def close(self) -> None:
        self._closed = True
        conns = [conn for idle in self._idle.values() for conn in idle]
        self._idle.clear()
        for conn in [*conns, *self._busy]:
            conn.close()

    def idle_connections(self, origin: Origin) -> int:
        """How many connections to `origin` wait in the pool (for tests and diagnostics)."""
        return len(self._idle.get(origin.key, ()))

    def _pooled(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        loop_time = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if conn.reusable(loop_time - self.idle_timeout):
                self._busy.add(conn)
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                addresses = await self._resolve(origin)
                if len(addresses) == 1:
                    conn = await self._open(origin, addresses[0])
                else:  # Happy Eyeballs (RFC 8305): the next address after 250 ms or a failure
                    attempts = [functools.partial(self._open, origin, a) for a in addresses]
                    conn, _, errors = await staggered.staggered_race(attempts, HAPPY_EYEBALLS)
                    if conn is None:
                        raise next((e for e in reversed(errors) if e is not None), OSError())
        except TimeoutError:
            raise TimeoutError(
                f"no connection to {_reached(origin)} within {self.connect_timeout:g} s"
            ) from None
        except OSError as exc:  # refused, DNS, TLS (ssl errors are OSErrors), the proxy's no
            raise UpstreamError(
                f"cannot connect to {_reached(origin)}: {exc or type(exc).__name__}"
            ) from exc
        if self._closed:
            conn.close()
            raise UpstreamError("the client is closed")
        self._busy.add(conn)
        return conn

    async def _resolve(self, origin: Origin) -> list[tuple[int, str]]:
        """(family, address) to try in turn, families interleaved; cached for DNS_TTL."""
        loop = asyncio.get_running_loop()
        # through a proxy, the proxy's addresses: the upstream's name is the proxy's to resolve
        host, port = (
            (origin.via.host, origin.via.port) if origin.via else (origin.host, origin.port)
        )
        cached = self._dns.get((host, port))
        if cached is not None and cached[0] > loop.time():
            return cached[1]
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        by_family: dict[int, list[tuple[int, str]]] = {}
        for family, _, _, _, sockaddr in infos:
            entry = (family, sockaddr[0])
            if entry not in by_family.setdefault(family, []):
                by_family[family].append(entry)
        groups = list(by_family.values())
        addresses = [a for row in itertools.zip_longest(*groups) for a in row if a is not None]
        if not addresses:
            raise OSError(f"no address for {host}")
        self._dns[(host, port)] = (loop.time() + DNS_TTL, addresses)
        return addresses

    async def _open(self, origin: Origin, address: tuple[int, str]) -> _Connection:
        loop = asyncio.get_running_loop()
        via = origin.via
        if via is not None and origin.ssl is not None:
            return await self._open_tunnel(origin, via, address)
        if via is not None:  # plain HTTP through the proxy: absolute URLs (`_request_bytes`)
            _, conn = await loop.create_connection(
                lambda: _Connection(self, origin.key, loop), address[1], via.port, family=address[0]
            )
            return conn
        _, conn = await loop.create_connection(
            lambda: _Connection(self, origin.key, loop),
            address[1],
            origin.port,
            family=address[0],
            ssl=origin.ssl,
            server_hostname=origin.host if origin.ssl is not None else None,
        )
        return conn

    async def _open_tunnel(self, origin: Origin, via: Via, address: tuple[int, str]) -> _Connection:
        """TLS to the upstream inside a CONNECT tunnel through the proxy at `address`."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(address[0], socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, (address[1], via.port))
            host = f"[{origin.host}]" if ":" in origin.host else origin.host
            await open_tunnel(sock, via, f"{host}:{origin.port}")
            _, conn = await loop.create_connection(
                lambda: _Connection(self, origin.key, loop),
                sock=sock,
                ssl=origin.ssl,
                server_hostname=origin.host,
            )
        except BaseException:
            sock.close()
            raise
        return conn

    def _put_back(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        if self._closed:
            conn.close()
            return
        idle = self._idle.get(conn.key)
        if idle is None:
            idle = self._idle[conn.key] = collections.deque()
        now = conn.loop.time()
        conn.idle_since = now
        idle.append(conn)
        # the oldest sit at the left: close the ones idle too long
        while idle[0].idle_since < now - self.idle_timeout:
            idle.popleft().close()

    def _forget(self, conn: _Connection) -> None:
        self._busy.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)


class Response:
    """One response: status, raw headers, and the body through `read()`."""

    __slots__ = ("status", "raw_headers", "_conn", "_released", "_unread")

    def __init__(self, conn: _Connection, status: int, raw_headers: list[tuple[bytes, bytes]]):
        self.status = status
        self.raw_headers = raw_headers
        """(name, value) as received, names in the server's case."""
        self._conn = conn
        self._released = False
        self._unread = b""

    async def read(self) -> bytes:
        """The body bytes that have arrived since the last read, waiting for some if none
        has; b"" at the end of the body. Raises `TimeoutError` or `UpstreamError` if the
        upstream stalls or breaks, after the bytes that came before the break."""
        if self._unread:
            data, self._unread = self._unread, b""
            return data
        if self._released:  # the connection may serve another request by now
            return b""
        conn = self._conn
        while True:
            if conn.chunks:
                return conn.take()
            if conn.complete:
                return b""
            if conn.error is not None:
                raise conn.error
            await conn.wait()

    def unread(self, data: bytes) -> None:
        """Give back bytes read: the next `read` returns them first (a body looked at before
        it is relayed)."""
        self._unread = data + self._unread

    def release(self) -> None:
        """Done with the response: the connection is pooled if the body was read to the end
        and keep-alive holds, else closed."""
        if self._released:
            return
        self._released = True
        self._conn.finish()

    def close(self) -> None:
        """Done with the response, whatever is left unread: the connection is closed."""
        if self._released:
            return
        self._released = True
        self._conn.close()


class _Connection(asyncio.Protocol):
    """One upstream connection; one exchange at a time."""

    def __init__(
        self, client: UpstreamClient, key: tuple[str, str, int], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.client = client
        self.key = key
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.fd = -1
        self.idle_since = 0.0
        self.closed = False
        self.parser = httptools.HttpResponseParser(self)
        self.keep_alive = False
        # the exchange in progress
        self.active = False
        self.unsent = False
        self.is_head = False
        self.got_bytes = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.head_size = 0
        self.complete = False
        self.message_done = False
        self.error: BaseException | None = None
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future[None] | None = None
        self.last_read = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.fd = sock.fileno()
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self.active or self.message_done:
            # bytes nobody asked for: the connection cannot be trusted with another request
            self.keep_alive = False
            if not self.active:
                self.close()
            return
        self.got_bytes = True
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("the upstream switched protocols"))
            self._abort()
        except httptools.HttpParserError as exc:
            if not self.complete:  # else: bytes after a HEAD answer's head, not its body
                self._fail(UpstreamProtocolError(f"invalid HTTP response: {exc}"))
            self._abort()
        else:
            if not self.head_done:  # a head spanning reads
                self.head_size += len(data)
                if self.head_size > MAX_RESPONSE_HEAD:
                    self._fail(
                        UpstreamProtocolError(
                            f"the response head is over {MAX_RESPONSE_HEAD} bytes and not ended"
                        )
                    )
                    self._abort()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost does the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.keep_alive = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.active and not self.complete:
            if exc is None and self.head_done and self._ends_at_close():
                self.complete = True
                self._wake()
            else:
                reason = str(exc) if exc else "the upstream closed the connection"
                error = UpstreamDisconnected(reason)
                if exc is not None:
                    error.__cause__ = exc
                self._fail(error)
        if not self.active:
            self.client._forget(self)

    def pause_writing(self) -> None:  # a large request body: the transport buffers it
        pass

    def resume_writing(self) -> None:
        pass

    # --- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        # after the head, httptools reports a chunked body's trailer fields here: they are not
        # headers (RFC 9110 6.5.1), and when they came in the head's read they joined them
        if not self.message_done and not self.head_done:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.message_done:
            return
        status = self.parser.get_status_code()
        if status < 200:
            return  # an interim answer (100 Continue...): dropped at its message end
        self.status = status
        self.head_done = True
        if self.is_head:  # no body follows, whatever the headers say
            self.complete = True
            self._done()
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > self.client.high_water and not self.paused:
            self.paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def on_message_complete(self) -> None:
        if self.message_done:  # a second response to one request
            self.keep_alive = False
            return
        if not self.head_done:  # the end of a 1xx
            self.headers = []
            return
        self.message_done = True
        # False for Connection: close, HTTP/1.0 without keep-alive, a body that ended at EOF
        self.keep_alive = self.parser.should_keep_alive()
        if not self.complete:  # (a HEAD answer is complete at its head)
            self.complete = True
            self._done()
            self._wake()

    # --- used by UpstreamClient and Response

    def reusable(self, idle_after: float) -> bool:
        if self.closed or not self.keep_alive or self.idle_since < idle_after:
            return False
        if self.fd >= 0:
            # anything to read on an idle connection is an EOF, a reset or garbage that the
            # event loop has not handed over yet
            poll = self.client._poll
            try:
                poll.register(self.fd, select.POLLIN)
                try:
                    if poll.poll(0):
                        return False
                finally:
                    poll.unregister(self.fd)
            except (OSError, ValueError):
                return False
        return True

    async def exchange(self, data: bytes, is_head: bool) -> Response:
        self.active = True
        self.unsent = False
        self.is_head = is_head
        self.got_bytes = False
        self.status = 0
        self.headers = []
        self.head_done = False
        self.head_size = 0
        self.complete = False
        self.message_done = False
        self.error = None
        self.keep_alive = False
        transport = self.transport
        assert transport is not None
        transport.write(data)
        if transport.is_closing():  # the write failed at once: nothing reached the upstream
            self.unsent = True
            self._fail(RequestUnsent("the connection was closed before the request"))
        else:
            self.last_read = self.loop.time()
            self.timer = self.loop.call_at(
                self.last_read + self.client.read_timeout, self._on_timer
            )
        try:
            while not self.head_done:
                if self.error is not None:
                    raise self.error
                await self.wait()
        except BaseException:  # an error, or the caller cancelled: the connection is done for
            self.close()
            raise
        return Response(self, self.status, self.headers)

    async def wait(self) -> None:
        waiter = self.waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self.waiter = None

    def take(self) -> bytes:
        chunks = self.chunks
        if not chunks:
            return b""
        self.chunks = []
        self.buffered = 0
        if self.paused:
            self.paused = False
            self.last_read = self.loop.time()
            self.transport.resume_reading()  # type: ignore[union-attr]
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def finish(self) -> None:
        if not (self.message_done and self.keep_alive) or self.closed:
            self.close()
            return
        self.active = False
        self.headers = []
        self.chunks = []
        self.buffered = 0
        if self.paused:
            self.paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        self.client._put_back(self)

    def close(self) -> None:
        self.keep_alive = False
        self.active = False
        self.chunks = []
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.client._forget(self)
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    # --- internals

    def _done(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self._done()
        self._wake()

    def _on_timer(self) -> None:
        self.timer = None
        if self.complete or not self.active:
            return
        due = self.last_read + self.client.read_timeout
        now = self.loop.time()
        if self.paused:  # the reader is behind: the upstream is not being waited for
            self.timer = self.loop.call_at(now + self.client.read_timeout, self._on_timer)
            return
        if now < due:  # bytes came meanwhile
            self.timer = self.loop.call_at(due, self._on_timer)
            return
        what = "the response body" if self.head_done else "the response head"
        self._fail(TimeoutError(f"no data for {self.client.read_timeout:g} s waiting for {what}"))
        self._abort()

    def _abort(self) -> None:
        """Drop the connection now; the exchange keeps its state for the reader."""
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def _ends_at_close(self) -> bool:
        """A body without Content-Length or chunked framing ends when the connection does."""
        if self.status in (204, 304):
            return False
        for name, value in self.headers:
            lname = name.lower()
            if lname == b"content-length":
                return False
            if lname == b"transfer-encoding" and b"chunked" in value.lower():
                return False
        return True


def _request_bytes(
    origin: Origin, method: str, target: str, headers: list[tuple[str, str]], body: bytes
) -> bytes:
    if not target.startswith("/"):
        target = "/" + target
    if " " in target:
        raise UnsendableRequest("a space in the request path")
    lines = [f"{method} {target} HTTP/1.1", "Host: " + origin.host_header]
    if origin.via is not None and origin.ssl is None:  # to the proxy: the absolute URL
        lines[0] = f"{method} http://{origin.host_header}{target} HTTP/1.1"
        if origin.via.authorization is not None:
            lines.append("Proxy-Authorization: " + origin.via.authorization)
    authorization = origin.authorization
    for name, value in headers:
        lname = name.lower()
        if lname in _OWN_HEADERS:
            continue
        if lname == "authorization":
            authorization = None
        lines.append(f"{name}: {value}")
    if authorization is not None:
        lines.append("Authorization: " + authorization)
    if body or method not in _NO_LENGTH_WHEN_EMPTY:
        lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines)
    # a CR or LF inside a name, value or path would start a line of its own
    if (
        _FORBIDDEN.search(head) is not None
        or head.count("\n") != len(lines) - 1
        or head.count("\r") != len(lines) - 1
    ):
        raise UnsendableRequest("a control character in the request line or a header")
    try:
        encoded = (head + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError as exc:
        raise UnsendableRequest(f"a character HTTP/1.1 cannot carry: {exc}") from None
    return encoded + body if body else encoded


def _reached(origin: Origin) -> str:
    """The upstream as a connect error names it, and the proxy it went through."""
    if origin.via is None:
        return origin.host_header
    return f"{origin.host_header} through the proxy {origin.via.shown}"


def _replayable(method: str, headers: list[tuple[str, str]]) -> bool:
    if method in IDEMPOTENT:
        return True
    return any(name.lower() in _IDEMPOTENCY_HEADERS for name, _ in headers)
