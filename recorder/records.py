"""The recorder's vocabulary: the records that flow from the proxy to the store.

Treat them as values: nothing changes one once it is built. Those the writer builds for every
recording (`Exchange`, `Span`, `Status`, `Usage`, `TraceHead`, `Batch`) are not `frozen`
dataclasses only because a frozen one costs several times as much to build (one
`object.__setattr__` call per field): ~7 us per recording.

Field names follow SPEC section 3 verbatim (`span_type`, `start_time_ns`, `finish_reason`...),
so that what is stored, what the API returns and what the docs say are the same words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmtap.recorder.spool import PieceSpool


class SpanType(StrEnum):
    CHAT_MODEL = "CHAT_MODEL"
    LLM = "LLM"
    EMBEDDING = "EMBEDDING"
    TOOL = "TOOL"
    AGENT = "AGENT"
    UNKNOWN = "UNKNOWN"


class Mode(StrEnum):
    RECORD = "record"
    REPLAY = "replay"
    AUTO = "auto"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One server-sent event, as the SSE specification dispatches it."""

    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Where a request belongs, taken from its path and its `llmtap-*`/`traceparent` headers."""

    experiment: str = "Default"
    trace_id: str | None = None
    """An existing trace to join (from `traceparent` or `llmtap-trace-id`)."""
    parent_id: str | None = None
    """The span to nest under (from `traceparent`)."""
    session: str | None = None
    user: str | None = None
    """Who the call was made for (`llmtap-user`): the span's `user.id`, the trace's tag `user`."""
    tags: Mapping[str, str] = field(default_factory=dict)
    predicted: tuple[str, int] | None = None
    """(name, version) of the model version a `predict` call runs (`llmtap-model-version`)."""


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cache_read_input_tokens: int = 0
    """Of the input, how many came from the provider's prompt cache (MLflow's name)."""

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.total_tokens + other.total_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
        )

    def as_dict(self) -> dict[str, int]:
        counts = {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }
        if self.cache_read_input_tokens:  # as MLflow's token usage: only when there were some
            counts["cache_read_input_tokens"] = self.cache_read_input_tokens
        return counts


@dataclass(slots=True)
class Exchange:
    """One raw HTTP exchange, enough to replay it byte for byte.

    Headers are already redacted (see `llmtap.proxy.headers`); `response_body` holds the bytes
    as the upstream sent them (still compressed if they were), and `chunks` the size and arrival
    time of each piece, so that a stream can be replayed with its original cuts and pace.
    """

    exchange_id: str
    method: str
    path: str
    query: str
    request_headers: tuple[tuple[str, str], ...]
    request_body: bytes
    status: int | None
    response_headers: tuple[tuple[str, str], ...]
    response_body: bytes | PieceSpool
    """A long stream's body stays on file (`PieceSpool`) until the store copies it in."""
    chunks: str
    """`[[size in bytes, milliseconds after the request started], ...]` for each piece
    received, as JSON (`llmtap.recorder.chunk_times`); `[]` for a body that is no stream."""
    started_ns: int
    ended_ns: int
    first_byte_ns: int | None
    error: str | None
    key_fingerprint: str | None
    experiment: str
    usage_injected: bool = False


@dataclass(slots=True)
class Status:
    code: str = "OK"
    message: str = ""


@dataclass(slots=True)
class Span:
    span_id: str
    trace_id: str
    parent_id: str | None
    name: str
    span_type: SpanType
    start_time_ns: int
    end_time_ns: int
    status: Status
    inputs: Any
    outputs: Any
    attributes: Mapping[str, Any]


@dataclass(slots=True)
class TraceHead:
    """What one span tells about its trace; the store folds these into the trace row."""

    trace_id: str
    experiment: str
    session: str | None
    tags: Mapping[str, str]


@dataclass(slots=True)
class Batch:
    """Everything one finished request adds to the store, written in one transaction."""

    exchange: Exchange
    match_key: str
    """What replay looks the exchange up by (see `llmtap.recorder.matching`)."""
    stream: bool = False
    spans: tuple[Span, ...] = ()
    trace: TraceHead | None = None
    reparent: tuple[tuple[str, str], ...] = ()
    """(span_id, parent_id) of spans written earlier that now nest under an AGENT root."""
    model_version: Any = None
    """With log_models: the call's `llmtap.recorder.models.ModelRecord` (the store numbers it)."""


@dataclass(frozen=True, slots=True)
class VersionLink:
    """A call `predict` made for a version (`Batch.model_version`): one of that version's
    traces, never a version of its own (MLflow's predict leaves the registry as it is)."""

    name: str
    version: int
