"""From a finished Recording to what the store keeps: the raw exchange, a span, its trace.

Runs in the writer process. Nothing here raises on bad traffic: a body that is not JSON, a
stream cut short, garbage from the upstream all become a span that says so.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from llmtap.recorder.agents import AgentLinker
from llmtap.recorder.chunk_times import chunks_json
from llmtap.recorder.decoding import DECODED_AT_MOST, decode_at_most
from llmtap.recorder.endpoints import Endpoint, endpoint_for, invocation_params, usage_of
from llmtap.recorder.matching import content_encoding, decoded_request, match_key
from llmtap.recorder.models import model_record
from llmtap.recorder.prices import PriceTable, cost_of, default_prices
from llmtap.recorder.recording import FAULT_REASON, Recording
from llmtap.recorder.records import (
    Batch,
    Exchange,
    Span,
    SpanType,
    Status,
    TraceHead,
    VersionLink,
)
from llmtap.recorder.secret_headers import redacted_query
from llmtap.recorder.semconv import genai_attributes, request_attributes
from llmtap.recorder.spool import PieceSpool
from llmtap.recorder.stream_summary import StreamSummariser, StreamSummary


def header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def summarise_stream(endpoint: Endpoint, rec: Recording, *, split: bool = True) -> StreamSummary:
    """What a whole recorded stream said. A recording whose pieces were fed while it ran has
    its summariser already. `split=False`: every piece through the decoder (the reference
    the fast split is tested against)."""
    summariser = rec.summariser
    if summariser is None:
        summariser = StreamSummariser(
            endpoint,
            header(rec.response_headers, "content-encoding"),
            rec.started_ns,
            split=split,
        )
        if rec.spool is not None:
            for pieces, times in rec.spool.batches():
                summariser.feed(pieces, times)
        else:
            summariser.feed(rec.chunks, rec.chunk_times_ns)
    return summariser.finish()


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")


def _decoded_body(rec: Recording, body: bytes | PieceSpool, problems: list[str]) -> bytes:
    if isinstance(body, PieceSpool):  # a long answer, on file
        if body.size > DECODED_AT_MOST:
            problems.append(f"the response is over {DECODED_AT_MOST >> 20} MB: not read")
            return b""
        body = b"".join(body.blocks())
    try:
        decoded = decode_at_most(
            body, header(rec.response_headers, "content-encoding"), DECODED_AT_MOST
        )
    except Exception as exc:
        problems.append(f"could not decode the response: {exc}")
        return b""
    if decoded is None:  # the exchange keeps the bytes as sent; they are not read
        problems.append(f"the response decodes to more than {DECODED_AT_MOST >> 20} MB: not read")
        return b""
    return decoded


def _error_message(error: Any) -> str:
    if isinstance(error, dict):
        inner = error.get("error", error)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(error)[:500] if error is not None else ""


def build_exchange(rec: Recording, body: bytes | PieceSpool, is_stream: bool) -> Exchange:
    started = rec.started_ns
    spool = rec.spool
    if spool is not None:  # a long stream, on file
        chunks = chunks_json(spool.lengths, spool.times, started)
        first_byte_ns = spool.times[0] if spool.times else None
    else:
        if not is_stream:
            chunks = "[]"
        elif rec.chunks_json is not None:  # made while the stream ran (`ChunkTimes`)
            chunks = rec.chunks_json
        else:
            chunks = chunks_json(list(map(len, rec.chunks)), rec.chunk_times_ns, started)
        first_byte_ns = rec.chunk_times_ns[0] if rec.chunk_times_ns else None
    return Exchange(
        exchange_id=rec.exchange_id,
        method=rec.method,
        path=rec.path,
        query=redacted_query(rec.query),
        request_headers=tuple(rec.request_headers),
        request_body=rec.request_body,
        status=rec.error_status or rec.status,
        response_headers=tuple(rec.response_headers),
        response_body=body,
        chunks=chunks,
        started_ns=started,
        ended_ns=rec.ended_ns or started,
        first_byte_ns=first_byte_ns,
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
        left_background = _left_in_background(rec)
        if left_background:  # the client chose to stop reading: no failure, a replayable prefix
            rec.error = None
        exchange, is_stream = exchange_of(rec)
        endpoint = endpoint_for(rec.path)
        # a compressed request: replay matches it, and the span shows it, decoded
        body = decoded_request(rec.request_body, content_encoding(rec.request_headers))
        if endpoint is None or rec.method != "POST" or not (self.log_traces or self.log_models):
            key = match_key(rec.method, rec.path, body, query=rec.query)
            return Batch(exchange, key, is_stream)
        inputs = _parse_json(body)  # once: for the key, the span and the links
        key = match_key(rec.method, rec.path, body, query=rec.query, parsed=inputs)
        ctx = rec.context
        model = None
        # a configuration that works; a prediction's call (`llmtap-model-version`, the version
        # it ran) is one of that version's traces: `predict` runs a version again, as MLflow's
        # does, and never makes one
        if self.log_models and ctx.predicted is not None:
            model = VersionLink(*ctx.predicted)
        elif self.log_models and 200 <= (exchange.status or 0) < 300:
            model = model_record(
                endpoint.name,
                inputs,
                ctx.experiment,
                signatures=self.log_model_signatures,
                input_examples=self.log_input_examples,
                registered_model_name=self.registered_model_name,
            )
        if not self.log_traces:  # the switches are apart, as in MLflow's autolog
            return Batch(exchange, key, is_stream, model_version=model)
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
            rec.context.parent_id or links.parent_id,  # a traceparent names the parent itself
            left_background,
        )
        self.linker.remember(rec, span)
        if links.spans and links.spans[0].span_type is SpanType.AGENT:  # the run's root
            links.spans = (self.linker.settle(links.spans[0], span), *links.spans[1:])
        head = TraceHead(span.trace_id, ctx.experiment, ctx.session, dict(ctx.tags))
        spans = (*links.spans, span)
        return Batch(exchange, key, is_stream, spans, head, links.reparent, model)


CLIENT_LEFT = "client disconnected"
"""What the proxy records when the client went away before its answer's end."""


