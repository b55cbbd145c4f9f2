"""The model registry over HTTP: list, read, lineage, and predict (SPEC sections 3 and 4).

Names may hold slashes (`Default/gpt-4o-mini`, `meta-llama/Llama-3-8b`), so `{name:path}`
routes come most specific first. Predict answers `{"predictions": [...]}`, one per input row,
as MLflow's scoring server does (`predictions_to_json`), with the model URI and trace ids.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmtap.proxy.api import JSONResponse, trace_response
from llmtap.proxy.context import normalise_trace_id
from llmtap.proxy.errors import openai_error
from llmtap.proxy.predict import (
    ASGIApp,
    PredictError,
    passthrough_headers,
    records_traces,
    run_prediction,
)
from llmtap.proxy.trace_route import TRACE_ID
from llmtap.recorder.model_store import ModelReader, version_number
from llmtap.recorder.reader import TraceReader


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(orjson.loads(openai_error(status, kind, message)), status_code=status)


def _version_param(request: Request) -> str | None:
    version = request.path_params["version"]
    return version if version == "latest" or version_number(version) is not None else None


_SCORING_INPUTS = ("inputs", "dataframe_split", "dataframe_records", "instances")
"""MLflow's scoring server's input fields: pandas' split and records orients, TF-serving's
instances. `input_rows` reads each of their values as it reads `inputs`."""
_ANY = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
"""predict takes every method, to answer all but POST with a 405 itself."""


def model_routes(reader: ModelReader, traces: TraceReader, app: ASGIApp) -> list[Route]:
    """Routes over `reader` (and `traces`, to find a trace by the id it was given); predict
    calls `app`, the running llmtap, in process."""
    settings = getattr(app, "settings", None)  # the running llmtap's: does it keep traces?
    traced = settings is None or records_traces(settings)

    async def find_version(request: Request) -> dict[str, Any] | JSONResponse:
        name, version = request.path_params["name"], _version_param(request)
        if version is None:
            return _error(400, "version must be a number or `latest`")
        found = await run_in_threadpool(reader.get_version, name, version)
        if found is None:
            return _error(404, f"no model version models:/{name}/{version}")
        return found

    async def list_models(request: Request) -> JSONResponse:
        return JSONResponse({"models": await run_in_threadpool(reader.list_models)})

    async def get_model(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        model = await run_in_threadpool(reader.get_model, name)
        if model is None and name.startswith("m-"):  # a logged model by its id
            model = await run_in_threadpool(reader.get_version, name, "")
        if model is None:
            return _error(404, f"no model named {name}")
        return JSONResponse(model)

    async def get_version(request: Request) -> JSONResponse:
        found = await find_version(request)
        if isinstance(found, JSONResponse):
            return found
        traces = await run_in_threadpool(reader.traces_of, found["name"], found["version"])
        return JSONResponse({**found, "traces": traces})

    async def predict(request: Request) -> JSONResponse:
        if request.method != "POST":  # a 405, not get_model's "no model named .../predict"
            response = _error(405, 'predict takes POST with {"inputs": ...}')
            response.headers["allow"] = "POST"
            return response
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":  # a page can send others without a preflight
            return _error(415, "predict takes a JSON body sent as Content-Type: application/json")
        found = await find_version(request)
        if isinstance(found, JSONResponse):
            return found
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            return _error(400, f"the body is not JSON: {exc}")
        # `inputs`, or what `mlflow models serve` takes at /invocations besides it
        given = next((k for k in _SCORING_INPUTS if isinstance(body, dict) and k in body), None)
        if given is None:
            return _error(
                400,
                'the body must be {"inputs": ..., "params": {...}} (or MLflow\'s '
                "dataframe_split, dataframe_records or instances in place of inputs)",
            )
        try:
            result = await run_prediction(
                app,
                found,
                body[given],
                passthrough_headers(request.headers.raw),
                body.get("params"),  # MLflow's scoring server takes them beside the inputs
                traced=traced,  # no trace ids that GET /api/traces/{id} would not find
            )
        except PredictError as exc:
            kind = "invalid_request_error" if exc.status == 400 else "llmtap_upstream_error"
            return _error(exc.status, str(exc), kind)
        return JSONResponse(
            {
                "predictions": result.predictions,
                "model_uri": found["model_uri"],
                "trace_ids": result.trace_ids,
            }
        )

    async def trace_models(request: Request) -> Response:
        sent = request.path_params["trace_id"]
        # found as GET /api/traces/{id} finds it: as sent in llmtap-trace-id, stored, or a prefix
        trace_id = await run_in_threadpool(traces.resolve_id, normalise_trace_id(sent), sent)
        if trace_id is None:
            # no trace `x`: the path names the trace a client called `x/models`, if there is one
            named = await trace_response(traces, f"{sent}/models")
            return named if named.status_code == 200 else _error(404, f"no trace with id {sent}")
        versions = await run_in_threadpool(reader.versions_of_trace, trace_id)
        return JSONResponse({"trace_id": trace_id, "model_versions": versions})

    return [
        Route("/api/models", list_models),
        Route("/api/models/{name:path}/versions/{version}/predict", predict, methods=_ANY),
        Route("/api/models/{name:path}/versions/{version}", get_version),
        Route("/api/models/{name:path}", get_model),
        Route(f"/api/traces/{TRACE_ID}/models", trace_models),
    ]
