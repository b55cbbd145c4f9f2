"""Predict: run a recorded model version again with new inputs, as MLflow's pyfunc does.

The calls go through llmtap's own `/v1` endpoint, in process (an ASGI call, no socket), so
each is forwarded, traced and kept for replay like any client's call, and, with log_models
on, links to the version it ran.

Inputs and answers have the shape of MLflow's openai flavor (`mlflow/openai/model.py`,
`_OpenAIWrapper.predict`): the inputs are rows, as pyfunc turns them into a DataFrame (a
string is one row, a list one row per item, a dict one row of columns or, with list values,
one row per element, `{"columns", "data"}` split-oriented rows), and the answer is a list
with one prediction per row: the assistant's text for chat and responses, the text for
completions, the vector for embeddings. A row's input is its string, or the column named
after the task's prompt variable (`content`, `prompt`, `input`) or `messages`, else its
first string column; for a Responses version with a stored prompt (`prompt: {id, version}` in
its params), a record's `input` column is its input and its other columns are the prompt's
variables. Unlike MLflow, a list of chat messages is one row (one conversation).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from llmtap.proxy.config import Settings
from llmtap.recorder.assemble.embeddings import decode_embeddings
from llmtap.recorder.endpoints import ENDPOINTS
from llmtap.recorder.models import signature_params
from llmtap.recorder.recording import new_trace_id
from llmtap.recorder.records import Mode

ASGIApp = Callable[..., Awaitable[None]]  # (scope, receive, send)
TASK_PATHS = {e.name: e.path for e in ENDPOINTS.values()}
CONCURRENCY = 8
"""Calls in flight at once for a list of inputs (MLflow's pyfunc also calls in parallel)."""
CHAT_TASKS = frozenset({"chat.completions", "responses"})
COLUMNS = {
    "chat.completions": ("messages", "content"),
    "responses": ("input", "messages", "content"),
    "completions": ("prompt",),
    "embeddings": ("input",),
}
"""The columns a row's input is read from, in order: `content` and `prompt` are the prompt
variables of MLflow's default templates, `messages` and `input` the request's own fields
(what `log_input_examples` stores); a row with none of them gives its first string column."""
EMBEDDINGS_BATCH = 2048
"""The most inputs OpenAI's embeddings endpoint takes in one request: more rows go in several."""
RETRY_STATUSES = frozenset({408, 409, 429})
"""Answers that say "not now" rather than "no", besides every 5xx (an upstream failing for a
moment, and llmtap's own 502/504 when it could not reach it): a timeout, a lock conflict, a
rate limit. The OpenAI SDK's list (`_should_retry`), as is its `x-should-retry` header."""
MAX_RETRIES = 2
"""Retries of a call after its first attempt (the OpenAI SDK's default, `DEFAULT_MAX_RETRIES`)."""
FIRST_RETRY_WAIT = 0.5
"""Seconds before the first retry, doubled for each next one (the SDK's `INITIAL_RETRY_DELAY`)."""
MAX_RETRY_WAIT = 5.0
"""The longest wait before a retry: a `retry-after` beyond it is not waited for, the call fails
as the upstream answered (the SDK also gives up past its own limit), since a prediction holds
its caller's request open."""


class PredictError(Exception):
    """A prediction that cannot run (bad inputs) or that the upstream refused."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Prediction:
    predictions: list[Any]
    """One per input row, in order (MLflow's pyfunc answer)."""
    trace_ids: list[str]
    """The traces of the calls that answered, one per request sent; none for a call that
    left no trace (log_traces off, mode off, an answer replayed from a recording)."""


# --- the inputs: rows, as pyfunc's DataFrame has them (pure) ---------------------------------


def input_rows(task: str, inputs: Any) -> list[Any]:
    """The rows of `inputs`: each a string, a conversation (a list of messages) or a record
    (a dict of columns)."""
    if isinstance(inputs, str):
        return [inputs]
    if isinstance(inputs, dict) and inputs:
        return _dict_rows(task, inputs)
    if isinstance(inputs, list) and inputs:
        return [inputs] if _is_conversation(task, inputs) else list(inputs)
    raise PredictError(
        400, "inputs must be a string, a non-empty list or a dict of columns, not " + _show(inputs)
    )


def _is_conversation(task: str, value: Any) -> bool:
    # chat messages have a role; Responses input items may instead have a type
    keys = ("role", "type") if task == "responses" else ("role",)
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and any(k in m for k in keys) for m in value)
    )


