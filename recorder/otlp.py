"""One recorded trace as an OTLP/JSON `ExportTraceServiceRequest`, for `llmtap export --format
otlp`: the OpenTelemetry Collector's file format (one request per line), which its
`otlpjsonfile` receiver reads and which MLflow, Langfuse and Phoenix ingest over OTLP.

The encoding is protobuf's JSON mapping of opentelemetry-proto as the OTLP spec fixes it:
lowerCamelCase names, 64-bit integers as decimal strings, enums as integers, default values
left out, and, OTLP's one exception, trace and span ids as hex rather than base64. What goes
in a span beside the attributes it has in the store:

- `mlflow.spanType`, and inputs and outputs as JSON text under `mlflow.spanInputs` and
  `mlflow.spanOutputs`: MLflow's own span attributes, which its OTLP endpoint reads back;
- `openinference.span.kind`, `input.value` and `output.value` (with their mime types): what
  Phoenix shows, and Langfuse reads them too;
- on each root span (no parent in the trace), the trace's session as `session.id` and
  `mlflow.trace.session`, each tag as `mlflow.traceTag.<key>`, and the tag `user` (the
  `llmtap-user` header) as `user.id` and `mlflow.trace.user`, where MLflow looks for them.

The resource says `service.name` "llmtap" and the trace's experiment as `llmtap.experiment`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

SPAN_KIND_INTERNAL = 1
SPAN_KIND_CLIENT = 3
"""opentelemetry-proto's `Span.SpanKind` values: a model call leaves the process (CLIENT, as
the GenAI conventions have inference spans); an agent run and a tool call happen in the client."""

STATUS_CODES = {"OK": 1, "ERROR": 2}
"""`Status.StatusCode`: STATUS_CODE_OK, STATUS_CODE_ERROR; anything else is UNSET (0)."""

_INTERNAL_TYPES = frozenset({"AGENT", "TOOL"})
_OPENINFERENCE_KINDS = {
    "CHAT_MODEL": "LLM",
    "LLM": "LLM",
    "EMBEDDING": "EMBEDDING",
    "TOOL": "TOOL",
    "AGENT": "AGENT",
}
_INT64 = range(-(2**63), 2**63)


def export_request(trace: Mapping[str, Any], version: str) -> dict[str, Any]:
    """`trace` as `TraceReader.get_trace` gives it (`{"info": ..., "spans": [...]}`) as one
    ExportTraceServiceRequest: one resource, one scope (llmtap at `version`), its spans."""
    info = trace["info"]
    spans = trace["spans"]
    ids = {span["span_id"] for span in spans}
    resource = {"service.name": "llmtap", "llmtap.experiment": info.get("experiment")}
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": key_values(resource)},
                "scopeSpans": [
                    {
                        "scope": {"name": "llmtap", "version": version},
                        "spans": [
                            otlp_span(span, info, root=span.get("parent_id") not in ids)
                            for span in spans
                        ],
                    }
                ],
            }
        ]
    }


def otlp_span(span: Mapping[str, Any], info: Mapping[str, Any], *, root: bool) -> dict[str, Any]:
    """One stored span as an OTLP `Span`; a `root` also carries the trace's session and tags."""
    start = span["start_time_ns"]
    end = span.get("end_time_ns") or start
    out: dict[str, Any] = {
        "traceId": hex_id(span.get("trace_id") or info["trace_id"], 32),
        "spanId": hex_id(span["span_id"], 16),
    }
    if span.get("parent_id"):  # a traceparent's parent may be a client span not exported here
        out["parentSpanId"] = hex_id(span["parent_id"], 16)
    if span.get("name"):
        out["name"] = span["name"]
    out["kind"] = SPAN_KIND_INTERNAL if span["span_type"] in _INTERNAL_TYPES else SPAN_KIND_CLIENT
    out["startTimeUnixNano"] = str(start)
    out["endTimeUnixNano"] = str(end)
    attributes = key_values({**span.get("attributes", {}), **_added_attributes(span, info, root)})
    if attributes:
        out["attributes"] = attributes
    out["status"] = otlp_status(span.get("status") or {})
    return out


