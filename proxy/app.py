"""The ASGI application: `/v1` and `/experiments/NAME/v1` to the forwarder, the rest to Starlette.

The forwarding path skips Starlette's router on purpose (issue 3's measurements: routing and
StreamingResponse cost more than the whole relay); Starlette serves the read API and the UI.
The lifespan owns the upstream session and the writer process.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette

from llmtap.proxy.api import api_routes
from llmtap.proxy.config import Settings
from llmtap.proxy.errors import UpstreamAborted
from llmtap.proxy.forward import Forwarder, Receive, Scope, Send
from llmtap.proxy.models_api import model_routes
from llmtap.proxy.replaying import Replayer
from llmtap.proxy.ui import ui_routes
from llmtap.recorder.model_store import ModelReader
from llmtap.recorder.reader import TraceReader
from llmtap.recorder.records import Mode
from llmtap.recorder.writer import Writer, WriterConfig

log = logging.getLogger("llmtap")


_EXPERIMENTS = "/experiments/"


def split_api_path(path: str) -> tuple[str | None, str] | None:
    """(experiment, path below /v1) for a forwarded path, or None for llmtap's own routes."""
    if path == "/v1" or path.startswith("/v1/"):
        return None, path[3:]
    if path.startswith(_EXPERIMENTS):
        name, sep, rest = path[len(_EXPERIMENTS) :].partition("/")
        if name and sep and (rest == "v1" or rest.startswith("v1/")):
            return name, rest[2:]
    return None


class LlmtapApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.writer: Writer | None = None
        self.replayer = Replayer(settings)
        if settings.mode != Mode.OFF:
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
            )
        self.forwarder = Forwarder(settings, self.writer, self.replayer)
        reader = TraceReader(settings.db)
        health = self.writer.health if self.writer else None
        self.site = Starlette(
            routes=[
                *api_routes(settings, reader, health),
                *model_routes(ModelReader(settings.db), self),
                *ui_routes(reader),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            target = split_api_path(scope["path"])
            if target is not None:
                await self.forwarder.handle(scope, receive, send, target[1], target[0])
                return
            await self.site(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:  # websockets are not part of the OpenAI HTTP API
            await self.site(scope, receive, send)

    async def startup(self) -> None:
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


def create_app(settings: Settings) -> LlmtapApp:
    return LlmtapApp(settings)


class _QuietAborts(logging.Filter):
    """An upstream that broke mid-stream is recorded, not a server error worth a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, UpstreamAborted):
            log.warning("upstream broke mid-response (%s); client connection aborted", exc)
            return False
        return True


def install_log_filters() -> None:
    logging.getLogger("uvicorn.error").addFilter(_QuietAborts())


def uvicorn_kwargs() -> dict[str, Any]:
    """uvicorn settings llmtap relies on: the upstream's own Date and Server headers pass."""
    return {"server_header": False, "date_header": False, "access_log": False, "lifespan": "on"}
