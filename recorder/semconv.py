"""Span attributes under standard names, so that an OTLP or MLflow export is a mapping.

OpenTelemetry GenAI semantic conventions (`gen_ai.*`, `session.id`) and the names MLflow's
OpenAI autolog sets (`mlflow.chat.tokenUsage`, `mlflow.message.format`, `mlflow.llm.model`:
a query written for MLflow's traces reads these) next to llmtap's own plain names (`model`,
`usage`, `cost`).
"""

from __future__ import annotations

from typing import Any

from llmtap.recorder.records import RequestContext, Usage


def finish_reasons(outputs: Any) -> list[str]:
    if not isinstance(outputs, dict):
        return []
    reasons = [
        c.get("finish_reason")
        for c in outputs.get("choices") or ()
        if isinstance(c, dict) and c.get("finish_reason")
    ]
    if not reasons and isinstance(outputs.get("status"), str) and "output" in outputs:
        reasons = [outputs["status"]]  # a Responses API response says how it ended here
    return [str(r) for r in reasons]


def genai_attributes(
    operation: str, request_model: Any, outputs: Any, usage: Usage | None, ctx: RequestContext
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": request_model,
    }
    if isinstance(outputs, dict):
        if outputs.get("model"):
            attributes["gen_ai.response.model"] = outputs["model"]
        if outputs.get("id"):
            attributes["gen_ai.response.id"] = outputs["id"]
    reasons = finish_reasons(outputs)
    if reasons:
        attributes["gen_ai.response.finish_reasons"] = reasons
    if usage is not None:
        attributes["gen_ai.usage.input_tokens"] = usage.input_tokens
        attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
        attributes["mlflow.chat.tokenUsage"] = usage.as_dict()
    if operation in ("chat", "text_completion"):
        attributes["mlflow.message.format"] = "openai"
    if isinstance(request_model, str):
        attributes["mlflow.llm.model"] = request_model
    if ctx.session:
        attributes["session.id"] = ctx.session
    return attributes
