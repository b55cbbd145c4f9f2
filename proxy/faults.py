"""Faults llmtap answers itself instead of the upstream: `llmtap-fault: KIND` on a request, or
armed for the next requests by the pytest fixture's `llmtap.fault(KIND, times=1)`.

    KIND := STATUS [; retry-after=SECONDS]  OpenAI's error for that status, 400-599
                                            (429: `retry-after: 1` unless given)
          | disconnect                      the connection closed without an answer
          | timeout=SECONDS                 the answer held that long, then a 504
          | stream-error[=N]                a stream's first N events (1), then an error event
          | stream-cut[=N]                  a stream's first N events (1), then the connection
                                            closed (no `[DONE]`)

A fault is never forwarded nor replayed in place of the request: the upstream is not asked,
the replay cursor does not move (stream faults aside: they cut the real answer, forwarded or
replayed, in `stream_cut`). What llmtap answered is recorded as a failure, as its own errors
are, so that it is never replayed and never kept in a cassette.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson

from llmtap.proxy.errors import UpstreamAborted, UpstreamTimeout
from llmtap.recorder.recording import FAULT_REASON, Recording

Send = Any
Receive = Any
Commit = Callable[[Recording], Awaitable[None]]

KINDS = (
    "STATUS (400-599, e.g. 429, 500, 503) with an optional '; retry-after=SECONDS', "
    "disconnect, timeout=SECONDS, stream-error[=N], stream-cut[=N]"
)
STREAM_KINDS = frozenset({"stream-error", "stream-cut"})


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    """`429`, `disconnect`, `timeout`, `stream-error`, `stream-cut`: the span's `llmtap.fault`."""
    status: int = 0
    retry_after: str | None = None
    """The `retry-after` header of a status, in seconds as written."""
    seconds: float = 0.0
    """How long `timeout` holds the answer."""
    events: int = 1
    """How many events of the stream the client gets before a stream fault."""

    @property
    def cuts_stream(self) -> bool:
        return self.kind in STREAM_KINDS

    def __str__(self) -> str:
        """The fault as a header would say it (every default spelled out)."""
        if self.status:
            return f"{self.kind}; retry-after={self.retry_after}" if self.retry_after else self.kind
        if self.kind == "timeout":
            return f"timeout={self.seconds:g}"
        return f"{self.kind}={self.events}" if self.cuts_stream else self.kind


_parsed: dict[str, Fault] = {}


def parse_fault(value: str) -> Fault:
    """The fault a `llmtap-fault` value names; ValueError naming the kinds for any other."""
    cached = _parsed.get(value)
    if cached is not None:
        return cached
    head, _, params = value.partition(";")
    name, eq, arg = head.strip().lower().partition("=")
    name, arg = name.strip(), arg.strip()
    retry_after = _retry_after(params, value) if params.strip() else None
    fault: Fault | None = None
    if name.isdigit() and 400 <= int(name) <= 599 and not eq:
        if retry_after is None and name == "429":
            retry_after = "1"  # as OpenAI's rate limits say when to come back
        fault = Fault(name, status=int(name), retry_after=retry_after)
    elif retry_after is not None:
        raise ValueError(f"llmtap-fault {value!r}: retry-after goes with a status (429; ...)")
    elif name == "disconnect" and not eq:
        fault = Fault(name)
    elif name == "timeout" and (seconds := _seconds(arg)) is not None:
        fault = Fault(name, seconds=seconds)
    elif name in STREAM_KINDS and (not eq or arg.isdigit()):
        fault = Fault(name, events=int(arg) if eq else 1)
    if fault is None:
        raise ValueError(f"llmtap-fault {value!r} is not a fault llmtap knows; the kinds: {KINDS}")
    if len(_parsed) < 256:
        _parsed[value] = fault
    return fault


def _seconds(text: str) -> float | None:
    with contextlib.suppress(ValueError):
        seconds = float(text)
        if 0 <= seconds < float("inf"):
            return seconds
    return None


def _retry_after(params: str, value: str) -> str:
    name, _, seconds = params.strip().lower().partition("=")
    if name.strip() != "retry-after" or _seconds(seconds.strip()) is None:
        raise ValueError(
            f"llmtap-fault {value!r}: the one parameter is retry-after=SECONDS (e.g. '429; "
            "retry-after=0.2')"
        )
    return seconds.strip()


