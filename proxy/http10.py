"""Answers to HTTP/1.0 clients: a body of unknown length runs to the connection's close.

uvicorn frames every response that has no Content-Length with `Transfer-Encoding: chunked`,
whatever the request's version; an HTTP/1.0 client knows no chunked coding (RFC 9112 6.1:
a server must not send it one) and reads the chunk sizes as part of the body, so a relayed
stream reached it as `2a8\r\ndata: ...` and never ended in `data: [DONE]`. For such an answer
the cycle writes the head without that framing and the body as it comes, then closes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]


def unframed_for_http10(cycle: Any) -> None:
    """Make one uvicorn request cycle of an HTTP/1.0 request send an answer that has no length
    of its own unframed (its `send` is replaced on the instance, before the app runs)."""
    framed: Send = cycle.send
    unframed = False

    async def send(message: dict[str, Any]) -> None:
        nonlocal unframed
        kind = message["type"]
        if kind == "http.response.start" and not cycle.response_started:
            names = {name.lower() for name, _ in message.get("headers", ())}
            if (
                b"content-length" not in names
                and cycle.scope["method"] != "HEAD"
                and message["status"] not in (204, 304)
            ):
                unframed = True
                cycle.chunked_encoding = False  # uvicorn then adds no chunked framing
                cycle.keep_alive = False  # and says `connection: close`: the close ends the body
        elif unframed and kind == "http.response.body" and not cycle.response_complete:
            if cycle.flow.write_paused and not cycle.disconnected:
                await cycle.flow.drain()
            if cycle.disconnected:
                return
            body = message.get("body", b"")
            if body:
                cycle.transport.write(body)
            if not message.get("more_body", False):
                cycle.response_complete = True
                cycle.message_event.set()
                cycle.transport.close()
                cycle.on_response()
            return
        await framed(message)

    cycle.send = send
