"""Running an ASGI app on uvicorn: in the foreground for `llmtap serve`, or in a thread.

A socket bound up front makes `--port 0` work: the real port is known before the first
request, printed for the user, and handed to tests.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import uvicorn
import uvloop

from llmtap.proxy.coalescing import CoalescingHttpToolsProtocol


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, which says it is up (`announce`) once its app has started: the writer
    process running, the database open. (A banner printed before said "listening" for a
    server that then failed to open its database.)"""

    def __init__(self, config: uvicorn.Config, announce: Callable[[], None] | None) -> None:
        super().__init__(config)
        self.announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)  # (exits the process if the app failed to start)
        if self.announce is not None:
            self.announce()


def make_server(
    app: Any,
    log_level: str = "warning",
    announce: Callable[[], None] | None = None,
    **config: Any,
) -> uvicorn.Server:
    return _Server(
        uvicorn.Config(
            app, loop="uvloop", http=CoalescingHttpToolsProtocol, log_level=log_level, **config
        ),
        announce,
    )


class ServerThread:
    """An ASGI app served on 127.0.0.1 (a free port by default) from a background thread."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        self.sock = bind_socket(host, port)
        self.url = url_of(self.sock)
        self.server = make_server(app, **config)
        self._thread = threading.Thread(target=self._run, name=f"uvicorn {self.url}", daemon=True)

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self.server.serve(sockets=[self.sock]))

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread.start()
        waited = 0.0
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"server at {self.url} failed to start")
            threading.Event().wait(0.01)
            waited += 0.01
            if waited > timeout:
                raise TimeoutError(f"server at {self.url} did not start in {timeout}s")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
