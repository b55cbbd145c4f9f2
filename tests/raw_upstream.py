"""An upstream that answers with exact bytes and keeps what it was sent: for the shapes the
simulator does not make (a stream with a Content-Length, trailers, odd paths)."""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class Received:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)


@dataclass
class RawUpstream:
    url: str
    received: list[Received] = field(default_factory=list)


Answer = Callable[[Received], bytes]


@contextmanager
def raw_upstream(answer: Answer) -> Iterator[RawUpstream]:
    """A keep-alive HTTP/1.1 server on a free port; `answer(request)` is the whole raw reply."""
    upstream = RawUpstream("")

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while line := self.rfile.readline():
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers = []
                while (raw := self.rfile.readline()) not in (b"\r\n", b""):
                    name, _, value = raw.decode("latin-1").partition(":")
                    headers.append((name.strip().lower(), value.strip()))
                length = int(dict(headers).get("content-length", 0))
                request = Received(method, target, headers, self.rfile.read(length))
                upstream.received.append(request)
                self.wfile.write(answer(request))
                self.wfile.flush()

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    # a connection reset between the poll and the accept left a blocking accept() waiting
    # for ever, and `shutdown()` with it (a full run hung there once): not blocking, such an
    # accept fails and the loop goes on (accepted sockets still block)
    server.socket.setblocking(False)
    upstream.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def json_reply(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n".encode()
        + extra
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )


def chat_completion_body(text: str, input_tokens: int = 1, output_tokens: int = 1) -> dict:
    """A non-streamed `chat.completion` answering `text`, as OpenAI writes one."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": input_tokens,
            "completion_tokens": output_tokens,
            "total_tokens": input_tokens + output_tokens,
        },
    }
