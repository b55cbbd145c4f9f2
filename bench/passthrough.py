"""Reference rows: a naive starlette + uvicorn pass-through, with httpx or aiohttp as client.

What a developer writes in ten minutes: one starlette route, the request body read whole,
the upstream answer relayed through `StreamingResponse`, one shared pooled client. uvicorn
with uvloop and httptools, access log off — the same server settings as llmtap.

    python bench/passthrough.py --client httpx|aiohttp --upstream http://127.0.0.1:PORT/v1
    # prints "passthrough listening on http://127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import socket

import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def httpx_app(upstream: str) -> Starlette:
    import httpx

    # the default pool (100 connections, 20 kept alive) would churn connections at 32
    # concurrent; keep-alive raised so that the row measures httpx, not TCP handshakes
    client = httpx.AsyncClient(
        timeout=None, limits=httpx.Limits(max_connections=200, max_keepalive_connections=200)
    )

    async def proxy(request: Request) -> StreamingResponse:
        body = await request.body()
        headers = [(k, v) for k, v in request.headers.items() if k not in HOP]
        url = upstream + "/" + request.path_params["path"]
        req = client.build_request(
            request.method, url, content=body, headers=headers, params=request.url.query or None
        )
        resp = await client.send(req, stream=True)
        out = {k: v for k, v in resp.headers.items() if k not in HOP}
        if "content-length" in resp.headers:
            out["content-length"] = resp.headers["content-length"]
        return StreamingResponse(
            resp.aiter_raw(), resp.status_code, out, background=BackgroundTask(resp.aclose)
        )

    return Starlette(routes=[Route("/v1/{path:path}", proxy, methods=METHODS)])


def aiohttp_app(upstream: str) -> Starlette:
    import aiohttp

    state: dict[str, aiohttp.ClientSession] = {}

    async def session() -> aiohttp.ClientSession:
        if "s" not in state:
            state["s"] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return state["s"]

    async def proxy(request: Request) -> StreamingResponse:
        body = await request.body()
        headers = [(k, v) for k, v in request.headers.items() if k not in HOP]
        url = upstream + "/" + request.path_params["path"]
        if request.url.query:
            url += "?" + request.url.query
        s = await session()
        resp = await s.request(request.method, url, data=body or None, headers=headers)
        out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP}
        if "Content-Length" in resp.headers:
            out["content-length"] = resp.headers["Content-Length"]
        return StreamingResponse(
            resp.content.iter_any(), resp.status, out, background=BackgroundTask(resp.release)
        )

    return Starlette(routes=[Route("/v1/{path:path}", proxy, methods=METHODS)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--client", choices=["httpx", "aiohttp"], default="httpx")
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    upstream = args.upstream.rstrip("/")
    app = httpx_app(upstream) if args.client == "httpx" else aiohttp_app(upstream)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(2048)
    print(f"passthrough listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