class ArmedFaults:
    """Faults for the next requests, one each, in order: armed from a test's thread, taken on
    the server's event loop (hence the lock). `queue` is read without it, as a hint: a request
    that finds it empty costs no more than that look."""

    def __init__(self) -> None:
        self.queue: deque[Fault] = deque()
        self._lock = threading.Lock()

    def arm(self, fault: Fault, times: int = 1) -> None:
        if times < 1:
            raise ValueError(f"times must be 1 or more, not {times}")
        with self._lock:
            self.queue.extend([fault] * times)

    def take(self, header: str | None) -> Fault | None:
        """The request's own `llmtap-fault` (which leaves the armed ones armed), else the next
        armed fault, else None."""
        if header is not None:
            return parse_fault(header)
        with self._lock:
            return self.queue.popleft() if self.queue else None

    def clear(self) -> None:
        with self._lock:
            self.queue.clear()


# ------------------------------------------------------------------------------ answers

_SUFFIX = " (injected by llmtap)"
_ERRORS: dict[int, tuple[str, str, str | None]] = {
    # status: OpenAI's message, type and code for it
    400: ("Bad request", "invalid_request_error", None),
    401: ("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
    404: (
        "The model does not exist or you do not have access to it",
        "invalid_request_error",
        "model_not_found",
    ),  # fmt: skip
    429: ("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),  # fmt: skip
    503: (
        "The engine is currently overloaded, please try again later",
        "server_error",
        "overloaded",
    ),  # fmt: skip
}


def error_body(status: int) -> bytes:
    """OpenAI's error body for `status`, its message marked as llmtap's."""
    message, type_, code = _ERRORS.get(status) or _generic(status)
    error = {"message": message + _SUFFIX, "type": type_, "param": None, "code": code}
    return orjson.dumps({"error": error})


def _generic(status: int) -> tuple[str, str, str | None]:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = f"HTTP {status}"
    return phrase, "invalid_request_error" if status < 500 else "server_error", None


def fault_headers(fault: Fault, length: int) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % length),
        (b"llmtap-fault", fault.kind.encode()),
    ]
    if fault.retry_after is not None:
        headers.append((b"retry-after", fault.retry_after.encode()))
    if fault.status == 429:
        headers.append((b"x-ratelimit-remaining-requests", b"0"))
    return headers


async def answer_fault(
    fault: Fault, receive: Receive, send: Send, rec: Recording, cycle: Any, commit: Commit
) -> None:
    """Answer the request with `fault` (not a stream fault), recorded as a failure first.
    `cycle`: uvicorn's per-request object, whose transport `disconnect` closes."""
    reason = f"{FAULT_REASON}: {fault}"
    if fault.kind == "disconnect":
        await commit(rec.fail(reason))
        await close_connection(cycle)
        return
    if fault.kind == "timeout":
        if await _client_leaves_within(receive, fault.seconds):
            await commit(rec.fail(f"{reason}; the client left first"))
            return
        timeout = UpstreamTimeout(f"llmtap: the upstream did not answer in time ({reason})")
        status, body = timeout.status, timeout.body()  # as llmtap's own 504 says it
    else:
        status, body = fault.status, error_body(fault.status)
    headers = fault_headers(fault, len(body))
    rec.respond(status, [(k.decode(), v.decode()) for k, v in headers])
    await commit(rec.fail(reason, status, body))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _client_leaves_within(receive: Receive, seconds: float) -> bool:
    """Hold for `seconds`; True as soon as the client leaves (its SDK's own timeout fired)."""
    try:
        async with asyncio.timeout(seconds):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        return False
    return True


async def close_connection(cycle: Any) -> None:
    """Close the client's connection (what was written still goes out first), and wait until
    the server knows, so that it answers nothing in our place. Under a server other than
    uvicorn (no `cycle`), an exception is how an app gets its connection dropped."""
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise UpstreamAborted(f"{FAULT_REASON}: the connection is dropped")
    transport.close()
    for attempt in range(200):
        if getattr(cycle, "disconnected", True):
            return
        await asyncio.sleep(0.001 if attempt > 10 else 0)
