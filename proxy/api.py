"""The read API of SPEC section 3, served by the proxy itself."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmtap.proxy import __version__
from llmtap.proxy.config import Settings
from llmtap.proxy.errors import openai_error
from llmtap.recorder.batch_writer import WriterHealth
from llmtap.recorder.reader import TraceQuery, TraceReader


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        orjson.loads(openai_error(status, "invalid_request_error", message)), status_code=status
    )


def _int_param(request: Request, name: str, default: int, upper: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    value = int(raw)  # ValueError is answered as a 400 by the caller
    if value < 0:
        raise ValueError(f"{name} must not be negative")
    return min(value, upper)


def api_routes(settings: Settings, reader: TraceReader, health: WriterHealth | None) -> list[Route]:
    async def get_health(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "version": __version__,
                "mode": str(settings.mode),
                "upstream": settings.upstream,
                "db": settings.db,
                "store": health.as_dict() if health is not None else None,
            }
        )

    async def list_traces(request: Request) -> JSONResponse:
        params = request.query_params
        try:
            query = TraceQuery(
                experiment=params.get("experiment") or None,
                session=params.get("session") or None,
                status=params.get("status") or None,
                limit=_int_param(request, "limit", 50, 1000),
                offset=_int_param(request, "offset", 0, 1 << 62),
            )
        except ValueError as exc:
            return _error(400, f"bad query parameter: {exc}")
        traces = await run_in_threadpool(reader.list_traces, query)
        return JSONResponse({"traces": traces})

    async def get_trace(request: Request) -> JSONResponse:
        trace_id = request.path_params["trace_id"]
        trace = await run_in_threadpool(reader.get_trace, trace_id)
        if trace is None:
            return _error(404, f"no trace with id {trace_id}")
        return JSONResponse(trace)

    return [
        Route("/api/health", get_health),
        Route("/api/traces", list_traces),
        Route("/api/traces/{trace_id}", get_trace),
    ]
