"""One system call for what a connection's response writes in one turn of the event loop.

uvicorn writes a response's head when the app sends `http.response.start` and its body when
the app sends `http.response.body`: two `send` calls for every non-streamed answer, each a
trip through the kernel's TCP stack and a wake-up of the client. Held until the loop's
current turn ends, writes made in that turn go out together: a head with its body, or
several stream events relayed from one upstream read. Nothing waits longer than that turn.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from llmtap.proxy.errors import openai_error
from llmtap.proxy.http10 import unframed_for_http10
from llmtap.proxy.upgrade_ignored import without_upgrade


class CoalescingTransport:
    """A transport whose writes are joined until the end of the event loop's turn."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if not data:
            return
        pending = self._pending
        if pending is None:
            self._pending = [bytes(data)]
            self._loop.call_soon(self.flush)
        else:
            pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Hand what was written to the real transport now."""
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        # what was written before would have reached the kernel already without the hold
        self.flush()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        pending = self._pending
        return self._transport.get_write_buffer_size() + (sum(map(len, pending)) if pending else 0)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:  # the rest of the transport's interface, as is
        return getattr(self._transport, name)


MAX_REQUEST_HEAD = 64 * 1024
"""Bytes of a request head past which it is answered with 431 (httptools has no limit, and
grows a header's value with `bytes +=`: 48 MB of one header held the event loop for seconds)."""
REQUEST_HEAD_TIMEOUT = 30.0
"""Seconds a connection may take to send a request head (counted from its first byte, or
from the connection's start for its first request): slowloris holds file descriptors."""
LINGER_AFTER_REFUSAL = 5.0
"""Seconds a refused head's connection is read and dropped before it closes: closed with
unread bytes, the kernel would reset it, and the client would never read the answer."""

ON_LOST = "llmtap_on_lost"
"""The attribute of uvicorn's request cycle that names what to call when the client leaves."""


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing through a `CoalescingTransport`; an HTTP/1.0
    request's answer without a length goes out unframed (`llmtap.proxy.http10`), a request
    offering an upgrade is read as HTTP/1.1 (`llmtap.proxy.upgrade_ignored`), and a request
    that is not HTTP gets its 400 in OpenAI's shape."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        self.head_size = 0
        self.head_open = False  # a request head has begun and not ended
        self.in_body = False  # between a request's head and its end: reads are body
        self.line_ended = False  # the last read ended a header line (`without_upgrade`)
        self.refused = False  # its answer went out: what comes is dropped until the close
        # (a connection that never sends a byte holds a descriptor as well as a slow one)
        self.head_timer: asyncio.TimerHandle | None = self.loop.call_later(
            REQUEST_HEAD_TIMEOUT, self._head_too_slow
        )

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        # only a read that finds a head begun and leaves it unfinished is all head: the read
        # that begins one may end the last request's body (pipelined), and was counted whole
        continuing = self.head_open
        if not self.in_body:  # a read that begins with a head (or the rest of one)
            data = without_upgrade(data, continuing and self.line_ended)
            self.line_ended = data.endswith(b"\n")
        super().data_received(data)
        if self.head_open and not self.transport.is_closing():  # a head spanning reads
            if continuing:
                self.head_size += len(data)
            if self.head_size > MAX_REQUEST_HEAD:
                self._refuse_head(
                    431,
                    "request_head_too_large",
                    f"the request head is over {MAX_REQUEST_HEAD} bytes",
                )
            elif self.head_timer is None:
                self.head_timer = self.loop.call_later(REQUEST_HEAD_TIMEOUT, self._head_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_open = True
        self.head_size = 0

    def on_headers_complete(self) -> None:
        self.head_open = False
        self.in_body = True
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope and self.scope["http_version"] == "1.0":
            unframed_for_http10(cycle)

    def on_message_complete(self) -> None:
        self.in_body = False
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        cycle = self.cycle
        super().connection_lost(exc)
        # a handler waiting for the upstream's head asked to hear of the client leaving (it
        # reads `cycle.disconnected` between pieces once the answer flows)
        on_lost = getattr(cycle, ON_LOST, None) if cycle is not None else None
        if on_lost is not None and cycle.disconnected:  # type: ignore[union-attr]
            on_lost()

    def send_400_response(self, msg: str) -> None:
        # a request that is not HTTP (bad framing, Content-Length with Transfer-Encoding...):
        # the error in OpenAI's shape, as every other llmtap answers, not uvicorn's plain text
        body = openai_error(400, "invalid_request_error", f"llmtap: {msg}", "invalid_http")
        head = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
        self.transport.write(
            head + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body
        )
        self.transport.close()

    def _head_too_slow(self) -> None:
        self.head_timer = None
        if self._answering():  # (reading waits for that answer: a pipelined head is not late)
            self.head_timer = self.loop.call_later(REQUEST_HEAD_TIMEOUT, self._head_too_slow)
            return
        if not self.head_open:  # it never began a request: nothing to answer
            self.transport.close()
            return
        seconds = f"{REQUEST_HEAD_TIMEOUT:g}"
        self._refuse_head(408, "request_timeout", f"the request head took over {seconds} s")

    def _refuse_head(self, status: int, code: str, message: str) -> None:
        """Answer a head that is not served, in OpenAI's shape, then read and drop what the
        client still sends for a while (or until it closes) before closing: a client that
        is still sending would otherwise get a reset instead of the answer."""
        self.head_open = False
        self.refused = True
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        if self._answering():  # an answer ahead of it is going out: none may cut into it
            self.transport.close()
            return
        body = openai_error(status, "invalid_request_error", f"llmtap: {message}", code)
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body)) + body
        )
        self.transport.write_eof()
        self.loop.call_later(LINGER_AFTER_REFUSAL, self.transport.close)

    def _answering(self) -> bool:
        """An earlier request of this connection is still being answered (pipelined)."""
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete


_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
