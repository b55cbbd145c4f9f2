"""Replay in the other shape, with the real SDK (FIELD 4.3): a streamed request whose only
recording was not streamed gets a synthesized stream, and the reverse; never in place of a
recording of the request's own shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.conftest import TEST_KEY, Proxy
from tests.integration.test_proxy_sdk import TIME, WEATHER, sdk_accumulated

StartProxy = Callable[..., Proxy]
NOWHERE = "http://127.0.0.1:9/v1"
SYNTHESIZED = "llmtap-replay-synthesized"
TOOLS = {
    "model": "gpt-4o-mini",
    "tools": [WEATHER, TIME],
    "parallel_tool_calls": True,
    "messages": [{"role": "user", "content": "weather and time in Paris"}],
}
CHOICES = {
    "model": "gpt-4o-mini",
    "n": 2,
    "logprobs": True,
    "top_logprobs": 2,
    "messages": [{"role": "user", "content": "two answers, with logprobs"}],
}
REFUSAL = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "REFUSAL now"}]}


def bare(value: Any, parent: str | None = None) -> Any:
    """JSON without its null fields and a tool call's stream `index`: a non-streamed answer
    leaves out what the SDK's accumulated one sets to null."""
    if isinstance(value, dict):
        return {
            k: bare(v, k)
            for k, v in value.items()
            if v is not None and not (parent == "tool_calls" and k == "index")
        }
    if isinstance(value, list):
        return [bare(v, parent) for v in value]
    return value


def sdk(proxy: Proxy) -> OpenAI:
    return OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0)


@pytest.fixture
def recorder(start_proxy: StartProxy) -> Proxy:
    return start_proxy()


@pytest.fixture
def replay(start_proxy: StartProxy, recorder: Proxy) -> Callable[[], Proxy]:
    """A replay-only llmtap over what `recorder` recorded so far."""

    def start() -> Proxy:
        recorder.flush()
        return start_proxy(mode="replay", upstream=NOWHERE, db=str(recorder.db))

    return start


@pytest.mark.parametrize("request_body", [TOOLS, CHOICES, REFUSAL], ids=["tools", "n2", "refusal"])
@pytest.mark.parametrize("include_usage", [False, True])
def test_a_stream_from_a_non_streamed_recording_rebuilds_it_in_the_sdk(
    recorder: Proxy, replay: Callable[[], Proxy], request_body: dict[str, Any], include_usage: bool
) -> None:
    with sdk(recorder) as client:
        recorded = client.chat.completions.create(**request_body).model_dump(mode="json")
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    with sdk(replay()) as client:
        with client.chat.completions.stream(**request_body, **options) as stream:
            final = stream.get_final_completion()
        with client.chat.completions.with_streaming_response.create(
            **request_body, stream=True, **options
        ) as raw:
            assert raw.headers[SYNTHESIZED] == "stream-from-json"
            assert raw.headers["content-type"].startswith("text/event-stream")
            text = raw.read().decode()
    expected = bare(recorded)
    if not include_usage:  # a stream carries usage only when asked for
        del expected["usage"]
    assert bare(sdk_accumulated(final)) == expected
    assert text.endswith("data: [DONE]\n\n")
    assert ('"choices":[],' in text) is include_usage


def test_a_non_streamed_answer_from_a_streamed_recording(
    recorder: Proxy, replay: Callable[[], Proxy]
) -> None:
    with sdk(recorder) as client, client.chat.completions.stream(**TOOLS) as stream:
        streamed = stream.get_final_completion()
    with sdk(replay()) as client:
        raw = client.chat.completions.with_raw_response.create(**TOOLS)
        answer = raw.parse()
    assert raw.headers[SYNTHESIZED] == "json-from-stream"
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/json"
    assert len(answer.choices[0].message.tool_calls or ()) == 2
    got = bare(answer.model_dump(mode="json"))
    assert got.pop("usage")["total_tokens"] > 0  # llmtap recorded it; a JSON answer has it
    assert got == bare(sdk_accumulated(streamed))