def _dict_rows(task: str, inputs: dict[str, Any]) -> list[Any]:
    data = inputs.get("data")
    split = isinstance(data, list) and all(isinstance(row, list) for row in data)
    if split and set(inputs) <= {"columns", "data", "index"}:  # pandas' split orient
        columns = inputs.get("columns") or range(max(map(len, data), default=0))
        if not data:
            raise PredictError(400, "inputs has no rows: its data is empty")
        if not isinstance(columns, list | range) or not all(
            isinstance(c, str | int) for c in columns
        ):
            raise PredictError(400, f"columns must be a list of names, not {_show(columns)}")
        return [dict(zip(columns, row, strict=False)) for row in data]
    # a dict of columns: a list value is a column of rows (pandas broadcasts the others),
    # but a conversation is one cell: {"messages": [...]} is one row
    many = {
        k: v for k, v in inputs.items() if isinstance(v, list) and not _is_conversation(task, v)
    }
    if not many:
        return [inputs]
    lengths = {len(v) for v in many.values()}
    if len(lengths) != 1 or 0 in lengths:
        sizes = {k: len(v) for k, v in many.items()}
        raise PredictError(400, f"the columns of inputs must be non-empty and alike: {sizes}")
    return [
        {k: many[k][i] if k in many else v for k, v in inputs.items()} for i in range(lengths.pop())
    ]


def row_input(task: str, row: Any) -> Any:
    """What one row asks: a string, or for chat and responses a conversation."""
    if isinstance(row, dict) and (task in CHAT_TASKS or "role" not in row):
        found = next((row[c] for c in COLUMNS[task] if c in row), None)
        if found is None:
            found = next((v for v in row.values() if isinstance(v, str)), None)
        row = row if found is None else found
    if isinstance(row, str) or (task in CHAT_TASKS and _is_conversation(task, row)):
        return row
    wanted = "a string, a list of messages" if task in CHAT_TASKS else "a string"
    columns = " or ".join(f"`{c}`" for c in COLUMNS[task])
    raise PredictError(
        400,
        f"each input for the {task} task must be {wanted} or a record with a {columns} "
        f"or other string column, not {_show(row)}",
    )


