"""Recording: one exchange's state while it is on the wire.

Everything here is cheap on purpose: the event loop only appends bytes and timestamps. All
parsing (decompression, SSE, reassembly, spans) happens later in the writer process, in
`llmtap.recorder.tracing.build_batch`.

Contract: `feed()` any number of times, then `finish()` or `fail(reason)`; a recording that
was finished early (committed at `[DONE]`) may still be fed and finished again, in which case
the later, fuller copy replaces the earlier one in the store.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from llmtap.recorder.records import RequestContext

FAULT_REASON = "injected by llmtap"
"""How the `error` of a fault llmtap answered begins (`proxy/faults.py`): no call was made."""


def new_trace_id() -> str:
    """Random, unlike span ids: people tell traces apart (and type them) by their first few
    characters, which a time prefix would make all alike."""
    return os.urandom(16).hex()


def new_span_id() -> str:
    """16 hex: 40 bits of microseconds (they wrap every 12.7 days), then 24 random bits, so
    that new span and exchange rows append to their indexes instead of landing all over them."""
    return f"{_time_prefix(time.time_ns())}{os.urandom(3).hex()}"


def _time_prefix(ns: int) -> str:
    return f"{(ns // 1000) & 0xFF_FFFF_FFFF:010x}"


@dataclass(slots=True)
class Recording:
    method: str
    path: str
    """The API path below the base URL, e.g. `/chat/completions`."""
    query: str
    request_headers: list[tuple[str, str]]
    """Already redacted by `llmtap.proxy.headers`."""
    request_body: bytes
    context: RequestContext
    key_fingerprint: str | None = None
    started_ns: int = field(default_factory=time.time_ns)
    exchange_id: str = ""
    """As `new_span_id` makes them (time of `started_ns`); made at creation when not given."""
    span_id: str = ""
    status: int | None = None
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    chunk_times_ns: list[int] = field(default_factory=list)
    ended_ns: int | None = None
    error: str | None = None
    error_status: int | None = None
    """Set when llmtap itself answered (502/504/413...) instead of the upstream."""
    error_body: bytes | None = None
    discard: bool = False
    """Forward only (mode off for this request): nothing is written."""
    committed: bool = False
    """A complete copy is in the store (a stream is complete for its client at [DONE])."""
    trace_id: str = ""
    """Fixed at creation, so that writing the recording again updates the same trace."""
    usage_injected: bool = False
    """llmtap asked the upstream for stream usage the client did not request."""
    unlabelled_stream: bool = False
    """The answer is an SSE stream its server labelled otherwise (application/json, text/plain
    or no type): relayed and recorded as a stream, as the SDKs read it."""
    fault: str | None = None
    """The kind of fault llmtap injected (`llmtap-fault`): its span is an ERROR that says so."""
    dropped: int = 0
    """In the proxy: how many first pieces it let go of, the writer process having them on
    file (`chunks` and `chunk_times_ns` hold the pieces after those)."""
    summariser: Any = None
    """In the writer process only: a `StreamSummariser` already fed these chunks while the
    stream ran (see `llmtap.recorder.stream_summary`); never sent across."""
    spool: Any = None
    """In the writer process only: a long stream's pieces and their times, on file (see
    `llmtap.recorder.spool`); `chunks` and `chunk_times_ns` are then empty."""
    chunks_json: str | None = None
    """In the writer process only: what the exchange keeps of `chunks` and `chunk_times_ns`,
    as JSON already, made while the stream ran (see `llmtap.recorder.chunk_times`)."""

    def __post_init__(self) -> None:
        # the ids from one read of the system's randomness (a syscall), not one per id
        rand = os.urandom(22).hex()  # 6 + 6 hex for the span ids, 32 for a trace id
        if not self.exchange_id:
            self.exchange_id = _time_prefix(self.started_ns) + rand[:6]
        if not self.span_id:
            self.span_id = _time_prefix(self.started_ns) + rand[6:12]
        if not self.trace_id:
            self.trace_id = self.context.trace_id or rand[12:]

    def respond(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.status = status
        self.response_headers = headers

    def feed(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.chunk_times_ns.append(time.time_ns())

    @property
    def piece_count(self) -> int:
        """Pieces received, those let go of included."""
        return self.dropped + len(self.chunks)

    def finish(self) -> Recording:
        self.ended_ns = time.time_ns()
        return self

    def fail(self, reason: str, status: int | None = None, body: bytes | None = None) -> Recording:
        """Mark the exchange failed; `status`/`body`: what llmtap itself answered, if anything."""
        self.error = reason
        if status is not None:
            self.error_status = status
            self.error_body = body
        self.ended_ns = time.time_ns()
        return self
