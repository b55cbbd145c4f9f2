"""A span's attributes under the names MLflow's autolog and OpenTelemetry give them."""

from __future__ import annotations

import orjson

from llmtap.recorder.recording import Recording
from llmtap.recorder.records import RequestContext
from llmtap.recorder.tracing import build_batch

ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
    "usage": {
        "prompt_tokens": 2000,
        "completion_tokens": 10,
        "total_tokens": 2010,
        "prompt_tokens_details": {"cached_tokens": 1024},
    },
}


def span_for(path: str, body: dict, answer: dict) -> dict:
    rec = Recording("POST", path, "", [], orjson.dumps(body), RequestContext())
    rec.respond(200, [("content-type", "application/json")])
    rec.feed(orjson.dumps(answer))
    return build_batch(rec.finish()).spans[-1].attributes


def test_cached_input_tokens_are_counted_as_mlflow_counts_them() -> None:
    """MLflow 3 records `cache_read_input_tokens` beside the three counts (before: dropped,
    though the cost used them)."""
    attributes = span_for("/chat/completions", {"model": "gpt-4o-mini", "messages": []}, ANSWER)
    usage = {
        "input_tokens": 2000,
        "output_tokens": 10,
        "total_tokens": 2010,
        "cache_read_input_tokens": 1024,
    }
    assert attributes["usage"] == usage
    assert attributes["mlflow.chat.tokenUsage"] == usage
    assert attributes["mlflow.message.format"] == "openai"
    assert attributes["mlflow.llm.model"] == "gpt-4o-mini"
    assert attributes["cost"]["input_cost"] < 2000 * 0.15 / 1e6  # the cached part is cheaper


def test_no_cache_no_cache_count() -> None:
    plain = {**ANSWER, "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    attributes = span_for("/chat/completions", {"model": "m", "messages": []}, plain)
    assert attributes["usage"] == {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}
    embedding = {"object": "list", "data": [], "model": "e", "usage": {"prompt_tokens": 3}}
    attributes = span_for("/embeddings", {"model": "e", "input": "x"}, embedding)
    assert "mlflow.message.format" not in attributes


def test_invocation_parameters_under_their_genai_and_mlflow_names() -> None:
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
    ]
    body = {
        "model": "gpt-4o-mini",
        "messages": [],
        "temperature": 0.2,
        "top_p": 1,
        "max_completion_tokens": 64,
        "n": 2,
        "seed": 7,
        "stop": "END",
        "frequency_penalty": 0.5,
        "tools": tools,
        "user": "end-user-1",
    }
    attributes = span_for("/chat/completions", body, ANSWER)
    assert attributes["temperature"] == 0.2  # the request's own names stay
    assert attributes["gen_ai.request.temperature"] == 0.2
    assert attributes["gen_ai.request.top_p"] == 1
    assert attributes["gen_ai.request.max_tokens"] == 64
    assert attributes["gen_ai.request.choice.count"] == 2
    assert attributes["gen_ai.request.seed"] == 7
    assert attributes["gen_ai.request.stop_sequences"] == ["END"]
    assert attributes["gen_ai.request.frequency_penalty"] == 0.5
    assert "gen_ai.request.presence_penalty" not in attributes  # not sent: not told
    assert attributes["mlflow.chat.tools"] == tools
    assert attributes["user.id"] == "end-user-1"
    assert attributes["mlflow.llm.provider"] == "openai"
    assert attributes["mlflow.llm.cost"] == attributes["cost"]


def test_responses_tools_are_listed_as_mlflow_lists_them() -> None:
    body = {
        "model": "gpt-4o-mini",
        "input": "hi",
        "max_output_tokens": 32,
        "tools": [
            {"type": "function", "name": "get_weather", "parameters": {"type": "object"}},
            {"type": "web_search_preview"},
            {"type": "mcp", "server_label": "x"},  # nothing MLflow names: left out
        ],
    }
    answer = {"id": "resp_1", "object": "response", "status": "completed", "output": []}
    attributes = span_for("/responses", body, answer)
    assert attributes["gen_ai.request.max_tokens"] == 32
    assert attributes["mlflow.chat.tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object"}},
        },
        {"type": "function", "function": {"name": "web_search_preview"}},
    ]


def test_embeddings_encoding_format_and_no_tools() -> None:
    embedding = {"object": "list", "data": [], "model": "e", "usage": {"prompt_tokens": 3}}
    body = {"model": "e", "input": "x", "encoding_format": "base64"}
    attributes = span_for("/embeddings", body, embedding)
    assert attributes["gen_ai.request.encoding_formats"] == ["base64"]
    assert "mlflow.chat.tools" not in attributes and "user.id" not in attributes


def test_the_llmtap_user_header_names_the_user_over_the_body() -> None:
    from llmtap.proxy.context import build_context

    ctx = build_context(None, {"user": " alice ", "tag-team": "core"})
    assert ctx.user == "alice" and ctx.tags == {"team": "core", "user": "alice"}
    assert build_context(None, {"user": "alice", "tag-user": "bob"}).tags == {"user": "bob"}
    assert build_context(None, {"user": ""}).user is None
    body = {"model": "m", "messages": [], "user": "from-body"}
    rec = Recording("POST", "/chat/completions", "", [], orjson.dumps(body), ctx)
    rec.respond(200, [("content-type", "application/json")])
    rec.feed(orjson.dumps(ANSWER))
    assert build_batch(rec.finish()).spans[-1].attributes["user.id"] == "alice"
