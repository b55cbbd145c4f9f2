"""The ASGI application: `/v1` and `/experiments/NAME/v1` to the forwarder, the rest to Starlette.

The forwarding path skips Starlette's router on purpose (issue 3's measurements: routing and
StreamingResponse cost more than the whole relay); Starlette serves the read API and the UI.
The lifespan owns the upstream session and the writer process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from typing import Any
from urllib.parse import quote, unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from llmtap.proxy.api import ApiNotFound, api_routes
from llmtap.proxy.config import Settings
from llmtap.proxy.errors import LlmtapError, UpstreamAborted, openai_error
from llmtap.proxy.faults import ArmedFaults
from llmtap.proxy.forward import Forwarder, Receive, Scope, Send
from llmtap.proxy.host_guard import HostGuard
from llmtap.proxy.models_api import model_routes
from llmtap.proxy.replaying import Replayer
from llmtap.proxy.ui import ui_routes
from llmtap.recorder.inflight import inflight_path, settle
from llmtap.recorder.model_store import ModelReader
from llmtap.recorder.reader import NotAnLlmtapDatabase, TraceReader
from llmtap.recorder.records import Mode
from llmtap.recorder.writer import Writer, WriterConfig

log = logging.getLogger("llmtap")


_EXPERIMENTS = "/experiments/"


def split_api_path(raw_path: str) -> tuple[str | None, str, str] | None:
    """(experiment, path below /v1, that path as sent) for a forwarded path, or None for
    llmtap's own routes. Read from the path as the client encoded it, once: an experiment's
    name may hold an encoded slash (`/experiments/team%2Fnightly/v1`), and the path below it
    is forwarded exactly as it was sent."""
    if raw_path == "/v1" or raw_path.startswith("/v1/"):
        below = raw_path[3:]
        return None, unquote(below), below
    if raw_path.startswith(_EXPERIMENTS):
        name, sep, rest = raw_path[len(_EXPERIMENTS) :].partition("/")
        if name and sep and (rest == "v1" or rest.startswith("v1/")):
            return unquote(name), unquote(rest[2:]), rest[2:]
    return None


async def not_an_experiment_path(send: Send) -> None:
    """A path under /experiments/ that names no experiment's base URL: an OpenAI-shaped 404
    that says what one looks like, not Starlette's plain text."""
    body = openai_error(
        404,
        "invalid_request_error",
        "llmtap: an experiment's base URL is /experiments/NAME/v1 (NAME percent-encoded)",
        "not_found",
    )
    await send_json(send, 404, body)


