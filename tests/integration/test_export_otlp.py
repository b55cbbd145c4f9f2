"""`llmtap export --format otlp` on real traffic: each line is parsed by opentelemetry-proto's
own classes, must be exactly what protobuf prints for what it parsed (OTLP's hex ids aside),
and must say what GET /api/traces/{id} says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner
from openai import InternalServerError, OpenAI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from llmtap.proxy import __version__
from llmtap.proxy.cli import main
from tests.conftest import TEST_KEY, Proxy
from tests.integration.test_proxy_sdk import WEATHER
from tests.otlp_proto import attributes_of, parse_strictly, spans_of, value_of


def streamed_tool_run(client: OpenAI) -> None:
    """A streamed call that asks for a tool, then the tool's result: one trace (AGENT root,
    CHAT_MODEL, TOOL, CHAT_MODEL)."""
    messages: list[Any] = [{"role": "user", "content": "weather in Lyon"}]
    calls: dict[int, dict[str, str]] = {}
    with client.chat.completions.create(
        model="gpt-4o-mini", messages=messages, tools=[WEATHER], stream=True
    ) as stream:
        for chunk in stream:
            deltas = chunk.choices[0].delta.tool_calls if chunk.choices else None
            for delta in deltas or ():
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["name"] += (delta.function and delta.function.name) or ""
                call["arguments"] += (delta.function and delta.function.arguments) or ""
    assert calls, "the simulator asked for no tool"
    messages.append(
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for c in calls.values()
            ],
        }
    )
    for c in calls.values():
        messages.append({"role": "tool", "tool_call_id": c["id"], "content": "rain, 9 C"})
    client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[WEATHER])


def record_everything(proxy: Proxy) -> None:
    headers = {"llmtap-session": "otlp-session", "llmtap-tag-team": "search"}
    with OpenAI(
        base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0, default_headers=headers
    ) as client:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello otlp"}]
        )
        streamed_tool_run(client)
        client.embeddings.create(model="text-embedding-3-small", input="otlp embeddings")
        client.responses.create(model="gpt-4o-mini", input="otlp responses")
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="otlp legacy")
        with pytest.raises(InternalServerError):
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "fail please"}],
                extra_headers={"x-simulator-fault": "status-500"},
            )
    with OpenAI(
        base_url=f"{proxy.url}/experiments/other/v1", api_key=TEST_KEY, max_retries=0
    ) as other:
        other.embeddings.create(model="text-embedding-3-small", input="elsewhere")
    proxy.flush()


def export(db: Path, *args: str) -> list[str]:
    result = CliRunner().invoke(main, ["export", "--db", str(db), "--format", "otlp", *args])
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def assert_same(stored: Any, exported: Any) -> None:
    if isinstance(exported, str) and not isinstance(stored, str):
        exported = orjson.loads(exported)  # an object or a mixed list travels as JSON text
    assert exported == stored


def test_every_line_is_an_otlp_request_that_says_what_the_api_says(
    proxy: Proxy, tmp_path: Path
) -> None:
    record_everything(proxy)
    out = tmp_path / "traces.otlp.jsonl"
    assert export(proxy.db, "--experiment", "Default", "-o", str(out)) == []
    lines = out.read_text().splitlines()
    listed = httpx.get(f"{proxy.url}/api/traces", params={"experiment": "Default"}).json()
    # chat, the tool run, embeddings, responses, a legacy completion, the failed call
    assert len(lines) == len(listed["traces"]) == 6
    seen_types: set[str] = set()
    for line, info in zip(lines, listed["traces"], strict=True):  # newest first, as jsonl
        message = parse_strictly(line)
        full = httpx.get(f"{proxy.url}/api/traces/{info['trace_id']}").json()
        check_request(message, full)
        seen_types.update(s["span_type"] for s in full["spans"])
    assert seen_types == {"CHAT_MODEL", "TOOL", "AGENT", "EMBEDDING", "LLM"}


def check_request(message: ExportTraceServiceRequest, full: dict[str, Any]) -> None:
    (resource,) = message.resource_spans
    assert {kv.key: value_of(kv.value) for kv in resource.resource.attributes} == {
        "service.name": "llmtap",
        "llmtap.experiment": full["info"]["experiment"],
    }
    (scope,) = resource.scope_spans
    assert (scope.scope.name, scope.scope.version) == ("llmtap", __version__)
    spans = {s["span_id"]: s for s in full["spans"]}
    exported = list(scope.spans)
    assert [s.span_id.hex() for s in exported] == list(spans)  # the API's order, parents first
    for span in exported:
        check_span(span, spans[span.span_id.hex()], full["info"], spans)


def check_span(
    span: Span, stored: dict[str, Any], info: dict[str, Any], spans: dict[str, Any]
) -> None:
    assert span.trace_id.hex() == stored["trace_id"] == info["trace_id"]
    assert span.parent_span_id.hex() == (stored["parent_id"] or "")
    assert span.name == stored["name"]
    assert span.start_time_unix_nano == stored["start_time_ns"]
    assert span.end_time_unix_nano == stored["end_time_ns"] >= stored["start_time_ns"]
    internal = stored["span_type"] in ("AGENT", "TOOL")
    assert span.kind == (Span.SPAN_KIND_INTERNAL if internal else Span.SPAN_KIND_CLIENT)
    if stored["status"]["code"] == "ERROR":
        assert span.status.code == Status.STATUS_CODE_ERROR
        assert span.status.message == stored["status"]["message"] != ""
    else:
        assert (span.status.code, span.status.message) == (Status.STATUS_CODE_OK, "")
    attributes = attributes_of(span)
    for key, value in stored["attributes"].items():
        assert_same(value, attributes[key])
    assert attributes["mlflow.spanType"] == stored["span_type"]
    for side, mlflow_key, oi_key in (
        ("inputs", "mlflow.spanInputs", "input"),
        ("outputs", "mlflow.spanOutputs", "output"),
    ):
        if stored[side] is None:
            assert mlflow_key not in attributes and f"{oi_key}.value" not in attributes
            continue
        assert json.loads(attributes[mlflow_key]) == stored[side]  # MLflow's own reading
        if isinstance(stored[side], str):
            assert attributes[f"{oi_key}.value"] == stored[side]
            assert attributes[f"{oi_key}.mime_type"] == "text/plain"
        else:
            assert json.loads(attributes[f"{oi_key}.value"]) == stored[side]
            assert attributes[f"{oi_key}.mime_type"] == "application/json"
    if stored["parent_id"] in spans:
        assert "mlflow.traceTag.team" not in attributes
    else:  # a root carries the trace's session and tags
        assert attributes["session.id"] == attributes["mlflow.trace.session"] == "otlp-session"
        assert attributes["mlflow.traceTag.team"] == "search"


def test_the_tool_run_and_the_failed_call_in_detail(proxy: Proxy) -> None:
    record_everything(proxy)
    by_first_type = {}
    for line in export(proxy.db):
        spans = spans_of(parse_strictly(line))
        by_first_type.setdefault(attributes_of(spans[0])["mlflow.spanType"], []).append(spans)
    ((root, first, tool, second),) = by_first_type["AGENT"]
    assert [s.kind for s in (root, first, tool, second)] == [1, 3, 1, 3]
    assert root.parent_span_id == b""
    assert first.parent_span_id == tool.parent_span_id == second.parent_span_id == root.span_id
    assert attributes_of(first)["stream"] is True
    assert attributes_of(first)["gen_ai.response.finish_reasons"] == ["tool_calls"]
    tool_attributes = attributes_of(tool)
    assert tool_attributes["gen_ai.tool.name"] == "get_weather"
    assert tool_attributes["output.value"] == "rain, 9 C"
    assert json.loads(tool_attributes["mlflow.spanOutputs"]) == "rain, 9 C"
    assert tool.start_time_unix_nano == first.end_time_unix_nano <= second.start_time_unix_nano
    failed = [
        spans[0]
        for spans in by_first_type["CHAT_MODEL"]
        if spans[0].status.code == Status.STATUS_CODE_ERROR
    ]
    (error,) = failed
    assert attributes_of(error)["http_status"] == 500
    assert error.status.message
    # the experiment filter: the other experiment's trace is its own line
    (elsewhere,) = export(proxy.db, "--experiment", "other")
    (resource,) = parse_strictly(elsewhere).resource_spans
    assert {kv.key: kv.value.string_value for kv in resource.resource.attributes}[
        "llmtap.experiment"
    ] == "other"


def test_jsonl_stays_the_default(proxy: Proxy, client: OpenAI) -> None:
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "plain"}]
    )
    proxy.flush()
    result = CliRunner().invoke(main, ["export", "--db", str(proxy.db)])
    (line,) = result.output.splitlines()
    assert set(orjson.loads(line)) == {"info", "spans"}


def test_a_span_under_a_client_span_links_to_it(proxy: Proxy, client: OpenAI) -> None:
    """With a traceparent the parent is the client's own span, not exported here: the link
    is kept (OTLP allows a parent outside the request) and the span is the trace's root."""
    trace_hex, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "under a client span"}],
        extra_headers={"traceparent": f"00-{trace_hex}-{parent}-01", "llmtap-tag-team": "x"},
    )
    proxy.flush()
    (line,) = export(proxy.db)
    (span,) = spans_of(parse_strictly(line))
    assert (span.trace_id.hex(), span.parent_span_id.hex()) == (trace_hex, parent)
    assert attributes_of(span)["mlflow.traceTag.team"] == "x"
