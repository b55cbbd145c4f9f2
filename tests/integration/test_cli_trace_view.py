"""`llmtap trace ID` in a terminal: each span's line says what applies to it, in words, never
a Python value (`model=None`, `usage={'input_tokens': ...}`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
from openai import OpenAI

from llmtap.proxy.tables import MESSAGE_SHOWN
from tests.conftest import Proxy
from tests.integration.test_agents import run_chat_agent

LLMTAP = str(Path(sys.executable).with_name("llmtap"))


def span_lines(proxy: Proxy, trace_id: str) -> dict[str, str]:
    """The heading line of each span of the trace as `llmtap trace` prints it, by span id."""
    proxy.flush()
    shown = subprocess.run(
        [LLMTAP, "trace", trace_id, "--db", str(proxy.db)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    spans = httpx.get(f"{proxy.url}/api/traces/{trace_id}").json()["spans"]
    headings = [line for line in shown.stdout.splitlines() if re.search(r" \d+\.\d ms", line)]
    assert len(headings) == len(spans) + 1, shown.stdout  # the trace's line, then each span's
    for line in headings:
        assert "None" not in line and "{" not in line and "'" not in line, line
    return {span["span_id"]: line for span, line in zip(spans, headings[1:], strict=True)}


def test_agent_and_tool_spans_show_no_model_fields(proxy: Proxy, client: OpenAI) -> None:
    run_chat_agent(client, "weather in Paris")
    proxy.flush()
    (info,) = httpx.get(f"{proxy.url}/api/traces").json()["traces"]
    spans = httpx.get(f"{proxy.url}/api/traces/{info['trace_id']}").json()["spans"]
    lines = span_lines(proxy, info["trace_id"])
    for span in spans:
        line = lines[span["span_id"]]
        if span["span_type"] in ("AGENT", "TOOL"):
            assert "model" not in line and "stream" not in line and "tokens" not in line, line
        else:
            usage = span["attributes"]["usage"]
            tokens = f"tokens {usage['input_tokens']} in / {usage['output_tokens']} out"
            assert f"model={span['attributes']['model']}" in line and tokens in line, line
            assert "stream" not in line, line  # not streamed: nothing to say


def test_a_streamed_call_says_so(proxy: Proxy, client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    proxy.flush()
    (info,) = httpx.get(f"{proxy.url}/api/traces").json()["traces"]
    (line,) = span_lines(proxy, info["trace_id"]).values()
    assert "model=gpt-4o-mini" in line and "  streamed  tokens " in line, line


def shown_trace(proxy: Proxy) -> str:
    """`llmtap trace` of the one trace recorded, as a terminal shows it."""
    proxy.flush()
    (info,) = httpx.get(f"{proxy.url}/api/traces").json()["traces"]
    shown = subprocess.run(
        [LLMTAP, "trace", info["trace_id"], "--db", str(proxy.db)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


LONG_INSTRUCTIONS = "You are a careful assistant who answers in full sentences. " * 12


def test_a_responses_answer_shows_after_long_instructions(proxy: Proxy, client: OpenAI) -> None:
    """The answer of a Responses call comes after ~20 fields of metadata and the instructions
    in its JSON: the terminal shows it as the conversation's last turn."""
    answer = client.responses.create(
        model="gpt-4o-mini", input="What is a trace?", instructions=LONG_INSTRUCTIONS
    )
    shown = shown_trace(proxy)
    assert "  user: What is a trace?\n" in shown, shown
    assert f"  assistant: {answer.output_text}\n" in shown, shown


def test_a_chat_after_a_long_system_message_shows_its_question_and_answer(
    proxy: Proxy, client: OpenAI
) -> None:
    answer = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": LONG_INSTRUCTIONS},
            {"role": "user", "content": "first line\nsecond line"},
        ],
    )
    shown = shown_trace(proxy)
    text = answer.choices[0].message.content
    assert text and "\n" in text  # (the simulator echoes the question)
    # a text's further lines are indented under its first
    assert "  user: first line\n        second line\n" in shown, shown
    assert "  assistant: " + text.replace("\n", "\n" + " " * 13) + "  (stop)\n" in shown, shown
    assert f"  system: {LONG_INSTRUCTIONS[:MESSAGE_SHOWN]}…\n" in shown, shown  # cut


def test_an_agent_run_shows_its_calls_results_and_answer(proxy: Proxy, client: OpenAI) -> None:
    run_chat_agent(client, "weather in Paris")
    shown = shown_trace(proxy)
    call = '{"city":"weather in Paris"}'
    assert f"  assistant -> get_weather: {call}\n" in shown, shown
    assert f"  call get_weather: {call}\n  result: sunny, 21 C in weather in Paris\n" in shown
    assert "  tool [call_" in shown and "(1 earlier message)" in shown, shown
    # the root, printed first, sums the run up: what it began with and its answer
    root = shown.split("\n\n")[1]
    assert root.startswith("agent run AGENT OK"), shown
    assert "  user: weather in Paris\n" in root and "  assistant: The tool returned" in root


def test_instructions_sent_as_parts_are_shown_as_their_text(proxy: Proxy, client: OpenAI) -> None:
    """`instructions` as a list of parts (not a string): `llmtap trace` raised a TypeError."""
    client.post(
        "/responses",
        cast_to=dict,
        body={
            "model": "gpt-4o-mini",
            "input": "hi",
            "instructions": [{"type": "input_text", "text": "Be brief."}],
        },
    )
    assert "  system: Be brief.\n" in shown_trace(proxy)
