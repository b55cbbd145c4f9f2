"""An offline, deterministic simulator of the OpenAI HTTP API (a Starlette ASGI app).

Used as the upstream in llmtap's tests, by ``llmtap demo`` and by benchmarks::

    from llmtap.proxy.simulator import create_simulator
    uvicorn.run(create_simulator(), host="127.0.0.1", port=8765)   # base URL .../v1

or ``python -m llmtap.proxy.simulator --port 8765``.

Endpoints under ``/v1``: chat/completions, completions, embeddings, responses (streamed and
not), models, models/{id}. Anything else under /v1 is an OpenAI-style 404. Any
``Authorization`` is accepted. Per-request behaviour is chosen with headers (never
``llmtap-*``, which the proxy consumes):

``x-simulator-fault``  comma-separated list of faults (see ``parse_faults``)
``x-simulator-chunks`` N: exactly N content pieces (text padded / merged, JSON split)
``x-simulator-compress`` gzip | deflate | br | zstd | auto, optionally ending in ``!``:
    compress the body when the request's Accept-Encoding allows it (``!``: always)

``GET /_simulator/requests`` lists the last requests seen under /v1 (method, path, query,
headers, body), ``DELETE`` clears them; ``GET /_simulator/health`` answers ``{"status": "ok"}``.
Magic words in the last user message (EMPTY_CHOICES, EMPTY_STREAM, ERROR_MID_STREAM,
AZURE_ANNOTATIONS, LIST_CONTENT, REFUSAL) trigger MLflow's mock-server edge cases; USAGE_ALWAYS
streams usage on the last content chunk whether asked or not, as some providers do.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import time
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.routing import Route

from .simulator_chat import chat_completion
from .simulator_completions import completion
from .simulator_embeddings import MODEL_LIST, MODEL_OBJECTS, embeddings
from .simulator_faults import (
    NO_FAULTS,
    Encoder,
    Faults,
    abort_connection,
    choose_encoding,
    compress,
    parse_faults,
)
from .simulator_responses import responses
from .simulator_text import BadRequest, SSEStream, error_body, request_id, status_error

REQUEST_LOG_SIZE = 256
JSON_TYPE = b"application/json"
SSE_TYPE = b"text/event-stream; charset=utf-8"
GARBAGE = b"<html><body><h1>502 Bad Gateway</h1></body></html> -- this is not JSON {"
PARSE_ERROR = error_body(
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please contact "
    "us through our help center at help.openai.com.)"
)
NO_MODEL = error_body("you must provide a model parameter")
STATIC_HEADERS = [
    (b"openai-organization", b"user-simulator"),
    (b"openai-project", b"proj_simulator"),
    (b"openai-version", b"2020-10-01"),
    (b"openai-processing-ms", b"12"),
    (b"x-ratelimit-limit-requests", b"10000"),
    (b"x-ratelimit-limit-tokens", b"30000000"),
    (b"x-ratelimit-remaining-requests", b"9999"),
    (b"x-ratelimit-remaining-tokens", b"29999990"),
    (b"x-ratelimit-reset-requests", b"6ms"),
    (b"x-ratelimit-reset-tokens", b"0s"),
    (b"set-cookie", b"__cf_bm=simulated-cookie; path=/; HttpOnly; Secure; SameSite=None"),
]
ENDPOINTS = {
    ("POST", "/chat/completions"): chat_completion,
    ("POST", "/completions"): completion,
    ("POST", "/embeddings"): embeddings,
    ("POST", "/responses"): responses,
}


# --------------------------------------------------------------------------------- app


class SimulatorApp(Starlette):
    """Starlette, plus the server's raw ``send`` kept in the scope (for connection resets)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["simulator.send"] = send
        await super().__call__(scope, receive, send)


