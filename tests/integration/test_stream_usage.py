"""A client streaming without include_usage gets exactly the direct stream; the trace has usage."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from tests.conftest import Proxy
from tests.raw_upstream import Received, raw_upstream

BODY = {
    "model": "gpt-4o-mini",
    "stream": True,
    "messages": [{"role": "user", "content": "count my tokens please"}],
}


def events(url: str, path: str, body: dict[str, Any]) -> list[Any]:
    with httpx.stream("POST", f"{url}{path}", json=body) as response:
        raw = b"".join(response.iter_raw())
    parsed = []
    for block in raw.split(b"\n\n"):
        if not block.strip():
            continue
        data = block.removeprefix(b"data: ")
        if data == b"[DONE]":
            parsed.append("[DONE]")
            continue
        event = orjson.loads(data)
        event.pop("id", None)
        event.pop("created", None)
        parsed.append(event)
    return parsed


def test_client_stream_is_the_direct_stream_and_the_trace_has_usage(
    proxy: Proxy, upstream: str
) -> None:
    for path, body in (
        ("/chat/completions", BODY),
        (
            "/completions",
            {"model": "gpt-3.5-turbo-instruct", "stream": True, "prompt": "count my tokens"},
        ),
    ):
        direct = events(upstream, path, body)
        through = events(proxy.base_url, path, body)
        assert through == direct
        assert all("usage" not in e for e in through if isinstance(e, dict))
    rows = proxy.query("SELECT attributes FROM spans ORDER BY start_time_ns")
    for row in rows:
        usage = orjson.loads(row["attributes"])["usage"]
        assert usage["total_tokens"] > 0 and usage["output_tokens"] > 0
    assert [r[0] for r in proxy.query("SELECT usage_injected FROM exchanges")] == [1, 1]


def test_client_that_asks_for_usage_gets_it_untouched(proxy: Proxy, upstream: str) -> None:
    body = {**BODY, "stream_options": {"include_usage": True}}
    assert events(proxy.base_url, "/chat/completions", body) == events(
        upstream, "/chat/completions", body
    )
    assert [r[0] for r in proxy.query("SELECT usage_injected FROM exchanges")] == [0]


def test_switched_off_nothing_is_injected(start_proxy: Any, upstream: str) -> None:
    proxy = start_proxy(stream_usage=False)
    assert events(proxy.base_url, "/chat/completions", BODY) == events(
        upstream, "/chat/completions", BODY
    )
    (row,) = proxy.query("SELECT attributes FROM spans")
    assert orjson.loads(row["attributes"])["usage"] is None  # none was streamed


def test_a_provider_that_always_streams_usage_keeps_it(proxy: Proxy, upstream: str) -> None:
    """Mistral, Together and others put usage on their last content chunk, asked or not: the
    client gets it as it would directly, and the trace has it."""
    body = {**BODY, "messages": [{"role": "user", "content": "USAGE_ALWAYS count"}]}
    direct = events(upstream, "/chat/completions", body)
    assert events(proxy.base_url, "/chat/completions", body) == direct
    last = direct[-2]
    assert last["choices"][0]["finish_reason"] == "stop" and last["usage"]["total_tokens"] > 0
    (row,) = proxy.query("SELECT attributes FROM spans")
    assert orjson.loads(row["attributes"])["usage"]["total_tokens"] == last["usage"]["total_tokens"]


def _mixed_stream(asked: bool) -> bytes:
    """A chat stream whose events end `\\n\\r\\n` (a LF line end, then a CRLF blank line), as
    SSE allows: with usage (and `"usage":null` on each chunk) when it was asked for."""
    null = ',"usage":null' if asked else ""
    events = [
        '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":'
        f'[{{"index":0,"delta":{{"content":"{word}"}},"finish_reason":null}}]{null}}}'
        for word in ("mixed ", "line ", "ends")
    ]
    if asked:
        events.append(
            '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
            '"usage":{"prompt_tokens":4,"completion_tokens":3,"total_tokens":7}}'
        )
    events.append("[DONE]")
    return "".join(f"data: {e}\n\r\n" for e in events).encode()


def test_mixed_line_ends_reach_the_client_as_sent_without_the_usage(start_proxy: Any) -> None:
    """Before, only `\\n\\n`, `\\r\\n\\r\\n` and `\\r\\r` ended an event: a stream of `\\n\\r\\n`
    was held whole until its end, and reached the client with the usage llmtap asked for."""
    from openai import OpenAI

    def answer(request: Received) -> bytes:
        body = _mixed_stream(b"include_usage" in request.body)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        return head + b"content-length: %d\r\n\r\n" % len(body) + body

    with raw_upstream(answer) as up:
        proxy = start_proxy(upstream=f"{up.url}/v1")
        with httpx.stream("POST", f"{proxy.base_url}/chat/completions", json=BODY) as response:
            through = b"".join(response.iter_raw())
        assert through == _mixed_stream(asked=False)
        with OpenAI(base_url=proxy.base_url, api_key="sk-test", max_retries=0) as client:
            chunks = list(client.chat.completions.create(**BODY))
        assert ["".join(c.choices[0].delta.content or "" for c in chunks)] == ["mixed line ends"]
        assert all(c.usage is None and c.choices for c in chunks)
        rows = proxy.query("SELECT attributes FROM spans")
        assert [orjson.loads(r["attributes"])["usage"]["total_tokens"] for r in rows] == [7, 7]