def _show(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()[:100]


# --- the requests and the answers (pure) -----------------------------------------------------


def request_bodies(
    version: Mapping[str, Any], inputs: Any, params: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The request bodies for `inputs`: one per row, or for an embeddings model one per
    EMBEDDINGS_BATCH rows, in order (the API embeds a list in one call, as MLflow batches
    them). `params` (MLflow's `predict(data, params=...)`) are laid over the version's own,
    as the openai flavor does (`{**model_params, **params}`)."""
    task = version["task"]
    own = {**(version.get("params") or {}), **_checked_params(version, params)}
    # a Responses stored prompt takes its variables from a record's columns (see `_body`)
    stored_prompt = task == "responses" and isinstance(own.get("prompt"), dict)
    values = [
        row if stored_prompt and isinstance(row, dict) else row_input(task, row)
        for row in input_rows(task, inputs)
    ]
    if task == "embeddings":
        if len(values) == 1:  # one text is sent as itself, as the client that recorded it did
            return [_body(version, own, values[0])]
        return [
            _body(version, own, values[i : i + EMBEDDINGS_BATCH])
            for i in range(0, len(values), EMBEDDINGS_BATCH)
        ]
    return [_body(version, own, value) for value in values]


def _checked_params(version: Mapping[str, Any], params: Any) -> Mapping[str, Any]:
    """`params` when each names a parameter of the version (its recorded invocation params or
    its signature's); a PredictError 400 otherwise, as a typo must not pass silently."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise PredictError(400, f"params must be an object of parameters, not {_show(params)}")
    signature = signature_params(version.get("signature"))
    known = set(version.get("params") or {}) | {p.get("name") for p in signature}
    unknown = sorted(set(params) - known)
    if unknown:
        names = ", ".join(sorted(map(str, known))) or "none"
        raise PredictError(
            400,
            f"unknown param(s) {', '.join(unknown)} for {version['model_uri']} "
            f"(its params: {names})",
        )
    return params


def _messages(value: Any) -> list[Any]:
    return [{"role": "user", "content": value}] if isinstance(value, str) else list(value)


def _framed(lead: list[Any], items: list[Any]) -> list[Any]:
    # a conversation that already opens with the template (an input example does) keeps it once
    return items if items[: len(lead)] == lead else [*lead, *items]


def _body(version: Mapping[str, Any], params: Mapping[str, Any], value: Any) -> dict[str, Any]:
    task = version["task"]
    template = version.get("prompt_template") or {}
    body: dict[str, Any] = {"model": version["model"], **params}
    if task == "chat.completions":
        body["messages"] = _framed(list(template.get("messages", ())), _messages(value))
    elif task == "responses":
        if isinstance(value, dict):  # a record for a stored prompt: `input` and its variables
            variables = {k: v for k, v in value.items() if k != "input"}
            if variables:
                body["prompt"] = {**body["prompt"], "variables": variables}
            value = row_input(task, value["input"]) if "input" in value else None
        if "instructions" in template:
            body["instructions"] = template["instructions"]
        lead = list(template.get("input") or ())
        if value is not None:
            body["input"] = _framed(lead, _messages(value)) if lead else value
        elif lead:
            body["input"] = lead
    elif task == "completions":
        body["prompt"] = value
    else:
        body["input"] = value
    return body


def prediction(task: str, response: Mapping[str, Any]) -> list[Any]:
    """What pyfunc returns for one response: one value per row it answered."""
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
    headers: Sequence[tuple[bytes, bytes]] = (),
    params: Mapping[str, Any] | None = None,
    *,
    traced: bool = True,
) -> Prediction:
    """Send the version's requests for `inputs` (with `params` over the version's) to `app`'s
    own `/v1` and gather the answers.

    `headers` go with each call (the caller's key, `llmtap-session`...); llmtap files the calls
    under the version's experiment, in a new trace each, tagged with the model URI. A call
    that meets a rate limit or a passing failure is sent again (see `retry_wait`); one that
    fails for good fails the prediction, and the rows not sent by then are not sent. `traced`:
    whether `app` keeps traces (see `records_traces`); without, the answer names none."""
    bodies = request_bodies(version, inputs, params)
    traced = traced and not _mode_off(headers)
    # (a name llmtap always answers to: see host_guard)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://localhost"
    ) as client:
        calls = _Calls(client, version, headers, traced)
        results = await asyncio.gather(
            *(calls.row(body) for body in bodies), return_exceptions=True
        )
    if calls.failed:  # the first failure, not a row stopped after it
        raise calls.failed[0]
    answered: list[tuple[list[Any], str | None]] = []
    for result in results:
        if isinstance(result, BaseException):  # (a row cancelled)
            raise result
        answered.append(result)
    values = [value for answer, _ in answered for value in answer]
    return Prediction(values, [trace_id for _, trace_id in answered if trace_id is not None])


def records_traces(settings: Settings) -> bool:
    """Whether an llmtap with `settings` keeps a trace of each call it forwards."""
    return settings.log_traces and settings.mode != Mode.OFF


def _mode_off(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    # a caller's `llmtap-mode: off` goes with the calls: they are forwarded, not recorded
    return any(
        name.lower() == b"llmtap-mode" and value.strip().lower() == b"off"
        for name, value in headers
    )


class _Stopped(Exception):
    """A row not sent (again) because another row of the prediction failed for good."""


@dataclass
class _Calls:
    """The calls of one prediction, CONCURRENCY at a time."""

    client: httpx.AsyncClient
    version: Mapping[str, Any]
    headers: Sequence[tuple[bytes, bytes]]
    traced: bool
    limit: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(CONCURRENCY))
    failed: list[Exception] = field(default_factory=list)
    """The rows' failures, first first."""

    async def row(self, body: dict[str, Any]) -> tuple[list[Any], str | None]:
        """One request's predictions and the trace of the call that answered it."""
        # a row waiting to retry keeps its slot: under a rate limit, fewer calls is the point
        async with self.limit:
            try:
                response, trace_id = await self._answered(orjson.dumps(body))
                answer = _answer(self.version["task"], response)
            except _Stopped:
                raise
            except Exception as exc:
                self.failed.append(exc)
                raise
        replayed = "llmtap-replayed" in response.headers  # answered from a recording, untraced
        return answer, trace_id if self.traced and not replayed else None

    async def _answered(self, content: bytes) -> tuple[httpx.Response, str]:
        """The last attempt's answer and trace id. Each attempt is a call of its own, traced in
        a trace of its own like any client's retry; the answer names the one that answered."""
        attempt = 0
        while True:
            if self.failed:
                raise _Stopped
            trace_id = new_trace_id()
            try:
                response = await self.client.post(
                    "/v1" + TASK_PATHS[self.version["task"]],
                    content=content,
                    headers=[*self.headers, *self._own_headers(trace_id)],
                )
            except Exception as exc:  # the upstream broke mid-answer: a 502 like any relay
                wait = retry_wait(None, attempt)
                if wait is None:
                    raise PredictError(502, f"the call failed: {exc}") from exc
            else:
                wait = retry_wait(response, attempt)
                if wait is None:
                    return response, trace_id
            await asyncio.sleep(wait)
            attempt += 1

    def _own_headers(self, trace_id: str) -> list[tuple[bytes, bytes]]:
        own = {
            b"content-type": "application/json",
            b"llmtap-experiment": self.version["experiment"],
            b"llmtap-trace-id": trace_id,
            b"llmtap-tag-model_uri": self.version["model_uri"],  # shown with the trace
            b"llmtap-model-version": self.version["model_uri"],  # links the call to its version
        }
        # as UTF-8 bytes: httpx encodes a str value as ASCII, and names need not be
        return [(name, value.encode()) for name, value in own.items()]


def retry_wait(response: httpx.Response | None, attempt: int) -> float | None:
    """Seconds to wait before sending a call again after its attempt number `attempt` (0 the
    first) got `response` (None: no answer, a connection error); None: do not send it again.

    As the OpenAI SDK does (`_should_retry`, `_calculate_retry_timeout`): up to MAX_RETRIES
    retries of RETRY_STATUSES, 5xx (as `x-should-retry` says, when it does) and connection
    errors, after the `retry-after-ms` or
    `retry-after` the upstream asked for, else after an exponential backoff with jitter; a
    wait asked for beyond MAX_RETRY_WAIT is not made, and the answer stands."""
    if attempt >= MAX_RETRIES:
        return None
    if response is not None and not _retryable(response):
        return None
    asked = retry_after(response.headers) if response is not None else None
    if asked is not None and asked > MAX_RETRY_WAIT:
        return None
    if asked is not None and asked > 0:  # (0 is "now": a backoff all the same, as the SDK)
        return asked
    backoff = min(FIRST_RETRY_WAIT * 2**attempt, MAX_RETRY_WAIT)
    return backoff * (1 - 0.25 * random.random())  # jitter: rows refused together part


def _retryable(response: httpx.Response) -> bool:
    told = response.headers.get("x-should-retry")  # the server's word first, as in the SDK
    if told in ("true", "false"):
        return told == "true"
    return response.status_code in RETRY_STATUSES or response.status_code >= 500


def retry_after(headers: httpx.Headers) -> float | None:
    """The seconds an answer asks to wait: `retry-after-ms` (OpenAI's), else `retry-after` in
    seconds or as an HTTP date; None when it asks nothing readable."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            seconds = float(headers.get(name, "")) / scale
        except ValueError:
            continue
        return seconds if not math.isnan(seconds) else None
    try:
        until = parsedate_to_datetime(headers.get("retry-after", ""))
    except (TypeError, ValueError):
        return None
    return until.timestamp() - time.time()


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


def passthrough_headers(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The caller's headers that should travel with its predict calls: its key and its
    `llmtap-*` controls, not the ones that describe the predict request's own body. The bytes
    as sent (a UTF-8 `llmtap-session` stays UTF-8)."""
    return [(name, value) for name, value in raw if name.lower() not in _OWN_HEADERS]


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
        b"origin",  # checked at the predict request's door; the calls are llmtap's own
    }
)