async def _read_body(receive: Any) -> bytes:
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def _send_json(
    send: Any, status: int, obj: Any, extra: list | None = None, content_type: bytes = JSON_TYPE
) -> None:
    data = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(data))]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class _V1:
    """The ``/v1/...`` ASGI endpoint: request log, faults, dispatch, sending."""

    def __init__(self, log: collections.deque) -> None:
        self.log = log
        self.counter = itertools.count(1)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        raw = await _read_body(receive)
        method = scope["method"]
        path = scope["path"][3:] or "/"
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            key, value = k.decode("latin-1").lower(), v.decode("latin-1")
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        body: Any = None
        parsed = False
        if raw:
            try:
                body, parsed = orjson.loads(raw), True
            except orjson.JSONDecodeError:
                body = raw.decode("utf-8", "replace")
        self.log.append(
            {
                "method": method,
                "path": scope["path"],
                "query": scope.get("query_string", b"").decode("latin-1"),
                "headers": headers,
                "body": body,
            }
        )
        seq = next(self.counter)
        common = [(b"x-request-id", request_id(seq).encode()), *STATIC_HEADERS]
        cycle = getattr(scope.get("simulator.send"), "__self__", None)
        try:
            faults = parse_faults(headers.get("x-simulator-fault"))
            encoding = choose_encoding(headers)
            chunks = headers.get("x-simulator-chunks")
            forced = None
            if chunks is not None:
                if not (chunks.strip().isascii() and chunks.strip().isdigit()) or int(chunks) < 1:
                    raise BadRequest("x-simulator-chunks must be a positive integer.")
                forced = int(chunks)
        except BadRequest as exc:
            await _send_json(send, exc.status, exc.body, common)
            return
        if faults.slow_ms:
            await asyncio.sleep(faults.slow_ms / 1000)
        if faults.reset_before:
            await abort_connection(cycle)
            return
        if faults.status:
            extra = list(common)
            if faults.status == 429:
                extra += [(b"retry-after", b"1"), (b"x-ratelimit-remaining-requests", b"0")]
            await _send_json(send, faults.status, status_error(faults.status), extra)
            return
        if faults.garbage:
            await _send_json(send, 200, GARBAGE, common)
            return

        result: Any
        endpoint = ENDPOINTS.get((method, path))
        if endpoint is not None:
            if not parsed or not isinstance(body, dict):
                await _send_json(send, 400, PARSE_ERROR, common)
                return
            if not isinstance(body.get("model"), str) or not body["model"]:
                await _send_json(send, 400, NO_MODEL, common)
                return
            try:
                result = endpoint(body, seq, int(time.time()), forced)
            except BadRequest as exc:
                await _send_json(send, exc.status, exc.body, common)
                return
        elif method == "GET" and path == "/models":
            result = MODEL_LIST
        elif method == "GET" and path.startswith("/models/") and len(path) > 8:
            model = MODEL_OBJECTS.get(path[8:])
            if model is None:
                await _send_json(
                    send,
                    404,
                    error_body(
                        f"The model '{path[8:]}' does not exist or you do not have access to it.",
                        code="model_not_found",
                    ),
                    common,
                )
                return
            result = model
        else:
            await _send_json(
                send,
                404,
                error_body(f"Invalid URL ({method} {scope['path']})", code="unknown_url"),
                common,
            )
            return

        if isinstance(result, SSEStream):
            await self._stream(send, cycle, result, faults, encoding, common)
        else:
            await self._json(send, cycle, result, faults, encoding, common)

    async def _json(
        self, send: Any, cycle: Any, obj: Any, faults: Faults, encoding: str | None, common: list
    ) -> None:
        data = orjson.dumps(obj)
        headers = [(b"content-type", JSON_TYPE)]
        if encoding:
            data = compress(encoding, data)
            headers.append((b"content-encoding", encoding.encode()))
        headers.append((b"content-length", b"%d" % len(data)))
        headers.extend(common)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if faults.reset_mid or faults.stall_ms:
            half = len(data) // 2
            await send({"type": "http.response.body", "body": data[:half], "more_body": True})
            if faults.reset_mid:
                await abort_connection(cycle)
                return
            await asyncio.sleep(faults.stall_ms / 1000)
            data = data[half:]
        await send({"type": "http.response.body", "body": data})

    async def _stream(
        self,
        send: Any,
        cycle: Any,
        stream: SSEStream,
        faults: Faults,
        encoding: str | None,
        common: list,
    ) -> None:
        events = stream.events
        if faults is not NO_FAULTS:
            events = list(events)
            if faults.no_done and stream.terminal:
                events.pop()
            mid = min(len(events), max(1, len(events) // 2))
            if faults.error_event:
                events = events[:mid] + [stream.error_event]
            if faults.malformed:
                events.insert(mid, stream.malformed_event)
        else:
            mid = -1
        headers = [(b"content-type", SSE_TYPE)]
        encoder = None
        if encoding:
            encoder = Encoder(encoding)
            headers.append((b"content-encoding", encoding.encode()))
        headers.extend(common)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        delay = faults.delay_ms / 1000
        last = len(events) - 1
        for index, event in enumerate(events):
            if index == mid:
                if faults.reset_mid:
                    await abort_connection(cycle)
                    return
                if faults.stall_ms:
                    await asyncio.sleep(faults.stall_ms / 1000)
            if cycle is not None and getattr(cycle, "disconnected", False):
                return
            if encoder is not None:
                event = encoder.chunk(event)
            await send({"type": "http.response.body", "body": event, "more_body": True})
            if delay and index != last:
                await asyncio.sleep(delay)
        if faults.reset_mid:  # a stream too short to have a middle
            await abort_connection(cycle)
            return
        if faults.end_ms:
            await asyncio.sleep(faults.end_ms / 1000)
        tail = encoder.finish() if encoder is not None else b""
        await send({"type": "http.response.body", "body": tail})


class _RequestLog:
    def __init__(self, log: collections.deque) -> None:
        self.log = log

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await _read_body(receive)
        if scope["method"] == "DELETE":
            count = len(self.log)
            self.log.clear()
            await _send_json(send, 200, {"cleared": count})
        else:
            await _send_json(send, 200, list(self.log))


class _Health:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await _send_json(send, 200, {"status": "ok", "simulator": True})


class _NotFound:
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await _send_json(
            send,
            404,
            error_body(f"Invalid URL ({scope['method']} {scope['path']})", code="unknown_url"),
        )


def create_simulator(request_log_size: int = REQUEST_LOG_SIZE) -> Starlette:
    """A fresh simulator app (own request counter and request log, ``app.state.requests``)."""
    log: collections.deque = collections.deque(maxlen=request_log_size)
    v1 = _V1(log)
    app = SimulatorApp(
        routes=[
            Route("/v1/{rest:path}", v1),
            Route("/v1", v1),
            Route("/_simulator/requests", _RequestLog(log), methods=["GET", "DELETE"]),
            Route("/_simulator/health", _Health(), methods=["GET"]),
            Route("/{rest:path}", _NotFound()),
        ]
    )
    app.state.requests = log
    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(
        description="Offline OpenAI API simulator (base URL http://HOST:PORT/v1)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    uvicorn.run(
        create_simulator(),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
    )


if __name__ == "__main__":
    main()