async def send_json(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def refuse(send: Send, error: LlmtapError) -> None:
    """Answer with `error` before reading the request: it is neither forwarded nor recorded."""
    await send_json(send, error.status, error.body())


class LlmtapApp:
    def __init__(
        self,
        settings: Settings,
        recording: bool = True,
        write_ahead: bool = True,
        new_episodes: bool = False,
    ) -> None:
        self.settings = settings
        self.writer: Writer | None = None
        self.replayer = Replayer(settings, new_episodes)
        if settings.mode != Mode.OFF and recording:
            self.writer = Writer(
                WriterConfig(
                    db=settings.db,
                    log_traces=settings.log_traces,
                    prices_file=settings.prices_file,
                    log_models=settings.log_models,
                    log_model_signatures=settings.log_model_signatures,
                    log_input_examples=settings.log_input_examples,
                    registered_model_name=settings.registered_model_name,
                ),
                on_written=self.replayer.on_written,
                # record mode answers once the recording is in the in-flight log; auto mode
                # waits for the commit, so that the same request next finds it to replay
                write_ahead=write_ahead and settings.mode == Mode.RECORD,
            )
        self.faults = ArmedFaults()
        """Faults for the next requests (the pytest fixture's `llmtap.fault`)."""
        self.forwarder = Forwarder(settings, self.writer, self.replayer, self.faults)
        self.guard = HostGuard(settings)
        reader = TraceReader(settings.db)
        health = self.writer.health_report if self.writer else None
        self.site = Starlette(
            routes=[
                ApiNotFound(),  # first: its partial match is the one the router falls back on
                *model_routes(ModelReader(settings.db), reader, self),  # before `api_routes`
                *api_routes(
                    settings,
                    reader,
                    health,
                    self.replayer.health if settings.mode in (Mode.REPLAY, Mode.AUTO) else None,
                ),
                *ui_routes(reader),
            ],
            exception_handlers={
                404: self._no_route,
                sqlite3.DatabaseError: self._unreadable_database,
                NotAnLlmtapDatabase: self._unreadable_database,
            },
        )

    async def _no_route(self, request: Request, exc: Exception) -> Response:
        """A path outside /v1, /api and the UI: an OpenAI-shaped 404 that says where the API
        is. A base URL without `/v1`, or an AzureOpenAI client given llmtap as its
        `azure_endpoint` (`/openai/deployments/...`), got Starlette's bare `Not Found`."""
        base = f"{request.url.scheme}://{request.url.netloc}/v1"
        message = (
            f"llmtap has nothing at {request.method} {request.url.path}: the OpenAI API is "
            f"under /v1 (OPENAI_BASE_URL={base}; an AzureOpenAI client takes base_url={base}, "
            "not azure_endpoint), the read API under /api, the UI at /"
        )
        body = openai_error(404, "invalid_request_error", message, "not_found")
        return Response(body, status_code=404, media_type="application/json")

    async def _unreadable_database(self, request: Request, exc: Exception) -> Response:
        """`--db` names a file that is not llmtap's (it opens only for reading with `--mode
        off`): the read API and the UI say so in OpenAI's shape, not a bare 500."""
        message = f"llmtap cannot read the database {self.settings.db}: {exc}"
        body = openai_error(503, "llmtap_database_error", message, "database_unreadable")
        return Response(body, status_code=503, media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.guard.refusal(scope["headers"])  # /v1, /api and the UI alike
            if refusal is not None:
                await refuse(send, refusal)
                return
            raw = scope.get("raw_path")
            target = split_api_path(raw.decode("latin-1") if raw else quote(scope["path"]))
            if target is not None:
                experiment, api_path, raw_api_path = target
                await self.forwarder.handle(
                    scope, receive, send, api_path, raw_api_path, experiment
                )
                return
            if scope["path"].startswith(_EXPERIMENTS):
                await not_an_experiment_path(send)
                return
            if self.writer is not None and scope["path"] != "/api/health":
                # a client that had its answer finds it recorded (health never waits: it is
                # what says the writer is stuck)
                await self.writer.settled()
            await self.site(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:  # websockets are not part of the OpenAI HTTP API
            await self.site(scope, receive, send)

    async def startup(self) -> None:
        if self.writer is None and os.path.exists(inflight_path(self.settings.db)):
            # what a killed record-mode llmtap left in its in-flight log: readable here too
            await asyncio.to_thread(settle, self.settings.db)
        if self.writer is not None:
            if self.settings.prices_file:
                # read here first: in the writer process its error read as a database problem
                from llmtap.recorder.prices import load_prices

                try:
                    load_prices(self.settings.prices_file)
                except Exception as exc:  # missing, unreadable, not TOML/JSON, wrong shape
                    raise RuntimeError(
                        f"llmtap cannot use its prices file {self.settings.prices_file}: {exc} "
                        "(pass --prices-file or LLMTAP_PRICES_FILE with a TOML or JSON file of "
                        "{model = {input, output}} prices per 1M tokens)"
                    ) from exc
            try:
                await self.writer.start()
            except Exception as exc:
                raise RuntimeError(
                    f"llmtap cannot open its database {self.settings.db}: {exc} "
                    "(pass --db or LLMTAP_DB, or --mode off to forward without recording)"
                ) from exc
        await self.forwarder.start()
        if self.settings.mode in (Mode.REPLAY, Mode.AUTO):
            await self.replayer.ready()  # answer the first request without a wait

    async def shutdown(self) -> None:
        await self.forwarder.close()
        if self.writer is not None:
            await self.writer.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(
    settings: Settings, recording: bool = True, write_ahead: bool = True, new_episodes: bool = False
) -> LlmtapApp:
    """The app; `recording` False: no writer process, whatever the mode (the pytest plugin's
    replay, whose database is thrown away: the process costs each test ~0.3 s to start).
    `write_ahead` False: responses wait for their commit in record mode too (the pytest
    plugin, whose fixture reads the database in the middle of a test). `new_episodes`: see
    `Replayer` (the pytest plugin's auto mode)."""
    return LlmtapApp(settings, recording, write_ahead, new_episodes)


class _QuietAborts(logging.Filter):
    """An upstream that broke mid-stream is recorded, not a server error worth a traceback; so
    is a response cut by a stop (its grace over, or a second Ctrl-C): uvicorn cancels what is
    still running, and the cut is recorded as "llmtap stopped mid-response"."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, UpstreamAborted):
            log.warning("upstream broke mid-response (%s); client connection aborted", exc)
            return False
        if isinstance(exc, asyncio.CancelledError):
            log.warning("stopping: a response still running was cut (recorded as cut)")
            return False
        return True


def install_log_filters() -> None:
    logging.getLogger("uvicorn.error").addFilter(_QuietAborts())


SHUTDOWN_GRACE_S = 10
"""On SIGTERM or Ctrl-C, how long responses in flight may go on before they are cut (and
recorded as cut): a stalled upstream must not keep a stopping llmtap up for its read timeout."""


def uvicorn_kwargs() -> dict[str, Any]:
    """uvicorn settings llmtap relies on: the upstream's own Date and Server headers pass."""
    return {
        "server_header": False,
        "date_header": False,
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": SHUTDOWN_GRACE_S,
    }
