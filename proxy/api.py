"""The read API of SPEC section 3, served by the proxy itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import Receive, Scope, Send

from llmtap.proxy import __version__
from llmtap.proxy.config import Settings
from llmtap.proxy.context import normalise_trace_id
from llmtap.proxy.errors import openai_error
from llmtap.proxy.trace_route import TRACE_ID
from llmtap.proxy.ui_queries import whole_number
from llmtap.proxy.upstream_client import shown_url
from llmtap.recorder.reader import TraceQuery, TraceReader, read_page_token

LIST_AT_MOST = 1000
"""Traces in one `GET /api/traces` page at most (`next_offset` says where the next begins)."""


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def _error(
    status: int,
    message: str,
    headers: Mapping[str, str] | None = None,
    param: str | None = None,
) -> JSONResponse:
    body = orjson.loads(openai_error(status, "invalid_request_error", message))
    body["error"]["param"] = param
    return JSONResponse(body, status_code=status, headers=headers)


class _BadParam(ValueError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class ApiNotFound(BaseRoute):
    """Unknown `/api` paths answer a JSON 404 in OpenAI's shape, not Starlette's plain text.

    It matches `/api` paths only partially, and the router takes a partial match only when no
    route matched fully: it never shadows a route that another module adds under `/api`.
    It then routes again without itself, so that slash redirects work as before and a 405
    (a path known, its method not) is JSON too.
    """

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/api" or path.startswith("/api/")):
            return Match.PARTIAL, {}
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        others = [route for route in scope["router"].routes if route is not self]
        try:
            await Router(others, default=self.not_found)(scope, receive, send)
        except HTTPException as exc:  # the 405 of a route that has the path but not the method
            await _error(exc.status_code, exc.detail, exc.headers)(scope, receive, send)

    async def not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"llmtap has no API at {scope['method']} {scope['path']}"
        await _error(404, message)(scope, receive, send)


def _int_param(request: Request, name: str, default: int, upper: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = whole_number(raw, name)
    except ValueError as exc:
        raise _BadParam(name, str(exc)) from None
    if value < 0:
        raise _BadParam(name, f"{name} must not be negative")
    return min(value, upper)


async def trace_response(reader: TraceReader, sent: str) -> Response:
    """GET /api/traces/{trace_id}: the trace `sent` names, or a 404. The id as a client sent it
    in llmtap-trace-id finds it, as the stored id and a unique prefix of it do (as `llmtap
    trace` finds them)."""
    trace = await run_in_threadpool(reader.find_trace, normalise_trace_id(sent), sent)
    if trace is None:
        return _error(404, f"no trace with id {sent}")
    # a long agent run is tens of MB of JSON: made in the thread pool, not on the event loop
    body = await run_in_threadpool(orjson.dumps, trace, None, orjson.OPT_NON_STR_KEYS)
    return Response(body, media_type="application/json")


def _page_token_param(request: Request) -> tuple[int, int] | None:
    raw = request.query_params.get("page_token")
    if not raw:
        return None
    try:
        return read_page_token(raw)
    except ValueError as exc:
        raise _BadParam("page_token", str(exc)) from None


def api_routes(
    settings: Settings,
    reader: TraceReader,
    health: Callable[[], dict[str, Any]] | None,
    replay: Callable[[], dict[str, Any]] | None = None,
) -> list[BaseRoute]:
    async def get_health(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "version": __version__,
                "mode": str(settings.mode),
                "upstream": shown_url(settings.upstream),  # without its credentials
                "db": settings.db,
                "store": health() if health is not None else None,
                "replay": replay() if replay is not None else None,
            }
        )

    async def list_traces(request: Request) -> JSONResponse:
        params = request.query_params
        try:
            query = TraceQuery(
                experiment=params.get("experiment") or None,
                session=params.get("session") or None,
                status=params.get("status") or None,
                limit=_int_param(request, "limit", 50, LIST_AT_MOST),
                offset=_int_param(request, "offset", 0, 1 << 62),
                after=_page_token_param(request),
            )
        except _BadParam as exc:
            return _error(400, f"bad query parameter: {exc}", param=exc.name)
        # whether a next page exists, said rather than left to guess (a `limit` over
        # LIST_AT_MOST gets LIST_AT_MOST)
        traces, token = await run_in_threadpool(reader.list_page, query)
        return JSONResponse(
            {
                "traces": traces,
                # the next page's offset, counted from the first trace (or the token's place):
                # new traces arriving meanwhile shift it, the token's place stays
                "next_offset": query.offset + query.limit if token is not None else None,
                "next_page_token": token,
            }
        )

    async def get_trace(request: Request) -> Response:
        return await trace_response(reader, request.path_params["trace_id"])

    return [
        Route("/api/health", get_health),
        Route("/api/traces", list_traces),
        # a name sent in llmtap-trace-id may hold slashes (`eval/run-1`): after the routes
        # below it (`/api/traces/{TRACE_ID}/models`), which must come first
        Route(f"/api/traces/{TRACE_ID}", get_trace),
    ]
