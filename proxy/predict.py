"""Predict: run a recorded model version again with a new input, as MLflow's pyfunc does.

The calls go through llmtap's own `/v1` endpoint, in process (an ASGI call, no socket), so
each is forwarded, traced and kept for replay like any client's call, and, with log_models
on, links to the version it ran. The answer has pyfunc's shape: the assistant's text for
chat and responses, the text for completions, the vector for embeddings; a list of them for
a list of inputs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from llmtap.recorder.assemble.embeddings import decode_embeddings
from llmtap.recorder.endpoints import ENDPOINTS
from llmtap.recorder.recording import new_trace_id

ASGIApp = Callable[..., Awaitable[None]]  # (scope, receive, send)
TASK_PATHS = {e.name: e.path for e in ENDPOINTS.values()}
CONCURRENCY = 8
"""Calls in flight at once for a list of inputs (MLflow's pyfunc also calls in parallel)."""


class PredictError(Exception):
    """A prediction that cannot run (bad inputs) or that the upstream refused."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Prediction:
    predictions: Any
    trace_ids: list[str]
    """The traces of the calls made, one per request sent."""


# --- the requests and the answers (pure) -----------------------------------------------------


def request_bodies(version: Mapping[str, Any], inputs: Any) -> tuple[list[dict[str, Any]], bool]:
    """(the request bodies to send, whether the caller gave a list of inputs)."""
    task = version["task"]
    many = _is_many(task, inputs)
    items = inputs if many else [inputs]
    for item in items:
        _check_input(task, item)
    if task == "embeddings":  # one request embeds them all, as the API allows
        return [_body(version, items if many else inputs)], many
    return [_body(version, item) for item in items], many


def _is_many(task: str, inputs: Any) -> bool:
    if isinstance(inputs, str):
        return False
    if not isinstance(inputs, list) or not inputs:
        raise PredictError(400, "inputs must be a string or a non-empty list")
    # a list of messages is one conversation; a list of strings (or of conversations) is many
    one_conversation = task in ("chat.completions", "responses") and all(
        isinstance(i, dict) for i in inputs
    )
    return not one_conversation


def _check_input(task: str, item: Any) -> None:
    conversation = isinstance(item, list) and all(isinstance(m, dict) for m in item)
    if isinstance(item, str) or (conversation and task in ("chat.completions", "responses")):
        return
    raise PredictError(
        400,
        f"each input of a {task} model must be a string"
        + (" or a list of messages" if task in ("chat.completions", "responses") else "")
        + f", not {orjson.dumps(item).decode()[:100]}",
    )


def _messages(item: Any) -> list[Any]:
    return [{"role": "user", "content": item}] if isinstance(item, str) else list(item)


def _body(version: Mapping[str, Any], item: Any) -> dict[str, Any]:
    task = version["task"]
    template = version.get("prompt_template") or {}
    body: dict[str, Any] = {"model": version["model"], **(version.get("params") or {})}
    if task == "chat.completions":
        body["messages"] = [*template.get("messages", ()), *_messages(item)]
    elif task == "responses":
        if "instructions" in template:
            body["instructions"] = template["instructions"]
        lead = template.get("input")
        body["input"] = [*lead, *_messages(item)] if lead else item
    elif task == "completions":
        body["prompt"] = item
    else:
        body["input"] = item
    return body


def prediction(task: str, response: Mapping[str, Any]) -> list[Any]:
    """What pyfunc returns for one response: one value per input it answered."""
    if task == "embeddings":
        data = decode_embeddings(response).get("data") or []
        return [d["embedding"] for d in sorted(data, key=lambda d: d.get("index", 0))]
    if task == "responses":
        return [_output_text(response)]
    choice = (response.get("choices") or [{}])[0]
    if task == "completions":
        return [choice.get("text")]
    return [(choice.get("message") or {}).get("content")]


def _output_text(response: Mapping[str, Any]) -> str:
    # what the SDK's `response.output_text` property joins
    return "".join(
        part.get("text", "")
        for item in response.get("output") or ()
        if isinstance(item, dict) and item.get("type") == "message"
        for part in item.get("content") or ()
        if isinstance(part, dict) and part.get("type") == "output_text"
    )


# --- the calls --------------------------------------------------------------------------------


async def run_prediction(
    app: ASGIApp,
    version: Mapping[str, Any],
    inputs: Any,
    headers: Sequence[tuple[str, str]] = (),
) -> Prediction:
    """Send the version's requests for `inputs` to `app`'s own `/v1` and gather the answers.

    `headers` go with each call (the caller's key, `llmtap-session`...); llmtap files the calls
    under the version's experiment, in a new trace each, tagged with the model URI."""
    bodies, many = request_bodies(version, inputs)
    path = "/v1" + TASK_PATHS[version["task"]]
    limit = asyncio.Semaphore(CONCURRENCY)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://llmtap") as client:

        async def call(body: dict[str, Any]) -> tuple[list[Any], str]:
            trace_id = new_trace_id()
            own = {
                "content-type": "application/json",
                "llmtap-experiment": version["experiment"],
                "llmtap-trace-id": trace_id,
                "llmtap-tag-model_uri": version["model_uri"],
            }
            async with limit:
                try:
                    response = await client.post(
                        path, content=orjson.dumps(body), headers=[*headers, *own.items()]
                    )
                except Exception as exc:  # the upstream broke mid-answer: a 502 like any relay
                    raise PredictError(502, f"the call failed: {exc}") from exc
            return _answer(version["task"], response), trace_id

        results = await asyncio.gather(*(call(body) for body in bodies))
    values = [value for answer, _ in results for value in answer]
    return Prediction(values if many else values[0], [trace_id for _, trace_id in results])


def _answer(task: str, response: httpx.Response) -> list[Any]:
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.status_code >= 400 or not isinstance(payload, dict):
        error = payload.get("error") if isinstance(payload, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        status = response.status_code if response.status_code >= 400 else 502
        raise PredictError(status, str(message or response.text[:500]))
    return prediction(task, payload)


def passthrough_headers(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The caller's headers that should travel with its predict calls: its key and its
    `llmtap-*` controls, not the ones that describe the predict request's own body."""
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in raw
        if name.lower() not in _OWN_HEADERS
    ]


_OWN_HEADERS = frozenset(
    {
        b"host",
        b"content-length",
        b"content-type",
        b"transfer-encoding",
        b"connection",
        b"accept-encoding",
        b"llmtap-experiment",
        b"llmtap-trace-id",
        b"traceparent",
    }
)
