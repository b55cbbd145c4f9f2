"""Real agent frameworks through llmtap, each in its own process and virtual environment, as
users run them: OpenAI Swarm's handoff example and an OpenAI Agents SDK run with a tool."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Proxy

ROOT = Path(__file__).resolve().parents[2]
AGENTS_PYTHON = Path(os.environ.get("LLMTAP_AGENTS_PYTHON", ROOT / ".venv-agents/bin/python"))
pytestmark = pytest.mark.skipif(
    not AGENTS_PYTHON.exists(),
    reason=f"no agent-frameworks venv at {AGENTS_PYTHON} (make test creates it)",
)


def run_app(script: str, proxy: Proxy) -> dict[str, Any]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "OPENAI_BASE_URL": proxy.base_url,
        "OPENAI_API_KEY": "sk-framework-test-000000000000",
    }
    run = subprocess.run(
        [str(AGENTS_PYTHON), str(ROOT / "tests/agents" / script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def only_trace_spans(proxy: Proxy) -> list[dict[str, Any]]:
    proxy.flush()
    traces = httpx.get(f"{proxy.url}/api/traces").json()["traces"]
    assert len(traces) == 1, [t["span_count"] for t in traces]
    return httpx.get(f"{proxy.url}/api/traces/{traces[0]['trace_id']}").json()["spans"]


def test_swarm_handoff_is_one_trace_showing_the_transfer(proxy: Proxy) -> None:
    seen = run_app("swarm_handoff.py", proxy)
    assert seen["agent"] == "Agent B"
    spans = only_trace_spans(proxy)
    assert [s["span_type"] for s in spans] == ["AGENT", "CHAT_MODEL", "TOOL", "CHAT_MODEL"]
    first, tool, second = spans[1:]
    assert first["inputs"]["messages"][0] == {
        "role": "system",
        "content": "You are a helpful agent.",
    }
    assert first["outputs"]["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == (
        "transfer_to_agent_b"
    )
    assert tool["name"] == "transfer_to_agent_b" and "Agent B" in tool["outputs"]
    assert second["inputs"]["messages"][0]["content"] == "Only speak in Haikus."
    assert second["outputs"]["choices"][0]["message"]["content"] == seen["last"]


def test_agents_sdk_function_tool_run_is_one_trace(proxy: Proxy) -> None:
    seen = run_app("agents_sdk_tool.py", proxy)
    spans = only_trace_spans(proxy)
    assert [s["span_type"] for s in spans] == ["AGENT", "CHAT_MODEL", "TOOL", "CHAT_MODEL"]
    first, tool, second = spans[1:]
    assert first["name"] == second["name"] == "responses"
    assert tool["name"] == "get_weather"
    assert json.loads(tool["inputs"]["arguments"])["city"]
    assert tool["outputs"].startswith("sunny and 21 C")
    assert seen["final"] and seen["final"] in json.dumps(second["outputs"])


def test_agents_sdk_nested_handoff_history_is_one_run(proxy: Proxy) -> None:
    """With `nest_handoff_history` the agent handed to gets the run so far as one message of
    text, the handoff's call and result as lines of JSON in it, and no `function_call_output`
    item: the handoff's side of the run was a trace of its own, without the handoff's TOOL
    span."""
    seen = run_app("agents_sdk_nested_handoff.py", proxy)
    spans = only_trace_spans(proxy)
    kinds = [s["span_type"] for s in spans]
    assert kinds.count("CHAT_MODEL") == seen["calls"] == 3, kinds
    assert kinds[0] == "AGENT" and kinds.count("AGENT") == 1, kinds
    tools = {s["name"]: s for s in spans if s["span_type"] == "TOOL"}
    assert set(tools) == {"transfer_to_weather_agent", "get_weather"}
    assert "Weather agent" in tools["transfer_to_weather_agent"]["outputs"]
    assert tools["get_weather"]["outputs"].startswith("sunny and 21 C")
    assert all(s["parent_id"] == spans[0]["span_id"] for s in spans[1:])


def test_smolagents_text_tool_calls_are_one_run_with_its_tool_spans(proxy: Proxy) -> None:
    """smolagents sends a run's tool calls back as text and their results as a user message
    (`Observation:`), never as `tool` messages: each call was a trace of its own, with no
    AGENT root and no TOOL span."""
    seen = run_app("smolagents_tools.py", proxy)
    spans = only_trace_spans(proxy)
    kinds = [s["span_type"] for s in spans]
    assert kinds == ["AGENT", "CHAT_MODEL", "TOOL", "CHAT_MODEL"], kinds
    root, first, tool, second = spans
    assert tool["name"] == "get_weather" and tool["parent_id"] == root["span_id"]
    assert json.loads(tool["inputs"]["arguments"])["city"]
    assert tool["outputs"].startswith("sunny and 21 C, ")
    assert tool["attributes"]["llm_span_id"] == first["span_id"]
    calling = first["inputs"]["messages"]
    assert root["inputs"]["messages"] == calling  # what the run began with
    # ... as sent, keys in their order (they were sorted: "content" before "role")
    assert [list(m) for m in root["inputs"]["messages"]] == [list(m) for m in calling]
    assert list(root["inputs"]["messages"][0]) == ["role", "content"]
    assert "final_answer" in json.dumps(second["outputs"]) and seen["final"]
