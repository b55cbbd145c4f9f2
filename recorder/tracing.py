"""From a finished Recording to what the store keeps: the raw exchange, a span, its trace.

Runs in the writer process. Nothing here raises on bad traffic: a body that is not JSON, a
stream cut short, garbage from the upstream all become a span that says so.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import orjson

from llmtap.recorder.agents import AgentLinker
from llmtap.recorder.assemble import Assembler
from llmtap.recorder.decoding import decoder_for, is_identity
from llmtap.recorder.endpoints import Endpoint, endpoint_for, invocation_params, usage_of
from llmtap.recorder.matching import match_key
from llmtap.recorder.models import model_record
from llmtap.recorder.prices import PriceTable, cost_of, default_prices
from llmtap.recorder.recording import Recording
from llmtap.recorder.records import Batch, Exchange, Span, SseEvent, Status, TraceHead
from llmtap.recorder.semconv import genai_attributes
from llmtap.recorder.sse import SseDecoder, split_simple


@dataclass(slots=True)
class StreamSummary:
    """What a replayed or recorded SSE stream said, event by event."""

    output: dict[str, Any] | None = None
    terminal_seen: bool = False
    error: Any = None
    first_output_ns: int | None = None
    usage_payload: Mapping[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _events_with_times(rec: Recording, problems: list[str]) -> list[tuple[SseEvent, int]]:
    """Decode the response chunk by chunk, so that each event keeps its arrival time."""
    try:
        decompressor = decoder_for(header(rec.response_headers, "content-encoding"))
    except ValueError as exc:
        problems.append(str(exc))
        return []
    decoder = SseDecoder()
    timed: list[tuple[SseEvent, int]] = []
    at = rec.started_ns
    try:
        for chunk, at in zip(rec.chunks, rec.chunk_times_ns, strict=True):
            timed.extend((event, at) for event in decoder.feed(decompressor.decompress(chunk)))
        timed.extend((event, at) for event in decoder.feed(decompressor.flush()))
    except Exception as exc:  # corrupt compressed data: keep what decoded so far
        problems.append(f"could not decode the response: {exc}")
    timed.extend((event, at) for event in decoder.finish())
    return timed


class _Events:
    """A stream's events as parallel lists: `data` (bytes from the whole-body split, str from
    the decoder), the `event:` names (None when no event has one), and the arrival time of
    each event, looked up only for the one event that needs it."""

    __slots__ = ("datas", "names", "_split", "_rec", "_times")

    def __init__(self, rec: Recording, body: bytes | None, problems: list[str]) -> None:
        self._rec = rec
        self._times: list[int] | None = None
        self._split = (
            split_simple(body)
            if body is not None
            and rec.chunks
            and len(rec.chunks) == len(rec.chunk_times_ns)
            and is_identity(header(rec.response_headers, "content-encoding"))
            else None
        )
        if self._split is not None:
            self.datas: list[Any] = self._split.payloads
            self.names = self._split.names
            return
        timed = _events_with_times(rec, problems)
        self.datas = [event.data for event, _ in timed]
        names = [event.event for event, _ in timed]
        self.names = names if any(name is not None for name in names) else None
        self._times = [at for _, at in timed]

    @property
    def split(self) -> bool:
        """The events came from `split_simple`: `datas` are bytes."""
        return self._split is not None

    def time_of(self, index: int) -> int:
        if self._split is None:
            assert self._times is not None
            return self._times[index]
        rec = self._rec  # the chunk in which the byte that dispatched the event arrived
        ends = list(accumulate(len(chunk) for chunk in rec.chunks))
        at = bisect_right(ends, self._split.dispatch_offset(index))
        return rec.chunk_times_ns[min(at, len(ends) - 1)]


def summarise_stream(
    endpoint: Endpoint, rec: Recording, body: bytes | None = None
) -> StreamSummary:
    """`body`: the response's bytes joined, when the caller has them (saves decoding the
    common shape of stream chunk by chunk)."""
    summary = StreamSummary()
    problems = summary.problems
    assembler: Assembler = endpoint.new_assembler()
    feed, carries_output, is_terminal = (
        assembler.feed,
        endpoint.carries_output,
        endpoint.is_terminal,
    )
    events = _Events(rec, body, problems)
    names = events.names
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    terminal_seen = False
    # an assembler that reads a chunk's JSON text itself, when it is like one it has seen:
    # for events that can change nothing here but the assembler's state (see `quiet`)
    feed_json = getattr(assembler, "feed_json", None) if events.split and names is None else None
    datas = events.datas
    i, count = -1, len(datas)
    while i + 1 < count:
        i += 1
        if feed_json is not None and summary.first_output_ns is not None:
            taken = feed_json(datas, i)  # a run of chunks alike but for their text
            if taken > i:
                i = taken - 1
                continue
        raw = datas[i]
        name = names[i] if names is not None else None
        if raw[:1] in _OBJECT_START:  # a JSON object, or not JSON at all; never [DONE]
            try:
                data = loads(raw)
            except decode_error:
                data = None
        else:
            data = None
        if data is None:  # [DONE], anything but an object, or bytes that are not UTF-8
            text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
            if text.strip() == "[DONE]":
                terminal_seen = terminal_seen or is_terminal(name, None)
                continue
            try:
                data = loads(text)
            except decode_error:
                problems.append(f"event is not JSON: {text[:200]!r}")
                continue
            if not isinstance(data, dict):
                problems.append(f"event is not a JSON object: {text[:200]!r}")
                continue
        if "error" in data and not data.get("choices") and name != "error":
            summary.error = data["error"]
            continue
        quiet = True  # nothing here depends on this event but the time of the first output
        if name == "error" or data.get("type") == "error":
            summary.error = data.get("error", data)
            quiet = False
        if summary.first_output_ns is None and carries_output(data):
            summary.first_output_ns = events.time_of(i)
        if (data.get("usage") is not None or "response" in data) and usage_of(data) is not None:
            summary.usage_payload = data
            quiet = False
        if not terminal_seen and is_terminal(name, data):
            terminal_seen = True
            quiet = False
        feed(data)
        if feed_json is not None and quiet:
            # its like (the same bytes but for the text: the same keys, type, usage, and
            # the endpoints' terminal tests never read the text) will be quiet too
            assembler.learn_json(raw, data)  # type: ignore[attr-defined]
    summary.terminal_seen = terminal_seen
    summary.output = assembler.result()
    problems.extend(getattr(assembler, "problems", ()))
    return summary


_OBJECT_START = (b"{", "{")


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")


def _decoded_body(rec: Recording, body: bytes, problems: list[str]) -> bytes:
    try:
        decompressor = decoder_for(header(rec.response_headers, "content-encoding"))
        return decompressor.decompress(body) + decompressor.flush()
    except Exception as exc:
        problems.append(f"could not decode the response: {exc}")
        return b""


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        inner = error.get("error", error)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(error)[:500] if error is not None else ""


_EXACT_NS = 10**15
"""Below this many nanoseconds, rounding half up in integers gives `round(ns / 1e6, 3)`
wherever the exact value is no tie (the float's error is far below a thousandth)."""


def chunk_ms(times_ns: list[int], started_ns: int) -> list[float]:
    """`round((t - started_ns) / 1e6, 3)` for each time, without `round`'s cost for floats:
    in integers wherever that gives the same float (not on ties, not below zero)."""
    return [
        (d + 500) // 1000 / 1000
        if 0 <= (d := t - started_ns) < _EXACT_NS and d % 1000 != 500
        else round(d / 1e6, 3)
        for t in times_ns
    ]


def build_exchange(rec: Recording, body: bytes, is_stream: bool) -> Exchange:
    started = rec.started_ns
    return Exchange(
        exchange_id=rec.exchange_id,
        method=rec.method,
        path=rec.path,
        query=rec.query,
        request_headers=tuple(rec.request_headers),
        request_body=rec.request_body,
        status=rec.error_status or rec.status,
        response_headers=tuple(rec.response_headers),
        response_body=body,
        chunks=tuple(zip(map(len, rec.chunks), chunk_ms(rec.chunk_times_ns, started), strict=True))
        if is_stream
        else (),
        started_ns=started,
        ended_ns=rec.ended_ns or started,
        first_byte_ns=rec.chunk_times_ns[0] if rec.chunk_times_ns else None,
        error=rec.error,
        key_fingerprint=rec.key_fingerprint,
        experiment=rec.context.experiment,
        usage_injected=rec.usage_injected,
    )


@dataclass
class Tracer:
    """Builds batches in the writer process; keeps what links one call to the next."""

    log_traces: bool = True
    prices: PriceTable = field(default_factory=default_prices)
    linker: AgentLinker = field(default_factory=AgentLinker)
    log_models: bool = False
    log_model_signatures: bool = False
    log_input_examples: bool = False
    registered_model_name: str | None = None

    def build(self, rec: Recording) -> Batch:
        """The exchange, and for a traced endpoint its spans and trace head."""
        exchange, is_stream = exchange_of(rec)
        endpoint = endpoint_for(rec.path)
        if endpoint is None or not self.log_traces or rec.method != "POST":
            key = match_key(rec.method, rec.path, rec.request_body, query=rec.query)
            return Batch(exchange, key, is_stream)
        inputs = _parse_json(rec.request_body)  # once: for the key, the span and the links
        key = match_key(rec.method, rec.path, rec.request_body, query=rec.query, parsed=inputs)
        links = self.linker.link(rec, inputs, explicit_trace=rec.context.trace_id is not None)
        if links.trace_id is not None:
            rec.trace_id = links.trace_id  # kept: writing the recording again lands here too
        span = build_span(
            endpoint,
            rec,
            exchange,
            is_stream,
            inputs,
            self.prices,
            links.parent_id or rec.context.parent_id,
        )
        self.linker.remember(rec, span)
        ctx = rec.context
        head = TraceHead(span.trace_id, ctx.experiment, ctx.session, dict(ctx.tags))
        model = None
        if self.log_models and 200 <= (exchange.status or 0) < 300:  # a configuration that works
            model = model_record(
                endpoint.name,
                inputs,
                ctx.experiment,
                signatures=self.log_model_signatures,
                input_examples=self.log_input_examples,
                registered_model_name=self.registered_model_name,
            )
        spans = (*links.spans, span)
        return Batch(exchange, key, is_stream, spans, head, links.reparent, model)


def exchange_of(rec: Recording) -> tuple[Exchange, bool]:
    """The raw exchange of a recording, and whether its answer was a stream."""
    content_type = header(rec.response_headers, "content-type") or ""
    is_stream = content_type.startswith("text/event-stream")
    body = rec.error_body if rec.error_status else b"".join(rec.chunks)
    return build_exchange(rec, body or b"", is_stream), is_stream


def raw_batch(rec: Recording) -> Batch:
    """The exchange alone, parsing nothing: the writer's fallback when a full batch fails."""
    exchange, is_stream = exchange_of(rec)
    key = hashlib.sha256(rec.method.encode() + rec.path.encode() + rec.request_body).hexdigest()
    return Batch(exchange, key, is_stream)


def build_batch(rec: Recording, *, log_traces: bool = True) -> Batch:
    """One recording on its own, with no memory of earlier calls (tests, tools)."""
    return Tracer(log_traces=log_traces).build(rec)


def build_span(
    endpoint: Endpoint,
    rec: Recording,
    exchange: Exchange,
    is_stream: bool,
    inputs: Any,
    prices: PriceTable,
    parent_id: str | None,
) -> Span:
    problems: list[str] = []
    attributes: dict[str, Any] = {"endpoint": endpoint.name}
    if isinstance(inputs, dict):
        attributes.update(invocation_params(inputs))
    else:
        problems.append("request body is not a JSON object")
    attributes["model"] = inputs.get("model") if isinstance(inputs, dict) else None
    attributes["stream"] = is_stream
    attributes["http_status"] = exchange.status
    error: Any = None
    outputs: Any = None
    usage = None
    if rec.error_status:
        error = _parse_json(rec.error_body or b"")
    elif is_stream:
        summary = summarise_stream(endpoint, rec, exchange.response_body)
        outputs, error = summary.output, summary.error
        problems.extend(summary.problems)
        usage = usage_of(summary.output) or usage_of(summary.usage_payload)
        if summary.first_output_ns is not None:
            attributes["time_to_first_token_ms"] = round(
                (summary.first_output_ns - rec.started_ns) / 1e6, 3
            )
        if not summary.terminal_seen and rec.error is None and error is None:
            rec_error = "the stream ended before its final event"
            problems.append(rec_error)
            error = error or rec_error
    else:
        decoded = _parse_json(_decoded_body(rec, exchange.response_body, problems))
        if (exchange.status or 0) >= 400:
            error = decoded
        elif isinstance(decoded, dict):
            outputs = endpoint.response_output(decoded)
            usage = usage_of(decoded)
        else:  # garbage with a 200: the client's SDK fails on it, and the span says why
            outputs = decoded
            error = {"message": "the upstream's answer is not a JSON object"}
            problems.append(error["message"])
    if usage is not None:
        attributes["usage"] = usage.as_dict()
    attributes["llmtap.usage_source"] = "provider" if usage is not None else "missing"
    if rec.usage_injected:
        attributes["llmtap.usage_requested_by_llmtap"] = True
    request_model = attributes.get("model")
    attributes.update(
        genai_attributes(endpoint.operation, request_model, outputs, usage, rec.context)
    )
    if usage is not None:
        raw_usage = outputs.get("usage") if isinstance(outputs, dict) else None
        cost = cost_of(
            prices,
            (attributes.get("gen_ai.response.model"), request_model),
            raw_usage if isinstance(raw_usage, dict) else {},
            usage.input_tokens,
            usage.output_tokens,
        )
        if cost is not None:
            attributes["cost"] = cost
    if problems:
        attributes["llmtap.reassembly_problems"] = problems[:20]
    status = _status(rec, exchange, error)
    if error is not None and outputs is None and status.code == "ERROR":
        outputs = error if isinstance(error, (dict, list)) else {"error": error}
    return Span(
        span_id=rec.span_id,
        trace_id=rec.trace_id,
        parent_id=parent_id,
        name=endpoint.name,
        span_type=endpoint.span_type,
        start_time_ns=rec.started_ns,
        end_time_ns=exchange.ended_ns,
        status=status,
        inputs=inputs,
        outputs=outputs,
        attributes=attributes,
    )


def _status(rec: Recording, exchange: Exchange, error: Any) -> Status:
    if rec.error:
        return Status("ERROR", rec.error)
    if (exchange.status or 0) >= 400:
        return Status("ERROR", _error_message(error) or f"HTTP {exchange.status}")
    if error is not None:
        return Status("ERROR", _error_message(error))
    return Status("OK", "")
