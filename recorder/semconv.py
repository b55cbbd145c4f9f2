"""Span attributes under standard names, so that an OTLP or MLflow export is a mapping.

OpenTelemetry GenAI semantic conventions (`gen_ai.*`, `session.id`, `user.id`) and the names
MLflow's OpenAI autolog sets (`mlflow.chat.tokenUsage`, `mlflow.chat.tools`,
`mlflow.message.format`, `mlflow.llm.model`, `mlflow.llm.provider`, `mlflow.llm.cost`: a query
written for MLflow's traces reads these) next to llmtap's own plain names (`model`, `usage`,
`cost`, and every invocation parameter under its own name).
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


# invocation parameters under their GenAI names (the request's own name first: a later one
# the API introduced for the same setting)
_REQUEST_PARAMS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gen_ai.request.temperature", ("temperature",)),
    ("gen_ai.request.top_p", ("top_p",)),
    ("gen_ai.request.max_tokens", ("max_tokens", "max_completion_tokens", "max_output_tokens")),
    ("gen_ai.request.frequency_penalty", ("frequency_penalty",)),
    ("gen_ai.request.presence_penalty", ("presence_penalty",)),
    ("gen_ai.request.seed", ("seed",)),
    ("gen_ai.request.choice.count", ("n",)),
)

# Responses API tools that are not functions, as MLflow lists them among a call's tools
_BUILT_IN_TOOLS = frozenset(
    {"file_search", "web_search", "web_search_preview", "computer_use_preview", "code_interpreter"}
)


def chat_tools(tools: Any) -> list[dict[str, Any]] | None:
    """A request's tools as MLflow's `ChatTool` list (`{"type": "function", "function": {...}}`):
    chat's as they are, the Responses API's flat function tools nested, its built-in tools by
    their type's name. None when the request has none."""
    if not isinstance(tools, list) or not tools:
        return None
    listed = []
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if isinstance(tool.get("function"), dict):
            listed.append({"type": "function", "function": tool["function"]})
        elif kind == "function" and "name" in tool:
            function = {k: tool[k] for k in ("name", "description", "parameters") if k in tool}
            listed.append({"type": "function", "function": function})
        elif kind in _BUILT_IN_TOOLS:
            listed.append({"type": "function", "function": {"name": kind}})
    return listed or None


def request_attributes(params: dict[str, Any]) -> dict[str, Any]:
    """The GenAI and MLflow names of a request's invocation parameters (`params`, as
    `endpoints.invocation_params` gives them): read from the parameters, never their copies."""
    attributes: dict[str, Any] = {}
    for name, fields in _REQUEST_PARAMS:
        for field in fields:
            value = params.get(field)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                attributes[name] = value
                break
    stop = params.get("stop")
    if isinstance(stop, str):
        attributes["gen_ai.request.stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        attributes["gen_ai.request.stop_sequences"] = stop
    encoding = params.get("encoding_format")
    if isinstance(encoding, str):
        attributes["gen_ai.request.encoding_formats"] = [encoding]
    tools = chat_tools(params.get("tools"))
    if tools is not None:
        attributes["mlflow.chat.tools"] = tools
    user = params.get("user") or params.get("safety_identifier")
    if isinstance(user, str) and user:
        attributes["user.id"] = user  # OpenAI's end-user id; `llmtap-user` overrides it
    return attributes


def genai_attributes(
    operation: str, request_model: Any, outputs: Any, usage: Usage | None, ctx: RequestContext
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": request_model,
        "mlflow.llm.provider": "openai",
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
    if ctx.user:
        attributes["user.id"] = ctx.user
    return attributes
