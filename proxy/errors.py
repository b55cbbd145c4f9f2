"""Errors llmtap answers with itself, always in OpenAI's shape so that SDKs raise cleanly.

    LlmtapError                      an answer llmtap gives instead of the upstream's
    ├── RequestTooLarge    413       the body is over `max_body_size`
    ├── BadControl         400       an `llmtap-*` header or a request llmtap cannot follow
    ├── HostNotAllowed     403       a Host header llmtap does not answer to (DNS rebinding)
    ├── CrossOriginRequest 403       a request from a web page on another origin
    ├── UpstreamUnreachable 502      refused, DNS, TLS: the request did not reach it
    ├── UpstreamNoAnswer    502      it had the request, then closed, reset or sent no HTTP
    ├── UpstreamTimeout     504      no byte within `read_timeout` (or no connection in time)
    └── ReplayMiss          404      replay mode and no recording matches (see replay)

`UpstreamAborted` is not an answer: the upstream broke after the response had started, so
the relay aborts the client's connection as the upstream aborted ours.
"""

from __future__ import annotations

import orjson


class LlmtapError(Exception):
    status = 500
    type = "llmtap_error"
    code: str | None = None

    def body(self) -> bytes:
        return openai_error(self.status, self.type, str(self), self.code)


class RequestTooLarge(LlmtapError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class BadControl(LlmtapError):
    """An `llmtap-*` header, or a request, that llmtap cannot act on as sent."""

    status = 400
    type = "invalid_request_error"
    code = "bad_request_for_llmtap"


class HostNotAllowed(LlmtapError):
    """A Host that names no address of this machine: a web page whose name was pointed at it."""

    status = 403
    type = "invalid_request_error"
    code = "host_not_allowed"


class CrossOriginRequest(LlmtapError):
    """A request a web page on another site made the browser send (its `Origin` says so)."""

    status = 403
    type = "invalid_request_error"
    code = "cross_origin_request"


class UpstreamUnreachable(LlmtapError):
    status = 502
    type = "llmtap_upstream_error"
    code = "upstream_unreachable"


class UpstreamNoAnswer(LlmtapError):
    """The upstream took the request and closed, reset or broke the connection before its
    answer's head: unlike an unreachable upstream, it may have acted on the request."""

    status = 502
    type = "llmtap_upstream_error"
    code = "upstream_no_answer"


class UpstreamTimeout(LlmtapError):
    status = 504
    type = "llmtap_upstream_error"
    code = "upstream_timeout"


class UpstreamAborted(Exception):
    """The upstream broke mid-response; raised to make the server drop the client connection."""


def openai_error(status: int, type: str, message: str, code: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type, "param": None, "code": code, "status": status}}
    )
