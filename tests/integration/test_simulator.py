"""The offline OpenAI simulator, driven by the real `openai` SDK (and raw httpx for faults)."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import math
import socket
import struct
import threading
import time
from collections.abc import Iterator

import brotli
import httpx
import openai
import pytest
import uvicorn
import zstandard
from pydantic import BaseModel

from llmtap.proxy.simulator import create_simulator

MSG = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string", "enum": ["UTC", "CET"]}},
        },
    },
}


class Server:
    def __init__(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = self.root + "/v1"
        config = uvicorn.Config(
            create_simulator(), log_level="warning", lifespan="off", ws="none", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "simulator did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def sim() -> Iterator[Server]:
    with Server() as server:
        yield server


@pytest.fixture
def client(sim: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0) as c:
        yield c


@pytest.fixture
def http(sim: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, timeout=10) as c:
        yield c


def sse_data(text: str) -> list[str]:
    return [line[6:] for line in text.split("\n") if line.startswith("data: ")]


def chat_body(**kw: object) -> dict:
    return {"model": "gpt-4o-mini", "messages": MSG, **kw}


# ------------------------------------------------------------------------------- chat


def test_chat_non_streamed(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert r.id.startswith("chatcmpl-") and len(r.id) == 38
    assert r.object == "chat.completion"
    assert r.model == "gpt-4o-mini-2024-07-18"
    assert r.system_fingerprint.startswith("fp_")
    assert r.service_tier == "default"
    assert abs(r.created - time.time()) < 60
    choice = r.choices[0]
    assert choice.message.content == "Hello! You said: What is the weather in Paris?"
    assert choice.message.role == "assistant" and choice.message.refusal is None
    assert choice.finish_reason == "stop"
    u = r.usage
    assert u.completion_tokens == 9 and u.total_tokens == u.prompt_tokens + 9
    assert u.prompt_tokens_details.cached_tokens == 0
    assert u.completion_tokens_details.reasoning_tokens == 0


def test_chat_deterministic_content_distinct_ids(client: openai.OpenAI) -> None:
    a = client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    b = client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.id != b.id


def test_chat_echo_model(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="echo", messages=MSG)
    assert r.choices[0].message.content == MSG[0]["content"]


def test_chat_streamed_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MSG, stream=True, stream_options={"include_usage": True}
        )
    )
    first = chunks[0]
    assert first.object == "chat.completion.chunk" and first.id.startswith("chatcmpl-")
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello! You said: What is the weather in Paris?"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 9
    assert chunks[-2].choices[0].finish_reason == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 9
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_stream_wire_format(http: httpx.Client) -> None:
    r = http.post("/chat/completions", json=chat_body(stream=True))
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n")
    data = sse_data(r.text)
    objs = [json.loads(d) for d in data[:-1]]
    assert all("usage" not in o for o in objs)  # not asked for: no usage key at all
    r = http.post(
        "/chat/completions", json=chat_body(stream=True, stream_options={"include_usage": True})
    )
    objs = [json.loads(d) for d in sse_data(r.text)[:-1]]
    assert all("usage" in o for o in objs)
    assert [o["usage"] is None for o in objs] == [True] * (len(objs) - 1) + [False]
    assert objs[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}


def test_chat_stream_helper_matches_non_streamed(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, n=2)
    with client.chat.completions.stream(model="gpt-4o-mini", messages=MSG, n=2) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 2
    assert [c.message.content for c in final.choices] == [c.message.content for c in plain.choices]


def test_async_client(sim: Server) -> None:
    asyncio.run(_async_client(sim))


async def _async_client(sim: Server) -> None:
    async with openai.AsyncOpenAI(base_url=sim.base_url, api_key="k", max_retries=0) as c:
        r = await c.chat.completions.create(model="gpt-4o", messages=MSG)
        assert r.model == "gpt-4o-2024-08-06"
        stream = await c.chat.completions.create(model="gpt-4o", messages=MSG, stream=True)
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream])
        assert text == r.choices[0].message.content
        async with c.chat.completions.stream(model="gpt-4o", messages=MSG, tools=[WEATHER]) as s:
            async for _ in s:
                pass
            final = await s.get_final_completion()
        assert final.choices[0].message.tool_calls[0].function.name == "get_weather"
        e = await c.embeddings.create(model="text-embedding-3-small", input="x")
        assert len(e.data[0].embedding) == 1536
        resp = await c.responses.create(model="gpt-4o", input="hey")
        assert resp.output_text == "Hello! You said: hey"


def test_chat_n_distinct_choices(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, n=3)
    contents = [c.message.content for c in r.choices]
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len(set(contents)) == 3


def test_chat_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="gpt-4o-mini", messages=MSG, logprobs=True, top_logprobs=3
    )
    lp = r.choices[0].logprobs.content
    assert "".join(t.token for t in lp) == r.choices[0].message.content
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in lp)
    assert lp[0].bytes == list(lp[0].token.encode())
    with client.chat.completions.stream(
        model="gpt-4o-mini", messages=MSG, logprobs=True, top_logprobs=2
    ) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    assert [t.token for t in final.choices[0].logprobs.content] == [t.token for t in lp]


def test_chat_tool_call_streamed_in_fragments(client: openai.OpenAI, http: httpx.Client) -> None:
    with client.chat.completions.stream(model="gpt-4o-mini", messages=MSG, tools=[WEATHER]) as s:
        arg_events = [e for e in s if e.type == "tool_calls.function.arguments.delta"]
        final = s.get_final_completion()
    assert len(arg_events) >= 3
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"city", "days"} and isinstance(args["days"], int)
    plain = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, tools=[WEATHER])
    assert plain.choices[0].message.tool_calls[0].function.arguments == call.function.arguments
    assert plain.choices[0].message.content is None


def test_chat_parallel_tool_calls(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="gpt-4o-mini", messages=MSG, tools=[WEATHER, TIME], parallel_tool_calls=True
    )
    calls = r.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[1].function.arguments) == {"tz": "UTC"}
    assert len({c.id for c in calls}) == 2
    with client.chat.completions.stream(
        model="gpt-4o-mini", messages=MSG, tools=[WEATHER, TIME], parallel_tool_calls=True
    ) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    assert [c.function.name for c in final.choices[0].message.tool_calls] == [
        "get_weather",
        "get_time",
    ]
    one = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "use get_time please"}],
        tools=[WEATHER, TIME],
    )
    assert [c.function.name for c in one.choices[0].message.tool_calls] == ["get_time"]
    named = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MSG,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    assert named.choices[0].message.tool_calls[0].function.name == "get_time"
    none = client.chat.completions.create(
        model="gpt-4o-mini", messages=MSG, tools=[WEATHER], tool_choice="none"
    )
    assert none.choices[0].message.tool_calls is None


def test_chat_answers_tool_results(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    messages = [
        *MSG,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    r = client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=[WEATHER])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == "The tool returned: sunny, 21C"
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=[WEATHER], stream=True
        )
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks) == "The tool returned: sunny, 21C"
    )


def test_chat_legacy_functions(client: openai.OpenAI) -> None:
    fn = WEATHER["function"]
    r = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, functions=[fn])
    assert r.choices[0].finish_reason == "function_call"
    assert r.choices[0].message.function_call.name == "get_weather"
    assert json.loads(r.choices[0].message.function_call.arguments)["days"] == 1
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MSG, functions=[fn], stream=True
        )
    )
    args = "".join(
        c.choices[0].delta.function_call.arguments
        for c in chunks
        if c.choices and c.choices[0].delta.function_call
    )
    assert args == r.choices[0].message.function_call.arguments
    done = client.chat.completions.create(
        model="gpt-4o-mini",
        functions=[fn],
        messages=[
            *MSG,
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "get_weather", "arguments": "{}"},
            },
            {"role": "function", "name": "get_weather", "content": "rainy"},
        ],
    )
    assert done.choices[0].message.content == "The tool returned: rainy"


class Weather(BaseModel):
    city: str
    temperature: float
    tags: list[str]


def test_chat_structured_outputs(client: openai.OpenAI) -> None:
    r = client.chat.completions.parse(model="gpt-4o-mini", messages=MSG, response_format=Weather)
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Weather) and parsed.city == MSG[0]["content"]
    with client.chat.completions.stream(
        model="gpt-4o-mini", messages=MSG, response_format=Weather
    ) as s:
        for _ in s:
            pass
        assert s.get_final_completion().choices[0].message.parsed == parsed
    obj = client.chat.completions.create(
        model="gpt-4o-mini", messages=MSG, response_format={"type": "json_object"}
    )
    assert json.loads(obj.choices[0].message.content) == {
        "response": "Hello! You said: What is the weather in Paris?"
    }


def test_chat_max_tokens_truncates(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=3)
    assert r.choices[0].message.content == "Hello! You said:"
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MSG, max_completion_tokens=2, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello! You"
    assert chunks[-1].choices[0].finish_reason == "length"


# ------------------------------------------------------------------------ magic words


def magic(word: str) -> list[dict]:
    return [{"role": "user", "content": word}]


def test_magic_empty_choices(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model="m", messages=magic("EMPTY_CHOICES"), stream=True)
    )
    assert chunks[0].choices == [] and chunks[1].choices[0].delta.role == "assistant"
    assert client.chat.completions.create(model="m", messages=magic("EMPTY_CHOICES")).choices == []
    legacy = list(client.completions.create(model="m", prompt="EMPTY_CHOICES", stream=True))
    assert legacy[0].choices == [] and legacy[1].choices[0].text


def test_magic_empty_stream(client: openai.OpenAI, http: httpx.Client) -> None:
    assert (
        list(client.chat.completions.create(model="m", messages=magic("EMPTY_STREAM"), stream=True))
        == []
    )
    r = http.post(
        "/chat/completions", json={"model": "m", "messages": magic("EMPTY_STREAM"), "stream": True}
    )
    assert r.text == "data: [DONE]\n\n"


def test_magic_error_mid_stream(client: openai.OpenAI, http: httpx.Client) -> None:
    seen = []
    with pytest.raises(openai.APIError, match="server had an error"):
        for chunk in client.chat.completions.create(
            model="m", stream=True, messages=magic("ERROR_MID_STREAM")
        ):
            seen.append(chunk)
    assert len(seen) == 2 and seen[1].choices[0].delta.content
    r = http.post(
        "/chat/completions",
        json={"model": "m", "stream": True, "messages": magic("ERROR_MID_STREAM")},
    )
    data = sse_data(r.text)
    assert json.loads(data[-1])["error"]["type"] == "server_error" and "[DONE]" not in r.text
    events = list(client.responses.create(model="m", input="ERROR_MID_STREAM", stream=True))
    assert events[-1].type == "error" and events[-1].code == "server_error"
    assert events[-2].type == "response.output_text.delta"


def test_magic_azure_annotations(client: openai.OpenAI, http: httpx.Client) -> None:
    body = {"model": "m", "messages": magic("AZURE_ANNOTATIONS"), "stream": True}
    objs = [json.loads(d) for d in sse_data(http.post("/chat/completions", json=body).text)[:-1]]
    assert objs[0]["object"] == "" and objs[0]["choices"] == [] and objs[0]["id"] == ""
    assert objs[0]["prompt_filter_results"]
    assert objs[-2]["object"] == "" and objs[-2]["choices"] == []
    assert objs[-1]["choices"] == [] and objs[-1]["usage"]["total_tokens"] > 0
    chunks = list(client.chat.completions.create(**body))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello! You said: AZURE_ANNOTATIONS"
    assert chunks[-1].usage is not None


def test_magic_list_content(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model="m", messages=magic("LIST_CONTENT"), stream=True)
    )
    parts = [
        p
        for c in chunks
        if c.choices and isinstance(c.choices[0].delta.content, list)
        for p in c.choices[0].delta.content
    ]
    assert "".join(p["text"] for p in parts) == "Hello! You said: LIST_CONTENT"
    r = client.chat.completions.create(model="m", messages=magic("LIST_CONTENT"))
    assert r.choices[0].message.content == [
        {"type": "text", "text": "Hello! You said: LIST_CONTENT"}
    ]


def test_magic_refusal(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="m", messages=magic("REFUSAL"))
    assert r.choices[0].message.content is None
    assert r.choices[0].message.refusal.startswith("I'm sorry")
    with client.chat.completions.stream(model="m", messages=magic("REFUSAL")) as s:
        refusal_deltas = [e for e in s if e.type == "refusal.delta"]
        final = s.get_final_completion()
    assert len(refusal_deltas) > 3
    assert final.choices[0].message.refusal == r.choices[0].message.refusal
    resp = client.responses.create(model="m", input="REFUSAL")
    assert resp.output[0].content[0].type == "refusal"


# ------------------------------------------------------------------ legacy completions


def test_legacy_completions(client: openai.OpenAI) -> None:
    r = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text == " You said: Say hi" and r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    many = client.completions.create(model="m", prompt=["a", "b"], n=2)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert len({c.text for c in many.choices}) == 4
    short = client.completions.create(model="m", prompt="one two three", max_tokens=2)
    assert short.choices[0].text == " You said:" and short.choices[0].finish_reason == "length"
    assert short.usage.completion_tokens == 2
    lp = client.completions.create(model="m", prompt="Say hi", logprobs=2, echo=True)
    logprobs = lp.choices[0].logprobs
    assert lp.choices[0].text == "Say hi You said: Say hi"
    assert "".join(logprobs.tokens) == lp.choices[0].text
    assert logprobs.token_logprobs[0] is None and len(logprobs.top_logprobs[1]) == 2
    assert logprobs.text_offset[1] == 3
    tokens = client.completions.create(model="m", prompt=[1, 2, 3])
    assert tokens.choices[0].text == " You said: 1 2 3"


def test_legacy_completions_streamed(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model="m", prompt="Say hi", stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " You said: Say hi"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    echo = list(
        client.completions.create(model="m", prompt="Yo", stream=True, echo=True, logprobs=1)
    )
    assert echo[0].choices[0].text == "Yo"
    assert echo[1].choices[0].logprobs.tokens == [" You"]


# --------------------------------------------------------------------------- embeddings


def test_embeddings_sdk_default_base64(client: openai.OpenAI, http: httpx.Client) -> None:
    r = client.embeddings.create(model="text-embedding-3-small", input=["hello", "world"])
    assert r.object == "list" and r.model == "text-embedding-3-small"
    assert [d.index for d in r.data] == [0, 1]
    v = r.data[0].embedding
    assert len(v) == 1536 and math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-5)
    assert r.data[0].embedding != r.data[1].embedding
    assert r.usage.prompt_tokens == 2 == r.usage.total_tokens
    raw = http.post(
        "/embeddings",
        json={"model": "text-embedding-3-small", "input": "hello", "encoding_format": "base64"},
    ).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert list(struct.unpack("<1536f", packed)) == v
    floats = client.embeddings.create(
        model="text-embedding-3-small", input="hello", encoding_format="float"
    )
    assert floats.data[0].embedding == v


def test_embeddings_dimensions_and_tokens(client: openai.OpenAI) -> None:
    large = client.embeddings.create(model="text-embedding-3-large", input="x")
    assert len(large.data[0].embedding) == 3072
    small = client.embeddings.create(model="text-embedding-3-small", input="x", dimensions=256)
    assert len(small.data[0].embedding) == 256
    ada = client.embeddings.create(model="text-embedding-ada-002", input=[[1, 2, 3], [4]])
    assert len(ada.data) == 2 and ada.usage.prompt_tokens == 4
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="text-embedding-ada-002", input="x", dimensions=8)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="text-embedding-3-small", input="")


# ---------------------------------------------------------------------------- responses


def test_responses_non_streamed(client: openai.OpenAI) -> None:
    r = client.responses.create(model="gpt-4o-mini", input="hello", instructions="be nice")
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.output_text == "Hello! You said: hello"
    assert r.output[0].type == "message" and r.output[0].id.startswith("msg_")
    assert r.usage.output_tokens == 4
    assert r.usage.total_tokens == r.usage.input_tokens + 4
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    follow = client.responses.create(
        model="gpt-4o-mini",
        previous_response_id=r.id,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "again"}]}],
    )
    assert follow.previous_response_id == r.id
    assert follow.output_text == "Hello! You said: again"


def test_responses_tools_round_trip(client: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        **{k: WEATHER["function"][k] for k in ("description", "parameters")},
    }
    r = client.responses.create(model="gpt-4o-mini", input="Weather in Paris?", tools=[tool])
    call = r.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert json.loads(call.arguments)["city"] == "Weather in Paris?"
    done = client.responses.create(
        model="gpt-4o-mini",
        previous_response_id=r.id,
        tools=[tool],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "21C"}],
    )
    assert done.output_text == "The tool returned: 21C"


def test_responses_streamed(client: openai.OpenAI, http: httpx.Client) -> None:
    with client.responses.stream(model="gpt-4o-mini", input="hello there") as s:
        events = list(s)
        final = s.get_final_response()
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types.count("response.output_text.delta") == 5
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == "Hello! You said: hello there"
    raw = http.post("/responses", json={"model": "m", "input": "x", "stream": True}).text
    blocks = [b for b in raw.split("\n\n") if b]
    for block in blocks:
        event_line, data_line = block.split("\n")
        assert event_line[7:] == json.loads(data_line[6:])["type"]


def test_responses_streamed_tool_call(client: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "parameters": WEATHER["function"]["parameters"],
    }
    with client.responses.stream(model="m", input="Paris in 2 days", tools=[tool]) as s:
        events = list(s)
        final = s.get_final_response()
    types = [e.type for e in events]
    assert types.count("response.function_call_arguments.delta") >= 3
    assert "response.function_call_arguments.done" in types
    assert json.loads(final.output[0].arguments) == {"city": "Paris in 2 days", "days": 2}


def test_responses_structured_and_incomplete(client: openai.OpenAI) -> None:
    parsed = client.responses.parse(model="m", input="Paris", text_format=Weather)
    assert parsed.output_parsed.city == "Paris"
    short = client.responses.create(model="m", input="one two three four", max_output_tokens=2)
    assert short.status == "incomplete" and short.incomplete_details.reason == "max_output_tokens"
    assert short.output_text == "Hello! You"
    events = list(
        client.responses.create(model="m", input="one two three", max_output_tokens=2, stream=True)
    )
    assert events[-1].type == "response.incomplete"


# ------------------------------------------------------------------------------- models


def test_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "gpt-4o-mini" in ids and "text-embedding-3-small" in ids
    assert client.models.retrieve("gpt-4o").owned_by == "system"
    with pytest.raises(openai.NotFoundError) as exc:
        client.models.retrieve("nope")
    assert exc.value.code == "model_not_found"


def test_errors(http: httpx.Client, sim: Server) -> None:
    r = http.post("/nope", json={})
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "Invalid URL (POST /v1/nope)",
            "type": "invalid_request_error",
            "param": None,
            "code": "unknown_url",
        }
    }
    assert http.get("/chat/completions").json()["error"]["code"] == "unknown_url"
    assert httpx.get(sim.root + "/elsewhere").status_code == 404
    bad = http.post(
        "/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert http.post("/chat/completions", json=[1]).status_code == 400
    no_model = http.post("/chat/completions", json={"messages": MSG})
    assert no_model.status_code == 400 and "model" in no_model.json()["error"]["message"]
    assert (
        http.post("/chat/completions", json={"model": "m"}).json()["error"]["param"] == "messages"
    )
    unknown = http.post(
        "/chat/completions", json=chat_body(), headers={"x-simulator-fault": "bogus"}
    )
    assert unknown.status_code == 400


def test_response_headers(http: httpx.Client) -> None:
    r = http.post(
        "/chat/completions", json=chat_body(), headers={"authorization": "Bearer whatever"}
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"].startswith("req_")
    assert r.headers["openai-organization"] and r.headers["openai-project"]
    assert "set-cookie" in r.headers and r.headers["content-type"] == "application/json"


def test_request_log(http: httpx.Client, sim: Server) -> None:
    assert httpx.delete(sim.root + "/_simulator/requests").status_code == 200
    http.post(
        "/chat/completions?x=1",
        json=chat_body(),
        headers={"authorization": "Bearer k", "x-custom": "v"},
    )
    log = httpx.get(sim.root + "/_simulator/requests").json()
    assert len(log) == 1
    entry = log[0]
    assert entry["method"] == "POST" and entry["path"] == "/v1/chat/completions"
    assert entry["query"] == "x=1" and entry["body"]["model"] == "gpt-4o-mini"
    assert entry["headers"]["authorization"] == "Bearer k" and entry["headers"]["x-custom"] == "v"
    assert httpx.delete(sim.root + "/_simulator/requests").json() == {"cleared": 1}
    assert httpx.get(sim.root + "/_simulator/requests").json() == []
    assert httpx.get(sim.root + "/_simulator/health").json()["status"] == "ok"


# ------------------------------------------------------------------------------- faults


def fault(value: str) -> dict:
    return {"x-simulator-fault": value}


def test_fault_status(client: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="m", messages=MSG, extra_headers=fault("status-429"))
    assert exc.value.code == "rate_limit_exceeded"
    assert exc.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="m", messages=MSG, extra_headers=fault("status-500"))
    r = http.post("/embeddings", json={}, headers=fault("status-418"))
    assert r.status_code == 418 and r.json()["error"]["message"]


def test_fault_reset_before_headers(client: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        http.post("/chat/completions", json=chat_body(), headers=fault("reset-before-headers"))
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(
            model="m", messages=MSG, extra_headers=fault("reset-before-headers")
        )
    assert http.post("/chat/completions", json=chat_body()).status_code == 200


def test_fault_reset_mid_stream(client: openai.OpenAI, http: httpx.Client) -> None:
    seen = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(
            model="m", messages=MSG, stream=True, extra_headers=fault("reset-mid-stream")
        ):
            seen.append(chunk)
    assert len(seen) >= 2
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        http.post(
            "/embeddings",
            json={"model": "text-embedding-3-small", "input": "x"},
            headers=fault("reset-mid-stream"),
        )


def test_fault_no_done(client: openai.OpenAI, http: httpx.Client) -> None:
    r = http.post("/chat/completions", json=chat_body(stream=True), headers=fault("no-done"))
    assert "[DONE]" not in r.text and json.loads(sse_data(r.text)[-1])["choices"]
    chunks = list(
        client.chat.completions.create(
            model="m", messages=MSG, stream=True, extra_headers=fault("no-done")
        )
    )
    assert chunks[-1].choices[0].finish_reason == "stop"
    resp = http.post(
        "/responses", json={"model": "m", "input": "x", "stream": True}, headers=fault("no-done")
    )
    assert "response.completed" not in resp.text


def test_fault_malformed_chunk(client: openai.OpenAI, http: httpx.Client) -> None:
    r = http.post(
        "/chat/completions", json=chat_body(stream=True), headers=fault("malformed-chunk")
    )
    bad = [d for d in sse_data(r.text) if d != "[DONE]" and not _is_json(d)]
    assert len(bad) == 1 and r.text.endswith("data: [DONE]\n\n")
    with pytest.raises(ValueError):
        list(
            client.chat.completions.create(
                model="m", messages=MSG, stream=True, extra_headers=fault("malformed-chunk")
            )
        )


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_fault_error_event(client: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.APIError):
        list(
            client.chat.completions.create(
                model="m", messages=MSG, stream=True, extra_headers=fault("error-event")
            )
        )
    r = http.post(
        "/responses",
        json={"model": "m", "input": "x", "stream": True},
        headers=fault("error-event"),
    )
    assert r.text.rstrip().split("\n")[-2] == "event: error"


def test_fault_garbage(client: openai.OpenAI, http: httpx.Client) -> None:
    r = http.post("/chat/completions", json=chat_body(), headers=fault("garbage"))
    assert r.status_code == 200 and not _is_json(r.text)
    with pytest.raises((openai.APIResponseValidationError, ValueError)):
        client.chat.completions.create(model="m", messages=MSG, extra_headers=fault("garbage"))


def test_fault_timing(sim: Server) -> None:
    async def run() -> None:
        async with httpx.AsyncClient(base_url=sim.base_url, timeout=10) as c:
            t0 = time.monotonic()
            r = await c.post(
                "/chat/completions", json=chat_body(), headers=fault("slow-first-byte-ms=300")
            )
            assert r.status_code == 200 and time.monotonic() - t0 >= 0.3
            t0 = time.monotonic()
            r = await c.post(
                "/chat/completions",
                json=chat_body(stream=True),
                headers=fault("stall-mid-stream-ms=300"),
            )
            assert r.text.endswith("[DONE]\n\n") and time.monotonic() - t0 >= 0.3
            # paced: 13 events (role, 9 content, finish, usage, DONE) 40 ms apart
            arrivals = []
            t0 = time.monotonic()
            async with c.stream(
                "POST",
                "/chat/completions",
                json=chat_body(stream=True, stream_options={"include_usage": True}),
                headers=fault("chunk-delay-ms=40"),
            ) as resp:
                async for _ in resp.aiter_bytes():
                    arrivals.append(time.monotonic() - t0)
            assert len(arrivals) >= 6 and arrivals[-1] >= 0.4 and arrivals[0] < 0.2

    asyncio.run(run())


def test_fault_combination(http: httpx.Client) -> None:
    r = http.post(
        "/chat/completions", json=chat_body(stream=True), headers=fault("no-done, chunk-delay-ms=1")
    )
    assert r.status_code == 200 and "[DONE]" not in r.text


# ------------------------------------------------------------------ chunks, compression


def test_forced_chunks(client: openai.OpenAI) -> None:
    headers = {"x-simulator-chunks": "100"}
    chunks = list(
        client.chat.completions.create(model="m", messages=MSG, stream=True, extra_headers=headers)
    )
    content = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(content) == 100
    plain = client.chat.completions.create(model="m", messages=MSG, extra_headers=headers)
    assert plain.choices[0].message.content == "".join(content)
    assert plain.usage.completion_tokens == 100
    few = client.chat.completions.create(
        model="m", messages=MSG, extra_headers={"x-simulator-chunks": "2"}
    )
    assert few.choices[0].message.content == "Hello! You said: What is the weather in Paris?"
    events = list(client.responses.create(model="m", input="x", stream=True, extra_headers=headers))
    assert sum(e.type == "response.output_text.delta" for e in events) == 100
    with client.chat.completions.stream(
        model="m", messages=MSG, tools=[WEATHER], extra_headers={"x-simulator-chunks": "5"}
    ) as s:
        args = [
            e for e in s if e.type == "tool_calls.function.arguments.delta" and e.arguments_delta
        ]
        assert json.loads(
            s.get_final_completion().choices[0].message.tool_calls[0].function.arguments
        )
    assert len(args) == 5


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd", "deflate"])
def test_compression(sim: Server, encoding: str) -> None:
    decoders = {
        "gzip": gzip.decompress,
        "br": brotli.decompress,
        "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
        "deflate": __import__("zlib").decompress,
    }
    headers = {"x-simulator-compress": encoding, "accept-encoding": encoding}
    with httpx.Client(base_url=sim.base_url) as c:
        r = c.post("/chat/completions", json=chat_body(), headers=headers)
        assert r.headers["content-encoding"] == encoding
        assert int(r.headers["content-length"]) == len(r.read()) or True
        with c.stream("POST", "/chat/completions", json=chat_body(), headers=headers) as s:
            raw = b"".join(s.iter_raw())
        assert json.loads(decoders[encoding](raw))["object"] == "chat.completion"
        with c.stream(
            "POST", "/chat/completions", json=chat_body(stream=True), headers=headers
        ) as s:
            assert s.headers["content-encoding"] == encoding
            raw = b"".join(s.iter_raw())
        assert decoders[encoding](raw).endswith(b"data: [DONE]\n\n")
        not_accepted = c.post(
            "/chat/completions",
            json=chat_body(),
            headers={"x-simulator-compress": encoding, "accept-encoding": "identity"},
        )
        assert "content-encoding" not in not_accepted.headers
        forced = c.post(
            "/chat/completions",
            json=chat_body(),
            headers={"x-simulator-compress": encoding + "!", "accept-encoding": "identity"},
        )
        assert forced.headers["content-encoding"] == encoding


def test_compression_through_sdk(client: openai.OpenAI) -> None:
    for enc in ("gzip", "br", "zstd", "auto"):
        r = client.chat.completions.create(
            model="m", messages=MSG, extra_headers={"x-simulator-compress": enc}
        )
        assert r.choices[0].message.content.startswith("Hello!")
        chunks = list(
            client.chat.completions.create(
                model="m", messages=MSG, stream=True, extra_headers={"x-simulator-compress": enc}
            )
        )
        assert chunks[-1].choices[0].finish_reason == "stop"