def test_legacy_completions_both_ways(recorder: Proxy, replay: Callable[[], Proxy]) -> None:
    plain = {"model": "gpt-3.5-turbo-instruct", "prompt": "recorded plain", "max_tokens": 8}
    streamed = {"model": "gpt-3.5-turbo-instruct", "prompt": "recorded streamed", "max_tokens": 8}
    with sdk(recorder) as client:
        answer = client.completions.create(**plain)
        pieces = list(client.completions.create(**streamed, stream=True))
    with sdk(replay()) as client:
        chunks = list(
            client.completions.create(**plain, stream=True, stream_options={"include_usage": True})
        )
        again = client.completions.create(**streamed)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == answer.choices[0].text and text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage == answer.usage
    assert again.choices[0].text == "".join(p.choices[0].text for p in pieces if p.choices)
    assert again.usage is not None and again.usage.total_tokens > 0


def test_a_responses_stream_answers_a_non_streamed_request(
    recorder: Proxy, replay: Callable[[], Proxy]
) -> None:
    request = {"model": "gpt-4o-mini", "input": "streamed once"}
    with sdk(recorder) as client, client.responses.stream(**request) as stream:
        final = stream.get_final_response()
    with sdk(replay()) as client:
        answer = client.responses.create(**request)
    assert answer.output_text == final.output_text and answer.id == final.id


@pytest.mark.parametrize(
    "request_body",
    [
        {"model": "gpt-4o-mini", "input": "not streamed"},
        {
            "model": "gpt-4o-mini",
            "input": "weather in Paris",
            "tools": [
                {
                    "type": "function",
                    "name": "get_weather",
                    "parameters": WEATHER["function"]["parameters"],
                }
            ],
        },
    ],
    ids=["text", "function-call"],
)
def test_a_responses_stream_from_a_non_streamed_recording_rebuilds_it_in_the_sdk(
    recorder: Proxy, replay: Callable[[], Proxy], request_body: dict[str, Any]
) -> None:
    with sdk(recorder) as client:
        recorded = client.responses.create(**request_body)
    with sdk(replay()) as client, client.responses.stream(**request_body) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert bare(final.model_dump()) == bare(recorded.model_dump())  # (the SDK adds parsed: None)
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    expected = {"message": "response.output_text.delta"}.get(recorded.output[0].type)
    if recorded.output[0].type == "function_call":
        expected = "response.function_call_arguments.delta"
    assert expected in kinds
    with sdk(replay()) as client:
        raw = client.responses.with_raw_response.create(**request_body, stream=True)
        assert raw.headers[SYNTHESIZED] == "stream-from-json"


def test_a_recording_of_the_requests_own_shape_comes_first(
    recorder: Proxy, replay: Callable[[], Proxy]
) -> None:
    with sdk(recorder) as client:
        client.chat.completions.create(**REFUSAL)
        list(client.chat.completions.create(**REFUSAL, stream=True))
    server = replay()
    for stream in (False, True):
        answer = httpx.post(
            f"{server.base_url}/chat/completions", json={**REFUSAL, "stream": stream}
        )
        assert answer.status_code == 200 and "llmtap-replayed" in answer.headers
        assert SYNTHESIZED not in answer.headers


def test_auto_mode_asks_the_upstream_instead(start_proxy: StartProxy) -> None:
    """With the upstream at hand, the request's own shape is recorded rather than synthesized."""
    auto = start_proxy(mode="auto")
    with sdk(auto) as client:
        client.chat.completions.create(**REFUSAL)
        auto.flush()
        with client.chat.completions.with_streaming_response.create(**REFUSAL, stream=True) as r:
            assert "llmtap-replayed" not in r.headers and SYNTHESIZED not in r.headers


@pytest.mark.parametrize("fault", ["error-event", "no-done"])
def test_a_stream_that_cannot_be_reshaped_is_a_miss_neither_used_nor_served(
    recorder: Proxy, replay: Callable[[], Proxy], fault: str
) -> None:
    """A recorded stream that did not end whole is no answer in the other shape: the request
    is a miss, and the recording still counts as unused (the plugin's report) and unserved
    (the fixture's usage())."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "cut short"}]}
    httpx.post(
        f"{recorder.base_url}/chat/completions",
        json={**body, "stream": True},
        headers={"x-simulator-fault": fault, "authorization": f"Bearer {TEST_KEY}"},
    )
    proxy = replay()
    answer = httpx.post(f"{proxy.base_url}/chat/completions", json=body)
    assert answer.status_code == 404 and "llmtap-replay-synthesized" not in answer.headers
    index = proxy.app.replayer.index
    assert index.served() == [] and len(index.unused()) == 1