def _added_attributes(
    span: Mapping[str, Any], info: Mapping[str, Any], root: bool
) -> dict[str, Any]:
    added: dict[str, Any] = {
        "mlflow.spanType": span["span_type"],
        "openinference.span.kind": _OPENINFERENCE_KINDS.get(span["span_type"], "UNKNOWN"),
    }
    for side in ("inputs", "outputs"):
        value = span.get(side)
        if value is None:
            continue
        as_json = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()  # made once
        added["mlflow.spanInputs" if side == "inputs" else "mlflow.spanOutputs"] = as_json
        # OpenInference: text as it is (a tool's result), anything else as JSON
        prefix = "input" if side == "inputs" else "output"
        text = isinstance(value, str)
        added[f"{prefix}.value"] = value if text else as_json
        added[f"{prefix}.mime_type"] = "text/plain" if text else "application/json"
    link = span.get("model_version")
    if isinstance(link, dict) and link.get("model_uri"):
        added["llmtap.model_uri"] = link["model_uri"]
    if root:
        if info.get("session"):
            added["session.id"] = info["session"]
            added["mlflow.trace.session"] = info["session"]
        tags = info.get("tags") or {}
        for key, value in tags.items():
            added[f"mlflow.traceTag.{key}"] = value
        if tags.get("user"):  # `llmtap-user`: MLflow's trace user, OTel's user on the root
            added["mlflow.trace.user"] = tags["user"]
            if not (span.get("attributes") or {}).get("user.id"):  # (the call's own goes first)
                added["user.id"] = tags["user"]
    return added


def otlp_status(status: Mapping[str, Any]) -> dict[str, Any]:
    code = STATUS_CODES.get(status.get("code") or "", 0)
    out: dict[str, Any] = {"code": code} if code else {}
    if code == STATUS_CODES["ERROR"] and status.get("message"):
        out["message"] = str(status["message"])  # OTel keeps a description for errors only
    return out


def key_values(attributes: Mapping[str, Any]) -> list[dict[str, Any]]:
    """`[{key, value: AnyValue}]`, one per key (a dict cannot repeat one, as OTLP forbids)."""
    return [{"key": str(key), "value": any_value(value)} for key, value in attributes.items()]


def any_value(value: Any) -> dict[str, Any]:
    """An AnyValue. Scalars keep their type, and a list of one scalar type is an array, as
    OTel attributes allow (`gen_ai.response.finish_reasons` is a string[] in the GenAI
    conventions). Objects and mixed lists travel as JSON text, not as kvlist values: that is
    how MLflow's own spans hold every attribute (its OTLP endpoint decodes JSON text back to
    the object, so `mlflow.chat.tokenUsage` arrives as the dict its token counts read), what
    Langfuse and Phoenix read for inputs, outputs and metadata, and what backends that take
    only OTel's primitive attributes (Jaeger, Tempo) keep whole instead of flattening."""
    if value is None:
        return {}  # an empty AnyValue: OTLP's null
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)} if value in _INT64 else {"stringValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, list) and _one_scalar_type(value):
        return {"arrayValue": {"values": [any_value(v) for v in value]} if value else {}}
    return {"stringValue": orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()}


def _one_scalar_type(values: list[Any]) -> bool:
    kinds = {type(v) for v in values}
    return len(kinds) <= 1 and kinds <= {str, bool, int, float}


def hex_id(value: str, length: int) -> str:
    """`value` when it is an id OTLP takes (lowercase hex of `length`, not all zeros), else a
    hash of it of that length: the same text always gives the same id, so parent links hold.
    llmtap makes and stores only valid ids; this keeps any other row from failing a file."""
    lowered = str(value).lower()
    if len(lowered) == length and lowered.strip("0") and all(c in _HEX for c in lowered):
        return lowered
    return hashlib.blake2b(str(value).encode(), digest_size=length // 2).hexdigest()


_HEX = frozenset("0123456789abcdef")
