"""The real openai SDK through a real llmtap in front of the real simulator: what is recorded."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from openai import APIError, AsyncOpenAI, OpenAI

from llmtap.recorder.body_codec import unpack_body
from tests.conftest import TEST_KEY, Proxy

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
}


def only_trace(proxy: Proxy) -> dict[str, Any]:
    proxy.flush()
    traces = httpx.get(f"{proxy.url}/api/traces").json()["traces"]
    assert len(traces) == 1, traces
    return httpx.get(f"{proxy.url}/api/traces/{traces[0]['trace_id']}").json()


def sdk_dump(obj: Any) -> dict[str, Any]:
    return obj.model_dump(mode="json", exclude_unset=True)


def sdk_accumulated(final: Any) -> dict[str, Any]:
    """What the SDK's stream accumulator made, without its own fields that are not on the
    wire (`parsed`, `parsed_arguments`)."""
    expected = sdk_dump(final)
    for choice in expected["choices"]:
        choice["message"].pop("parsed", None)
        for call in choice["message"].get("tool_calls") or ():
            call["function"].pop("parsed_arguments", None)
    return expected


def test_chat_non_streamed_is_one_trace_with_inputs_outputs_and_usage(
    proxy: Proxy, client: OpenAI
) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, temperature=0.3, max_tokens=50
    )
    completion = raw.parse()
    trace = only_trace(proxy)
    info, (span,) = trace["info"], trace["spans"]
    assert len(info["trace_id"]) == 32 and info["status"] == "OK" and info["span_count"] == 1
    assert info["experiment"] == "Default" and info["request_time"].endswith("Z")
    assert span["span_type"] == "CHAT_MODEL" and len(span["span_id"]) == 16
    assert span["inputs"] == {
        "model": "gpt-4o-mini",
        "messages": messages,
        "temperature": 0.3,
        "max_tokens": 50,
    }
    assert span["outputs"] == raw.http_response.json()
    assert (
        span["outputs"]["choices"][0]["message"]["content"] == completion.choices[0].message.content
    )
    attrs = span["attributes"]
    assert attrs["endpoint"] == "chat.completions" and attrs["model"] == "gpt-4o-mini"
    assert attrs["stream"] is False and attrs["http_status"] == 200
    assert attrs["temperature"] == 0.3 and attrs["max_tokens"] == 50
    usage = completion.usage
    assert attrs["usage"] == {
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    assert info["usage"] == attrs["usage"]


def test_streamed_chat_with_parallel_tool_calls_matches_the_sdk_accumulator(
    proxy: Proxy, client: OpenAI
) -> None:
    with client.chat.completions.stream(
        model="gpt-4o-mini",
        tools=[WEATHER, TIME],
        parallel_tool_calls=True,
        messages=[{"role": "user", "content": "weather and time in Paris"}],
        stream_options={"include_usage": True},
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls
    span = only_trace(proxy)["spans"][0]
    expected = sdk_accumulated(final)
    assert span["outputs"] == expected
    assert span["attributes"]["stream"] is True
    assert span["attributes"]["time_to_first_token_ms"] >= 0
    assert span["attributes"]["usage"]["total_tokens"] == final.usage.total_tokens


@pytest.mark.parametrize("compress", [None, "gzip"])
def test_a_paced_stream_reassembled_while_it_runs_matches_the_sdk_accumulator(
    proxy: Proxy, compress: str | None
) -> None:
    """Chunks 15 ms apart: the writer process gets the pieces every 5 ms and reassembles them
    as they come (plain and compressed); the span is what the SDK made of the stream."""
    headers = {"x-simulator-fault": "chunk-delay-ms=15", "x-simulator-chunks": "24"}
    if compress:
        headers |= {"accept-encoding": compress, "x-simulator-compress": compress}
    with (
        OpenAI(
            base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0, default_headers=headers
        ) as c,
        c.chat.completions.stream(
            model="gpt-4o-mini",
            tools=[WEATHER, TIME],
            parallel_tool_calls=True,
            messages=[{"role": "user", "content": "weather and time in Paris, slowly"}],
        ) as stream,
    ):
        final = stream.get_final_completion()
    span = only_trace(proxy)["spans"][0]
    expected = sdk_accumulated(final)
    expected.pop("usage", None)  # the client did not ask for it; llmtap did
    outputs = dict(span["outputs"])
    assert outputs.pop("usage")["total_tokens"] > 0
    assert outputs == expected
    (row,) = proxy.query("SELECT chunks FROM exchanges")
    assert len(orjson.loads(row[0])) >= 10  # it did arrive in many pieces


def test_async_client_streamed_and_not(proxy: Proxy) -> None:
    async def run() -> tuple[str, str]:
        async with AsyncOpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0) as c:
            plain = await c.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "one"}]
            )
            pieces = []
            stream = await c.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "two"}], stream=True
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
            return plain.choices[0].message.content or "", "".join(pieces)

    plain, streamed = asyncio.run(run())
    proxy.flush()
    rows = proxy.query("SELECT outputs FROM spans ORDER BY start_time_ns")
    import orjson

    outputs = [orjson.loads(r["outputs"]) for r in rows]
    assert outputs[0]["choices"][0]["message"]["content"] == plain
    assert outputs[1]["choices"][0]["message"]["content"] == streamed
    assert outputs[1]["object"] == "chat.completion"


def test_embeddings_base64_are_recorded_as_the_floats_the_sdk_returns(
    proxy: Proxy, client: OpenAI
) -> None:
    result = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    span = only_trace(proxy)["spans"][0]
    assert span["span_type"] == "EMBEDDING"
    assert span["inputs"]["encoding_format"] == "base64"  # what the SDK really sent
    recorded = [d["embedding"] for d in span["outputs"]["data"]]
    assert recorded == [d.embedding for d in result.data]
    assert span["attributes"]["usage"]["input_tokens"] == result.usage.prompt_tokens


def test_legacy_completions_streamed_and_not(proxy: Proxy, client: OpenAI) -> None:
    plain = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once", max_tokens=8)
    text = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="Twice", max_tokens=8, stream=True
        )
        if c.choices
    )
    rows = proxy.query("SELECT span_type, outputs FROM spans ORDER BY start_time_ns")
    import orjson

    assert [r["span_type"] for r in rows] == ["LLM", "LLM"]
    first, second = (orjson.loads(r["outputs"]) for r in rows)
    assert first["choices"][0]["text"] == plain.choices[0].text
    assert second["object"] == "text_completion" and second["choices"][0]["text"] == text


def test_responses_api_streamed_and_not(proxy: Proxy, client: OpenAI) -> None:
    plain = client.responses.create(model="gpt-4o-mini", input="hi")
    with client.responses.stream(model="gpt-4o-mini", input="stream me") as stream:
        final = stream.get_final_response()
    rows = proxy.query("SELECT outputs, attributes FROM spans ORDER BY start_time_ns")
    import orjson

    first, second = (orjson.loads(r["outputs"]) for r in rows)
    assert first["id"] == plain.id and first["output_text" if "output_text" in first else "status"]
    assert second["id"] == final.id and second["status"] == "completed"
    assert orjson.loads(rows[1]["attributes"])["usage"]["total_tokens"] == final.usage.total_tokens


def test_experiment_by_path_and_by_header(proxy: Proxy) -> None:
    with OpenAI(base_url=f"{proxy.url}/experiments/nightly/v1", api_key=TEST_KEY) as c:
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    with OpenAI(
        base_url=proxy.base_url,
        api_key=TEST_KEY,
        default_headers={"llmtap-experiment": "by-header"},
    ) as c:
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "y"}])
    proxy.flush()
    for name in ("nightly", "by-header"):
        traces = httpx.get(f"{proxy.url}/api/traces", params={"experiment": name}).json()["traces"]
        assert len(traces) == 1 and traces[0]["experiment"] == name


def test_llmtap_headers_are_consumed_and_hop_by_hop_dropped(proxy: Proxy, simulator: Any) -> None:
    httpx.delete(f"{simulator.url}/_simulator/requests")
    httpx.post(
        f"{proxy.base_url}/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        headers={
            "llmtap-session": "s1",
            "llmtap-tag-team": "core",
            "authorization": f"Bearer {TEST_KEY}",
            "x-custom": "kept",
        },
    )
    seen = httpx.get(f"{simulator.url}/_simulator/requests").json()
    headers = (
        {k.lower(): v for k, v in seen[-1]["headers"].items()}
        if isinstance(seen[-1]["headers"], dict)
        else {k.lower(): v for k, v in seen[-1]["headers"]}
    )
    assert not any(name.startswith("llmtap-") for name in headers)
    assert headers["authorization"] == f"Bearer {TEST_KEY}"  # the key is forwarded...
    assert headers["x-custom"] == "kept"
    info = only_trace(proxy)["info"]
    assert info["session"] == "s1" and info["tags"] == {"team": "core"}


def test_grouping_by_traceparent_and_trace_id(proxy: Proxy) -> None:
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    httpx.post(
        f"{proxy.base_url}/chat/completions",
        json=body,
        headers={"traceparent": f"00-{trace_id}-{parent}-01"},
    )
    httpx.post(
        f"{proxy.base_url}/chat/completions", json=body, headers={"llmtap-trace-id": trace_id}
    )
    proxy.flush()
    trace = httpx.get(f"{proxy.url}/api/traces/{trace_id}").json()
    assert trace["info"]["span_count"] == 2
    assert trace["spans"][0]["parent_id"] == parent
    bad = httpx.post(
        f"{proxy.base_url}/chat/completions",
        json=body,
        headers={"traceparent": "00-zzzz-00f067aa0ba902b7-01"},
    )
    assert bad.status_code == 200  # an invalid header is ignored, never an error


def test_stream_is_relayed_chunk_by_chunk_not_buffered(proxy: Proxy) -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "pace me"}]}
    arrivals: list[float] = []
    import time

    start = time.perf_counter()
    with httpx.stream(
        "POST",
        f"{proxy.base_url}/chat/completions",
        json=body,
        headers={"x-simulator-fault": "chunk-delay-ms=60", "x-simulator-chunks": "8"},
    ) as response:
        for _ in response.iter_raw():
            arrivals.append(time.perf_counter() - start)
    # 8+ events 60 ms apart: the first must arrive long before the last
    assert len(arrivals) >= 5
    assert arrivals[-1] - arrivals[0] > 0.3


def test_upstream_down_gives_502_and_an_error_span(start_proxy: Any) -> None:
    proxy = start_proxy(upstream="http://127.0.0.1:9/v1")
    with (
        OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0) as c,
        pytest.raises(Exception) as caught,
    ):
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    response = getattr(caught.value, "response", None)
    assert response is not None and response.status_code == 502
    assert response.json()["error"]["type"] == "llmtap_upstream_error"
    trace = only_trace(proxy)
    assert trace["info"]["status"] == "ERROR"
    assert trace["spans"][0]["status"]["code"] == "ERROR"
    assert "could not reach the upstream" in trace["spans"][0]["status"]["message"]


def test_upstream_timeout_gives_504(start_proxy: Any) -> None:
    proxy = start_proxy(read_timeout=0.3)
    response = httpx.post(
        f"{proxy.base_url}/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        headers={"x-simulator-fault": "slow-first-byte-ms=2000"},
        timeout=10,
    )
    assert response.status_code == 504
    assert response.json()["error"]["type"] == "llmtap_upstream_error"
    assert only_trace(proxy)["spans"][0]["status"]["code"] == "ERROR"
    # and the next request is served
    ok = httpx.post(
        f"{proxy.base_url}/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
    )
    assert ok.status_code == 200


def test_oversized_body_gets_413(start_proxy: Any) -> None:
    proxy = start_proxy(max_body_size=1000)
    response = httpx.post(
        f"{proxy.base_url}/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "x" * 5000}]},
    )
    assert response.status_code == 413
    assert "max_body_size" in response.json()["error"]["message"]


def test_malformed_json_is_forwarded_and_recorded(proxy: Proxy) -> None:
    response = httpx.post(
        f"{proxy.base_url}/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400  # the upstream's own answer
    span = only_trace(proxy)["spans"][0]
    assert span["inputs"] == "{not json" and span["status"]["code"] == "ERROR"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_compressed_response_reaches_the_client_as_sent_and_is_decoded_for_recording(
    proxy: Proxy, encoding: str
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "zip"}]}
    with httpx.stream(
        "POST",
        f"{proxy.base_url}/chat/completions",
        json=body,
        headers={"accept-encoding": encoding, "x-simulator-compress": encoding},
    ) as r:
        raw = b"".join(r.iter_raw())
        assert r.headers["content-encoding"] == encoding
        decoded = httpx.Response(200, headers={"content-encoding": encoding}, content=raw).read()
    assert raw != decoded
    span = only_trace(proxy)["spans"][0]
    import orjson

    assert span["outputs"] == orjson.loads(decoded)
    (row,) = proxy.query("SELECT response_body FROM exchanges")
    assert unpack_body(bytes(row[0])) == raw  # kept as sent, for a faithful replay


# the SDK's HTTP client reads gzip and br; zstd is covered by the raw test above
@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_compressed_stream_is_reassembled(proxy: Proxy, encoding: str) -> None:
    with (
        OpenAI(
            base_url=proxy.base_url,
            api_key=TEST_KEY,
            max_retries=0,
            default_headers={"accept-encoding": encoding, "x-simulator-compress": encoding},
        ) as c,
        c.chat.completions.stream(
            model="m",
            messages=[{"role": "user", "content": "compress this stream"}],
            stream_options={"include_usage": True},
        ) as stream,
    ):
        final = stream.get_final_completion()
    span = only_trace(proxy)["spans"][0]
    assert span["outputs"]["choices"][0]["message"]["content"] == final.choices[0].message.content
    assert span["attributes"]["usage"]["total_tokens"] == final.usage.total_tokens
    (row,) = proxy.query("SELECT response_headers FROM exchanges")
    assert f'"content-encoding","{encoding}"' in row[0]


@pytest.mark.parametrize("encoding", ["br", "gzip"])
def test_a_compressed_stream_is_whole_at_its_done(proxy: Proxy, encoding: str) -> None:
    """The SDK stops reading at `[DONE]` and closes the connection: llmtap, seeing `[DONE]` in
    the decoded bytes as the SDK does, committed before it relayed it, so that close breaks
    nothing. (The upstream ends its body 300 ms after `[DONE]`, as one may over a network:
    before, such a stream was recorded as "client disconnected".)"""
    headers = {"x-simulator-compress": encoding, "x-simulator-fault": "end-delay-ms=300"}
    with OpenAI(
        base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0, default_headers=headers
    ) as c:
        for i in range(3):
            stream = c.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"{encoding} stream {i}"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
            stream.close()  # as soon as [DONE] is read, not at the end of the body
    rows = proxy.query("SELECT error, response_headers FROM exchanges")
    assert [r["error"] for r in rows] == [None] * 3
    assert all(f'"content-encoding","{encoding}"' in r["response_headers"] for r in rows)
    spans = proxy.query("SELECT status_code, attributes FROM spans")
    assert [s["status_code"] for s in spans] == ["OK"] * 3
    assert all(orjson.loads(s["attributes"])["usage"]["total_tokens"] > 0 for s in spans)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_an_error_event_mid_stream_is_recorded_with_the_upstreams_message(
    proxy: Proxy, asynchronous: bool
) -> None:
    """OpenAI's `data: {"error": ...}` in a stream: the SDK raises APIError there and closes
    the connection, while the upstream's body stays open (300 ms here). llmtap commits before
    it relays the error event, so the span is in the database when the client has the error,
    and its status says what the upstream said (before: "client disconnected", nothing else)."""
    headers = {"x-simulator-fault": "error-event,end-delay-ms=300"}
    messages = [{"role": "user", "content": "a stream that fails"}]
    if asynchronous:

        async def run() -> None:
            async with AsyncOpenAI(
                base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0, default_headers=headers
            ) as c:
                stream = await c.chat.completions.create(model="m", messages=messages, stream=True)
                async for _ in stream:
                    pass

        with pytest.raises(APIError, match="server had an error"):
            asyncio.run(run())
    else:
        with OpenAI(
            base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0, default_headers=headers
        ) as c:
            stream = c.chat.completions.create(model="m", messages=messages, stream=True)
            with pytest.raises(APIError, match="server had an error"):
                for _ in stream:
                    pass
    rows = proxy.query("SELECT status_code, status_message FROM spans")
    assert len(rows) == 1
    code, message = rows[0]
    assert code == "ERROR"
    assert "server had an error" in message


def test_not_traced_paths_are_forwarded_and_kept(proxy: Proxy, client: OpenAI) -> None:
    models = client.models.list()
    assert models.data
    rows = proxy.query("SELECT method, path, status FROM exchanges")
    assert [(r["method"], r["path"], r["status"]) for r in rows] == [("GET", "/models", 200)]
    assert proxy.query("SELECT count(*) AS n FROM traces")[0]["n"] == 0


def test_health(proxy: Proxy) -> None:
    health = httpx.get(f"{proxy.url}/api/health").json()
    assert health["status"] == "ok" and health["store"]["ok"] is True


def wait_for_spans(proxy: Proxy, count: int) -> list[Any]:
    import time

    for _ in range(200):
        rows = proxy.query("SELECT status_code, status_message, outputs FROM spans")
        if len(rows) >= count:
            return rows
        time.sleep(0.02)
    raise AssertionError(f"expected {count} spans, found {len(rows)}")


def test_client_leaving_mid_stream_is_an_error_span_with_partial_output(proxy: Proxy) -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "long story"}]}
    with httpx.stream(
        "POST",
        f"{proxy.base_url}/chat/completions",
        json=body,
        headers={"x-simulator-fault": "chunk-delay-ms=50", "x-simulator-chunks": "40"},
    ) as response:
        pieces = response.iter_raw()
        next(pieces), next(pieces), next(pieces)
    (row,) = wait_for_spans(proxy, 1)
    assert row["status_code"] == "ERROR" and row["status_message"] == "client disconnected"
    import orjson

    partial = orjson.loads(row["outputs"])["choices"][0]["message"]["content"]
    assert partial and len(partial) < 200  # what had arrived, not the whole answer
    # the proxy goes on serving
    assert (
        httpx.post(f"{proxy.base_url}/chat/completions", json={**body, "stream": False}).status_code
        == 200
    )


def test_client_leaving_right_after_done_is_a_complete_ok_span(
    proxy: Proxy, client: OpenAI
) -> None:
    for _ in range(5):
        stream = client.chat.completions.create(
            model="m", stream=True, messages=[{"role": "user", "content": "short"}]
        )
        for _chunk in stream:
            pass
        stream.close()
    rows = wait_for_spans(proxy, 5)
    assert [r["status_code"] for r in rows] == ["OK"] * 5
    assert proxy.query("SELECT count(*) FROM traces")[0][0] == 5


def test_an_azure_stream_is_traced_as_the_sdks_stream_makes_it(
    proxy: Proxy, client: OpenAI
) -> None:
    """Azure's filter events (`"object": ""`, before and after the answer) are skipped, as the
    SDK's `chat.completions.stream()` skips them: the span's outputs are its final completion."""
    with client.chat.completions.stream(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "AZURE_ANNOTATIONS"}],
        stream_options={"include_usage": True},
    ) as stream:
        final = stream.get_final_completion().to_dict(mode="json", warnings=False)
    for choice in final["choices"]:
        choice["message"].pop("parsed", None)
    span = only_trace(proxy)["spans"][0]
    assert span["outputs"] == final
    assert final["id"] and final["model"] and "prompt_filter_results" not in final
    assert span["attributes"]["gen_ai.response.model"] == final["model"]


def test_trace_info_previews_the_request_and_the_answer(proxy: Proxy, client: OpenAI) -> None:
    """MLflow 3's TraceInfo has `request_preview` and `response_preview`: a list of traces
    says what was asked and answered without opening each (the first model call's last input,
    the last model call's answer, 1,000 characters at most)."""
    said = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
    )
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "x" * 1500}]
        )
        if c.choices
    )
    responded = client.responses.create(model="gpt-4o-mini", input="Hello Responses")
    proxy.flush()
    infos = httpx.get(f"{proxy.url}/api/traces").json()["traces"]
    previews = [(t["request_preview"], t["response_preview"]) for t in reversed(infos)]
    assert previews == [
        ("Hi!", said.choices[0].message.content),
        ("x" * 1000, streamed[:1000]),
        ("Hello Responses", responded.output_text[:1000]),
    ]
    one = httpx.get(f"{proxy.url}/api/traces/{infos[0]['trace_id']}").json()["info"]
    assert one["request_preview"] == "Hello Responses"


