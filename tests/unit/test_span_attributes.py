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
