"""A model version's `traces`: one entry per trace that ran it (newest first), agreeing with
`trace_count`, each with the calls of that trace that ran the version."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
from click.testing import CliRunner

from llmtap.proxy.cli_models import models as models_command
from tests.conftest import TEST_KEY, Proxy

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


def call(proxy: Proxy, trace_id: str) -> str:
    """One chat call in trace `trace_id`; returns its span id."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "same run"}]}
    headers = {**AUTH, "llmtap-trace-id": trace_id}
    answer = httpx.post(f"{proxy.base_url}/chat/completions", json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    proxy.flush()
    spans = httpx.get(f"{proxy.url}/api/traces/{trace_id}").json()["spans"]
    span_id: str = spans[-1]["span_id"]  # the latest call, last in the trace
    return span_id


def version(proxy: Proxy) -> dict[str, Any]:
    proxy.flush()
    found: dict[str, Any] = httpx.get(f"{proxy.url}/api/models/dup/versions/1").json()
    return found


def test_calls_of_one_trace_are_one_entry(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(log_models=True, registered_model_name="dup")
    run = [call(proxy, "one-run") for _ in range(3)]
    other = call(proxy, "other-run")
    run.append(call(proxy, "one-run"))  # one-run's latest call is the newest again
    found = version(proxy)
    assert found["trace_count"] == len(found["traces"]) == 2
    one_run = httpx.get(f"{proxy.url}/api/traces/one-run").json()["info"]["trace_id"]
    other_run = httpx.get(f"{proxy.url}/api/traces/other-run").json()["info"]["trace_id"]
    newest, oldest = found["traces"]
    assert newest["trace_id"] == one_run and newest["span_ids"] == run
    assert oldest["trace_id"] == other_run and oldest["span_ids"] == [other]
    assert newest["request_time"] > oldest["request_time"]

    db = str(proxy.db)
    shown = CliRunner().invoke(models_command, ["models:/dup/1", "--db", db])
    assert shown.exit_code == 0, shown.output
    assert orjson.loads(shown.output)["traces"] == found["traces"]  # the CLI says the same


def test_the_latest_100_traces(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(log_models=True, registered_model_name="dup")
    for i in range(102):
        call(proxy, f"run-{i}")
    call(proxy, "run-5")  # an older trace used again: among the latest now
    found = version(proxy)
    assert found["trace_count"] == 102
    ids = [t["trace_id"] for t in found["traces"]]
    assert len(ids) == len(set(ids)) == 100
    names = {
        httpx.get(f"{proxy.url}/api/traces/run-{i}").json()["info"]["trace_id"]: i
        for i in (0, 1, 2, 5, 101)
    }
    assert names[ids[0]] == 5 and names[ids[1]] == 101
    assert not {trace_id for trace_id, i in names.items() if i in (0, 1)} & set(ids)
    assert len(found["traces"][0]["span_ids"]) == 2
