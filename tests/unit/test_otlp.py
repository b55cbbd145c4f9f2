"""recorder/otlp.py on traces that traffic through the simulator does not make: values of every
type, ids that are no OTLP ids, a status that is neither OK nor ERROR."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from llmtap.recorder.otlp import export_request, hex_id
from tests.otlp_proto import attributes_of, parse_strictly, spans_of


def make_trace(**span: Any) -> dict[str, Any]:
    base = {
        "span_id": "00000000000000a1",
        "trace_id": "0123456789abcdef0123456789abcdef",
        "parent_id": None,
        "name": "chat.completions",
        "span_type": "CHAT_MODEL",
        "start_time_ns": 1_700_000_000_000_000_000,
        "end_time_ns": 1_700_000_000_500_000_000,
        "status": {"code": "OK", "message": ""},
        "inputs": None,
        "outputs": None,
        "attributes": {},
    }
    info = {"trace_id": base["trace_id"], "experiment": "unit", "session": None, "tags": {}}
    return {"info": info, "spans": [{**base, **span}]}


def exported(trace: dict[str, Any]) -> Any:
    line = orjson.dumps(export_request(trace, "9.9")).decode()
    (span,) = spans_of(parse_strictly(line))
    return span


def test_every_kind_of_value_is_a_valid_any_value() -> None:
    values = {
        "none": None,
        "true": True,
        "zero": 0,
        "big": 2**63,  # past int64: as text
        "negative": -(2**63),
        "float": 0.25,
        "text": "é ✓",
        "empty": [],
        "strings": ["stop", "length"],
        "numbers": [1, 2],
        "mixed": [1, "a", None],
        "nested": {"a": {"b": [1, 2.5]}},
        "list_of_objects": [{"a": 1}],
    }
    got = attributes_of(exported(make_trace(attributes=values)))
    assert got["none"] is None and got["true"] is True and got["zero"] == 0
    assert got["big"] == str(2**63) and got["negative"] == -(2**63)
    assert (got["float"], got["text"], got["empty"]) == (0.25, "é ✓", [])
    assert got["strings"] == ["stop", "length"] and got["numbers"] == [1, 2]
    for key in ("mixed", "nested", "list_of_objects"):
        assert orjson.loads(got[key]) == values[key]


@pytest.mark.parametrize("code, expected", [("OK", 1), ("ERROR", 2), ("UNSET", 0), (None, 0)])
def test_status_codes(code: str | None, expected: int) -> None:
    span = exported(make_trace(status={"code": code, "message": "said"}))
    assert span.status.code == expected
    assert span.status.message == ("said" if expected == 2 else "")


def test_ids_that_are_no_otlp_ids_become_stable_ones() -> None:
    assert hex_id("ABCDEF0123456789", 16) == "abcdef0123456789"
    assert hex_id("0" * 16, 16) != "0" * 16  # all zeros is OTLP's invalid id
    assert hex_id("run-7", 32) == hex_id("run-7", 32) and len(hex_id("run-7", 32)) == 32
    trace = make_trace(span_id="short", parent_id="not-hex", trace_id="run-7")
    span = exported(trace)
    assert span.span_id.hex() == hex_id("short", 16)
    assert span.parent_span_id.hex() == hex_id("not-hex", 16)
    assert span.trace_id.hex() == hex_id("run-7", 32)


def test_a_stored_attribute_of_an_added_name_appears_once() -> None:
    trace = make_trace(attributes={"session.id": "s-1", "mlflow.spanType": "stale"})
    trace["info"]["session"] = "s-1"
    got = attributes_of(exported(trace))  # (attributes_of fails on a repeated key)
    assert got["session.id"] == "s-1" and got["mlflow.spanType"] == "CHAT_MODEL"


def test_the_traces_user_is_on_its_root_as_mlflow_and_otel_name_it() -> None:
    trace = make_trace(attributes={"user.id": "alice"})
    trace["info"]["tags"] = {"user": "alice", "team": "core"}
    got = attributes_of(exported(trace))
    assert got["user.id"] == "alice" and got["mlflow.trace.user"] == "alice"
    assert got["mlflow.traceTag.team"] == "core"
    untagged = attributes_of(exported(make_trace()))
    assert "mlflow.trace.user" not in untagged and "user.id" not in untagged


def test_a_calls_own_user_is_kept_beside_the_traces_tag() -> None:
    """`llmtap-user: alice` with `llmtap-tag-user: bob`: the call was made for alice."""
    trace = make_trace(attributes={"user.id": "alice"})
    trace["info"]["tags"] = {"user": "bob"}
    got = attributes_of(exported(trace))
    assert got["user.id"] == "alice" and got["mlflow.trace.user"] == "bob"
