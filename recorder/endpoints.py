"""The traced endpoints, registered as an extension would register one.

A new endpoint is one assembler module plus one entry here; nothing else in llmtap asks
"is this the chat path?".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from llmtap.recorder.assemble import ASSEMBLERS, Assembler
from llmtap.recorder.assemble.embeddings import decode_embeddings
from llmtap.recorder.records import SpanType, Usage

# request fields that say how the answer travels, not how the model behaves
TRANSPORT_FIELDS = frozenset({"stream", "stream_options"})


@dataclass(frozen=True, slots=True)
class Endpoint:
    path: str
    name: str
    span_type: SpanType
    operation: str
    """The OpenTelemetry GenAI operation name (`gen_ai.operation.name`)."""
    input_field: str
    """The request field that holds the input itself, not a setting of the model (MLflow's
    autolog `_get_input_from_model`): `prompt` is the input of a legacy completion only; a
    Responses call's `prompt` is a stored prompt, a setting (see `invocation_params`)."""
    new_assembler: Callable[[], Assembler]
    is_terminal: Callable[[str | None, Mapping[str, Any] | None], bool]
    """True for the event that ends a stream (the SSE `event:` name and its parsed data)."""
    carries_output: Callable[[Mapping[str, Any]], bool]
    """True for the first event that carries generated output (time to first token)."""
    response_output: Callable[[dict[str, Any]], Any] = lambda body: body
    """A non-streamed response as the SDK hands it to the caller (the span's `outputs`)."""


def _done_only(event: str | None, data: Mapping[str, Any] | None) -> bool:
    return data is None  # `data: [DONE]` is passed as None


def _choice_has_output(data: Mapping[str, Any]) -> bool:
    for choice in data.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if (
                delta.get("content")
                or delta.get("refusal")
                or delta.get("tool_calls")
                or delta.get("function_call")
                or delta.get("audio")
                # a reasoning model's first tokens (DeepSeek, vLLM, Ollama), as Responses
                # streams count their reasoning deltas
                or delta.get("reasoning_content")
                or delta.get("reasoning")
            ):
                return True
        elif choice.get("text"):
            return True
    return False


_RESPONSE_TERMINALS = frozenset({"response.completed", "response.failed", "response.incomplete"})


def _response_terminal(event: str | None, data: Mapping[str, Any] | None) -> bool:
    kind = data.get("type") if data is not None else None
    return event in _RESPONSE_TERMINALS or kind in _RESPONSE_TERMINALS or data is None


def _response_has_output(data: Mapping[str, Any]) -> bool:
    kind = data.get("type")
    if not isinstance(kind, str):
        return False
    if kind.endswith((".delta", ".partial_image")):
        return True
    # an item that comes whole (a computer call) or opens with no delta yet (a search): the
    # model's first output; a message or reasoning item opens before its first token
    if kind == "response.output_item.added":
        item = data.get("item")
        return isinstance(item, dict) and item.get("type") not in ("message", "reasoning")
    return False


def _never(data: Mapping[str, Any]) -> bool:
    return False


CHAT = Endpoint(
    "/chat/completions",
    "chat.completions",
    SpanType.CHAT_MODEL,
    "chat",
    "messages",  # input_field
    ASSEMBLERS["chat.completions"],
    _done_only,
    _choice_has_output,
)
COMPLETIONS = Endpoint(
    "/completions",
    "completions",
    SpanType.LLM,
    "text_completion",
    "prompt",  # input_field
    ASSEMBLERS["completions"],
    _done_only,
    _choice_has_output,
)
EMBEDDINGS = Endpoint(
    "/embeddings",
    "embeddings",
    SpanType.EMBEDDING,
    "embeddings",
    "input",  # input_field
    ASSEMBLERS["embeddings"],
    _done_only,
    _never,
    decode_embeddings,
)
RESPONSES = Endpoint(
    "/responses",
    "responses",
    SpanType.CHAT_MODEL,
    "chat",
    "input",  # input_field
    ASSEMBLERS["responses"],
    _response_terminal,
    _response_has_output,
)

ENDPOINTS: dict[str, Endpoint] = {e.path: e for e in (CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES)}


def endpoint_for(path: str) -> Endpoint | None:
    """The traced endpoint for an API path (below the base URL), or None."""
    return ENDPOINTS.get(operation_path(path).rstrip("/"))


def operation_path(path: str) -> str:
    """The API path an Azure OpenAI deployment path stands for (`AzureOpenAI` sends
    `/deployments/NAME/chat/completions?api-version=...` below its base URL); any other path
    as it is."""
    if path.startswith("/deployments/"):
        _, sep, rest = path[len("/deployments/") :].partition("/")
        if sep:
            return "/" + rest
    return path


def usage_of(payload: Mapping[str, Any] | None) -> Usage | None:
    """Token usage from any endpoint's `usage` object (prompt/completion or input/output names)."""
    if not isinstance(payload, dict) or (
        "usage" not in payload and "response" not in payload and "x_groq" not in payload
    ):
        return None  # most stream events: no usage, nothing to look at
    raw = payload.get("usage")
    if not isinstance(raw, dict):
        response = payload.get("response")  # a Responses API event wraps the response
        raw = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(raw, dict):
        groq = payload.get("x_groq")  # Groq's last chunk, when no usage chunk follows
        raw = groq.get("usage") if isinstance(groq, dict) else None
    if not isinstance(raw, dict):
        return None
    inp = _int(raw.get("input_tokens", raw.get("prompt_tokens")))
    out = _int(raw.get("output_tokens", raw.get("completion_tokens")))
    total = _int(raw.get("total_tokens")) or inp + out
    details = raw.get("prompt_tokens_details") or raw.get("input_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    return Usage(inp, out, total, cached)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def invocation_params(endpoint: Endpoint, body: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a request: every field but its input and how the answer travels.

    A Responses stored prompt (`prompt: {id, version, variables}`) is a setting: its id and
    version stand for the instructions and messages kept at OpenAI, so two prompts are two
    configurations. Its `variables` are not: they are what each call fills in (a customer's
    name, the question), as MLflow fills a prompt template's variables from each input row;
    kept as settings, every call would be a model version of its own."""
    params = {
        k: v for k, v in body.items() if k != endpoint.input_field and k not in TRANSPORT_FIELDS
    }
    prompt = params.get("prompt")
    if isinstance(prompt, dict) and "variables" in prompt:
        params["prompt"] = {k: v for k, v in prompt.items() if k != "variables"}
    return params


def prompt_variables(body: Mapping[str, Any]) -> dict[str, Any]:
    """The variables of a request's stored prompt, the part of it that is input; {} if none."""
    prompt = body.get("prompt")
    variables = prompt.get("variables") if isinstance(prompt, dict) else None
    return variables if isinstance(variables, dict) else {}
