"""Stream faults: a streamed answer, forwarded or replayed, cut after its first events as its
client sees it (`llmtap-fault: stream-error[=N]` or `stream-cut[=N]`, N 1 by default).

`StreamCut` stands between the relay (or the replayer) and the server. Its `send` passes the
answer's head and its first N events (complete ones: a partial event is held until it ends),
then ends the stream with an error event, as OpenAI ends a stream that fails (stream-error),
or closes the connection with no `[DONE]` and no end of the chunked body (stream-cut), and
drops the rest. The cut comes before `data: [DONE]` whatever N says, or at the body's end.

Behind it the relay reads the upstream to its end and records the answer whole: the request
was made, and replay cuts that recording again the same way. Its span is an ERROR marked
`llmtap.fault`. A replayed answer that was cut is recorded as a failure (replay records no
answer of its own). Its `receive` hides the client's leaving after the cut from the relay,
which would take it for a client gone and record a failure.

A compressed stream (a recording made with a `Content-Encoding`: forwarded ones llmtap adds
usage to are asked for uncompressed) cannot be read for its events: it is cut after N pieces,
and stream-error cuts it too (an error event cannot be added to it).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson

from llmtap.proxy.faults import Fault, close_connection, error_body
from llmtap.recorder.recording import FAULT_REASON, Recording

Message = dict[str, Any]
Send = Any
Receive = Any

_LINE_END = rb"(?:\r\n|\r(?!\n)|\n)"
_EVENT_END = re.compile(_LINE_END + _LINE_END)  # a line end, then an empty line
_DONE = (b"data: [DONE]", b"data:[DONE]")


class StreamCut:
    def __init__(self, fault: Fault, send: Send, receive: Receive, cycle: Any, rec: Recording):
        self.fault = fault
        self._send = send
        self._receive = receive
        self._cycle = cycle
        self._rec = rec
        self._left = fault.events
        self._tail = b""
        self._active = False  # the answer is a stream (anything else passes untouched)
        self._identity = True
        self.done = False
        """The client's stream was cut; whatever is sent after is dropped."""
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.sent: list[bytes] = []
        """The body the client got (recorded when the answer was replayed)."""

    async def send(self, message: Message) -> None:
        if self.done:
            return
        if message["type"] == "http.response.start":
            message = self._start(message)
        elif self._active and message["type"] == "http.response.body":
            await self._body(message)
            return
        await self._send(message)

    async def receive(self) -> Message:
        message: Message = await self._receive()
        if self.done and message["type"] == "http.disconnect":
            await asyncio.Event().wait()  # until cancelled: the relay records the answer whole
        return message

    def replayed(self, rec: Recording) -> Recording | None:
        """The recording of a replayed answer the client got cut, or None if it was not cut."""
        if not self.done:
            return None
        rec.respond(self.status, self.headers)
        for piece in self.sent:
            rec.feed(piece)
        return rec.fail(f"{FAULT_REASON}: {self.fault} (a replayed answer cut)")

    def _start(self, message: Message) -> Message:
        self.status = message["status"]
        content_type = encoding = b""
        for name, value in message["headers"]:
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))
            if name == b"content-type":
                content_type = value
            elif name == b"content-encoding":
                encoding = value.strip().lower()
        self._active = content_type.startswith(b"text/event-stream")
        if not self._active:
            self._rec.fault = None  # an error, not a stream: it goes to the client as it is
            return message
        self._identity = encoding in (b"", b"identity")
        headers = [*message["headers"], (b"llmtap-fault", self.fault.kind.encode())]
        return {**message, "headers": headers}

    async def _body(self, message: Message) -> None:
        buffer = self._tail + message.get("body", b"")
        passed, cut = self._events(buffer) if self._identity else self._pieces(buffer)
        if cut or not message.get("more_body", False):
            await self._cut(buffer[:passed])
            return
        self._tail = buffer[passed:]
        if passed:
            self.sent.append(buffer[:passed])
            await self._send(
                {"type": "http.response.body", "body": buffer[:passed], "more_body": True}
            )

    def _events(self, buffer: bytes) -> tuple[int, bool]:
        """How many bytes of `buffer` are complete events to pass, and whether the cut comes
        right after them."""
        passed = 0
        if self._left == 0:
            return 0, True
        for match in _EVENT_END.finditer(buffer):
            if buffer[passed : match.start()].lstrip(b"\r\n").startswith(_DONE):
                return passed, True
            passed = match.end()
            self._left -= 1
            if self._left == 0:
                return passed, True
        return passed, False

    def _pieces(self, buffer: bytes) -> tuple[int, bool]:
        if self._left == 0:
            return 0, True
        self._left -= 1
        return len(buffer), self._left == 0

    async def _cut(self, prefix: bytes) -> None:
        self.done = True
        if self.fault.kind == "stream-error" and self._identity:
            body = prefix + _error_event(self._rec.path, self.fault.events - self._left)
            self.sent.append(body)
            await self._send({"type": "http.response.body", "body": body, "more_body": False})
            return
        self.sent.append(prefix)
        if prefix:
            await self._send({"type": "http.response.body", "body": prefix, "more_body": True})
        await close_connection(self._cycle)


def _error_event(path: str, passed: int) -> bytes:
    """The event OpenAI ends a failing stream with: `data: {"error": ...}` (chat, legacy
    completions), or a Responses stream's `error` event (`passed` events before it, numbered
    from 0: its `sequence_number`)."""
    if path.startswith("/responses"):
        error = orjson.loads(error_body(500))["error"]
        payload = orjson.dumps(
            {
                "type": "error",
                "code": error["type"],  # (OpenAI's error event has no type of its own)
                "message": error["message"],
                "param": None,
                "sequence_number": passed,
            }
        )
        return b"event: error\ndata: " + payload + b"\n\n"
    return b"data: " + error_body(500) + b"\n\n"
