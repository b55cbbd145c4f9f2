"""The reading side of a big database and a long agent run (found by a review at 305,000
traces): the trace page of a run of hundreds of calls was built on the event loop, holding up
every request the proxy forwarded for seconds, and held every call's whole JSON (164 MB of
HTML for 1,000 calls); `llmtap export` read every trace's listing row before its first line."""

from __future__ import annotations

import json
import re
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

from llmtap.proxy.server import ServerThread
from llmtap.proxy.ui import HISTORY_SHOWN
from llmtap.recorder.reader import TraceReader
from llmtap.recorder.sqlite import connect_for_writing
from tests.asgi_upstream import answer_json, request_json
from tests.conftest import TEST_KEY

TURNS = 200
RESULT = "zebras are striped equids of Africa. " * 28  # ~1 KB a tool result


async def always_a_tool_call(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A model that never stops searching: every answer is one more tool call."""
    turn = len((await request_json(receive))["messages"])
    arguments = json.dumps({"q": f"zebras {turn}"})
    call = {"id": f"call_{turn:06d}", "type": "function",
            "function": {"name": "search_docs", "arguments": arguments}}  # fmt: skip
    answer = {
        "id": f"chatcmpl-{turn}", "object": "chat.completion", "created": 1_700_000_000,
        "model": "gpt-4o", "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        "choices": [{"index": 0, "finish_reason": "tool_calls",
                     "message": {"role": "assistant", "content": None, "tool_calls": [call]}}],
    }  # fmt: skip
    await answer_json(send, answer)


def _record_a_long_run(start_proxy: Any) -> tuple[Any, str]:
    with ServerThread(always_a_tool_call) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        messages: list[Any] = [{"role": "user", "content": "Research everything about zebras."}]
        with OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0) as client:
            for _ in range(TURNS):
                answer = client.chat.completions.create(model="gpt-4o", messages=messages)
                call = answer.choices[0].message.tool_calls[0]
                messages += [
                    answer.choices[0].message.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": call.id, "content": RESULT},
                ]
        proxy.flush()
    (run,) = httpx.get(f"{proxy.url}/api/traces").json()["traces"]
    assert run["span_count"] == 2 * TURNS  # (and the AGENT root)
    return proxy, run["trace_id"]


def test_a_long_agent_runs_page_holds_up_no_request_and_stays_a_page(start_proxy: Any) -> None:
    proxy, trace_id = _record_a_long_run(start_proxy)
    done, page = threading.Event(), {}

    def fetch() -> None:
        try:
            page["response"] = httpx.get(f"{proxy.url}/traces/{trace_id}", timeout=120)
        finally:
            done.set()

    threading.Thread(target=fetch, daemon=True).start()
    worst = 0.0
    with httpx.Client(timeout=120) as client:
        while not done.is_set():
            started = time.perf_counter()
            client.get(f"{proxy.url}/api/health")
            worst = max(worst, time.perf_counter() - started)
            time.sleep(0.01)
    html = page["response"].text
    assert page["response"].status_code == 200
    # before: ~60 MB of HTML, built on the event loop while /api/health waited seconds
    assert len(html) < 15_000_000, f"{len(html) / 1e6:.0f} MB of HTML"
    assert worst < 1.0, f"/api/health waited {worst:.2f} s while the page was built"
    assert "more characters: the whole span is in" in html
    assert f'href="/api/traces/{trace_id}"' in html
    # the last call shows the latest of its earlier messages; the calls above showed the rest
    folded = [int(n) for n in re.findall(r"The (\d+) before these are on the page above", html)]
    assert max(folded) == 2 * TURNS - 3 - HISTORY_SHOWN  # the history of the last call
    # the whole of every span is still there, in the trace's JSON
    whole = httpx.get(f"{proxy.url}/api/traces/{trace_id}", timeout=120).json()
    last = max((s for s in whole["spans"] if s["span_type"] == "CHAT_MODEL"),
               key=lambda s: s["start_time_ns"])  # fmt: skip
    assert len(last["inputs"]["messages"]) == 2 * TURNS - 1


def test_export_reads_the_ids_alone_before_its_first_trace(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    conn = connect_for_writing(db)
    with conn:
        conn.execute(
            """WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
            INSERT INTO traces SELECT printf('%032x', i), 'Default', NULL, 'OK',
                '2026-01-01T00:00:00.000Z', i * 1000000000, i * 1000000000 + 5, 5.0, '{}', 1,
                10, 10, 20, NULL FROM n"""
        )
        conn.execute(
            """INSERT INTO spans SELECT printf('%016x', rowid), trace_id, NULL,
                'chat.completions', 'CHAT_MODEL', 'gpt-4o-mini', start_time_ns, end_time_ns,
                'OK', '', json_object('messages', json_array(json_object('role', 'user',
                'content', hex(randomblob(500))))), json_object('choices', json_array(
                json_object('message', json_object('role', 'assistant', 'content',
                hex(randomblob(500)))))), '{}', 10, 10, 20, NULL, NULL FROM traces"""
        )
    conn.close()
    traces = TraceReader(db).each_trace()
    tracemalloc.start()
    try:
        first = next(traces)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        traces.close()
    assert first["info"]["trace_id"] == f"{20_000:032x}"  # newest first
    # the ids of 20,000 traces are ~1.6 MB; their listing rows, previews and all, were ~57 MB
    assert peak < 10_000_000, f"{peak / 1e6:.0f} MB before the first of 20,000 traces"