def test_the_request_preview_of_content_parts_is_their_text(proxy: Proxy, client: OpenAI) -> None:
    """A message's content may be a list of parts (the Vercel AI SDK always sends Responses
    input so, and chat takes text and image parts): the preview is their text, as the UI shows
    it, not the list's JSON. A string that looks like JSON stays as it is."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is"},
                    image,
                    {"type": "text", "text": "this?"},
                ],
            }
        ],
    )
    client.responses.create(
        model="gpt-4o-mini",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]}],
    )
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": '[{"text": "as typed"}]'}]
    )
    proxy.flush()
    infos = httpx.get(f"{proxy.url}/api/traces").json()["traces"]
    assert [t["request_preview"] for t in reversed(infos)] == [
        "What is\n\nthis?",
        "Weather in Paris?",
        '[{"text": "as typed"}]',
    ]


def test_a_user_named_by_header_is_on_the_span_and_filters_the_trace_list(proxy: Proxy) -> None:
    with OpenAI(
        base_url=proxy.base_url, api_key=TEST_KEY, default_headers={"llmtap-user": "alice"}
    ) as c:
        c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], user="end-user-7"
        )
    proxy.flush()
    trace = only_trace(proxy)
    assert trace["info"]["tags"] == {"user": "alice"}
    attributes = trace["spans"][0]["attributes"]
    assert attributes["user.id"] == "alice" and attributes["user"] == "end-user-7"
    page = httpx.get(f"{proxy.url}/", params={"tag": "user=alice"}).text
    assert trace["info"]["trace_id"] in page
    other = httpx.get(f"{proxy.url}/", params={"tag": "user=bob"}).text
    assert trace["info"]["trace_id"] not in other