def _left_in_background(rec: Recording) -> bool:
    """A client that stopped reading a Responses stream it started with `background: true`:
    OpenAI's documented pattern (read, drop the connection, resume with `GET /v1/responses/
    {id}?stream=true&starting_after=N`), not a failure. What it read replays as it was."""
    if rec.error != CLIENT_LEFT or rec.method != "POST" or not rec.path.startswith("/responses"):
        return False
    if b'"background"' not in rec.request_body:  # (parsed only when it may say so)
        return False
    body = _parse_json(rec.request_body)
    return isinstance(body, dict) and body.get("background") is True and body.get("stream") is True


def exchange_of(rec: Recording) -> tuple[Exchange, bool]:
    """The raw exchange of a recording, and whether its answer was a stream."""
    content_type = header(rec.response_headers, "content-type") or ""
    is_stream = rec.unlabelled_stream or content_type.startswith("text/event-stream")
    body: bytes | PieceSpool | None
    if rec.error_status:
        body = rec.error_body
    elif rec.spool is not None:
        body = rec.spool  # written to the row a block at a time (`SqliteStore`)
    else:
        body = b"".join(rec.chunks)
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
    left_background: bool = False,
) -> Span:
    problems: list[str] = []
    attributes: dict[str, Any] = {"endpoint": endpoint.name}
    named: dict[str, Any] = {}
    if isinstance(inputs, dict):
        params = invocation_params(endpoint, inputs)
        attributes.update(params)
        named = request_attributes(params)
    else:
        problems.append("request body is not a JSON object")
    attributes["model"] = inputs.get("model") if isinstance(inputs, dict) else None
    # a stream the client asked for is one even when an error came instead (a 400 as JSON)
    asked = isinstance(inputs, dict) and inputs.get("stream") is True
    attributes["stream"] = is_stream or (
        asked and exchange.status is not None and exchange.status >= 400
    )
    attributes["http_status"] = exchange.status
    error: Any = None
    stream_error: Any = None  # an error event in the stream
    outputs: Any = None
    usage = None
    if rec.error_status:
        error = _parse_json(rec.error_body or b"")
    elif is_stream:
        summary = summarise_stream(endpoint, rec)
        outputs, error = summary.output, summary.error
        stream_error = summary.error
        problems.extend(summary.problems)
        usage = usage_of(summary.output) or usage_of(summary.usage_payload)
        if summary.first_output_ns is not None:
            attributes["time_to_first_token_ms"] = round(
                (summary.first_output_ns - rec.started_ns) / 1e6, 3
            )
        error = error or _failed_response_error(outputs)
        ended = summary.terminal_seen or _every_choice_finished(outputs)
        if left_background:
            attributes["llmtap.note"] = (
                "the client stopped reading a background response, which goes on at the "
                "upstream (GET /v1/responses/{id} has it, stream=true&starting_after=N resumes it)"
            )
        elif not ended and rec.error is None and error is None:
            rec_error = "the stream ended before its final event"
            problems.append(rec_error)
            error = error or rec_error
    elif exchange.status is None:
        pass  # no answer came (the client left first): nothing to read; the status says why
    else:
        decoded = _parse_json(_decoded_body(rec, exchange.response_body, problems))
        if exchange.status >= 400:
            error = decoded
        elif isinstance(decoded, dict):
            outputs = endpoint.response_output(decoded)
            usage = usage_of(decoded)
            error = _failed_response_error(outputs)
        else:  # garbage with a 200: the client's SDK fails on it, and the span says why
            outputs = decoded
            error = {"message": "the upstream's answer is not a JSON object"}
            problems.append(error["message"])
    # always there (SPEC 3 names it among the attributes a span has): null when the upstream
    # told none, as for a failed call
    attributes["usage"] = usage.as_dict() if usage is not None else None
    attributes["llmtap.usage_source"] = "provider" if usage is not None else "missing"
    if rec.usage_injected:
        attributes["llmtap.usage_requested_by_llmtap"] = True
    if rec.fault is not None:
        attributes["llmtap.fault"] = rec.fault
    request_model = attributes.get("model")
    attributes.update(named)
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
            attributes["cost"] = attributes["mlflow.llm.cost"] = cost
    if problems:
        attributes["llmtap.reassembly_problems"] = problems[:20]
    status = _status(rec, exchange, error, stream_error)
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


