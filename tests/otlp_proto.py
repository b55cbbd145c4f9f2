"""OTLP/JSON read back through opentelemetry-proto's generated classes, strictly: what the
export tests use to say a line is a valid ExportTraceServiceRequest."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

_IDS = ("traceId", "spanId", "parentSpanId")


def parse_strictly(line: str) -> ExportTraceServiceRequest:
    """The line through protobuf's JSON parser (unknown fields and ill-typed values fail it),
    and back: protobuf's own printing of what it parsed must be the line itself. The ids
    are hex in OTLP and base64 in protobuf's mapping; they are turned into base64 for the
    parser, so a wrong length shows as bytes of the wrong size."""
    as_protobuf_maps_it = orjson.dumps(_ids(orjson.loads(line), _hex_to_base64))
    message = ExportTraceServiceRequest()
    json_format.Parse(as_protobuf_maps_it, message)
    printed = json_format.MessageToDict(message, use_integers_for_enums=True)
    assert _ids(printed, _base64_to_hex) == orjson.loads(line)
    for span in spans_of(message):
        assert len(span.trace_id) == 16 and len(span.span_id) == 8
        assert len(span.parent_span_id) in (0, 8)
    return message


def _ids(request: dict[str, Any], convert: Callable[[str], str]) -> dict[str, Any]:
    for resource in request.get("resourceSpans", ()):
        for scope in resource.get("scopeSpans", ()):
            for span in scope.get("spans", ()):
                for key in _IDS:
                    if key in span:
                        span[key] = convert(span[key])
    return request


def _hex_to_base64(value: str) -> str:
    return base64.b64encode(bytes.fromhex(value)).decode()


def _base64_to_hex(value: str) -> str:
    return base64.b64decode(value).hex()


def spans_of(message: ExportTraceServiceRequest) -> list[Span]:
    return [s for r in message.resource_spans for ss in r.scope_spans for s in ss.spans]


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def attributes_of(span: Span) -> dict[str, Any]:
    keys = [kv.key for kv in span.attributes]
    assert len(keys) == len(set(keys)), "an attribute key repeats"
    return {kv.key: value_of(kv.value) for kv in span.attributes}