def _failed_response_error(outputs: Any) -> Any:
    """A Responses API response that says it failed (`response.failed`, or a 200 whose status
    is "failed"): its error, for the span's status; None for anything else."""
    if not isinstance(outputs, dict) or outputs.get("object") != "response":
        return None
    if outputs.get("status") != "failed":
        return None
    return outputs.get("error") or {"message": "the response failed"}


def _every_choice_finished(outputs: Any) -> bool:
    """A chat or completions stream whose every choice has its finish reason: whole for its
    client though no `[DONE]` followed (some providers never send one; the SDKs read to the
    end of the body then, without an error)."""
    choices = outputs.get("choices") if isinstance(outputs, dict) else None
    return bool(choices) and all(isinstance(c, dict) and c.get("finish_reason") for c in choices)


def _status(rec: Recording, exchange: Exchange, error: Any, stream_error: Any = None) -> Status:
    if rec.error:
        # an SDK raises at a stream's error event and leaves: that error is what happened
        said = _error_message(stream_error) if stream_error is not None else ""
        return Status("ERROR", f"{said} ({rec.error})" if said else rec.error)
    if (exchange.status or 0) >= 400:
        return Status("ERROR", _error_message(error) or f"HTTP {exchange.status}")
    if error is not None:
        return Status("ERROR", _error_message(error))
    if rec.fault is not None:  # a stream cut for its client: the upstream's answer was whole
        return Status("ERROR", f"{FAULT_REASON}: {rec.fault} (the client's stream was cut)")
    return Status("OK", "")
