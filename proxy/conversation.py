"""A span as a conversation: the turns of a model call (system, user, assistant, tool calls and
their results) whatever API it used, or a tool's name, arguments and result.

One reading for the web UI's trace page (`llmtap.proxy.ui`) and for `llmtap trace` in a
terminal (`llmtap.proxy.tables`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

log = logging.getLogger("llmtap.ui")


def pretty_json(value: Any) -> str:
    return orjson.dumps(
        value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str
    ).decode()


@dataclass(slots=True)
class ToolCallView:
    name: str
    arguments: str
    call_id: str = ""


@dataclass(slots=True)
class Message:
    """One turn of a conversation as the page shows it, whatever API it came from."""

    role: str
    text: str = ""
    notes: list[str] = field(default_factory=list)
    """Parts that are not text (images, audio, files), named rather than shown."""
    tool_calls: list[ToolCallView] = field(default_factory=list)
    tool_call_id: str = ""
    name: str = ""
    output: bool = False
    """True for what the model answered, False for what the client sent."""
    finish_reason: str = ""


@dataclass(slots=True)
class SpanView:
    """The readable side of one span: what the trace page and `llmtap trace` show of it
    besides its JSON."""

    messages: list[Message] = field(default_factory=list)
    history: list[Message] = field(default_factory=list)
    """Input messages up to the last assistant turn: what earlier spans already showed."""
    tool: ToolCallView | None = None
    tool_result: str | None = None
    embedding: str = ""
    error: str = ""


def pretty_arguments(arguments: Any) -> str:
    """Tool arguments arrive as a JSON string: indent it when it parses, else keep it as sent."""
    if isinstance(arguments, str):
        try:
            return pretty_json(orjson.loads(arguments))
        except orjson.JSONDecodeError:
            return arguments
    return pretty_json(arguments)


def _text_and_notes(content: Any) -> tuple[str, list[str]]:
    """Text of a message's content (a string or a list of parts) and names of other parts."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        return pretty_json(content), []
    texts, notes = [], []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part, dict) and part.get("type") == "refusal":
            texts.append(f"(refused) {part.get('refusal', '')}")
        elif isinstance(part, dict):
            notes.append(str(part.get("type") or "part"))
    return "\n\n".join(texts), notes


def _calls(items: Any) -> list[ToolCallView]:
    calls = []
    for call in items if isinstance(items, list) else []:
        if isinstance(call, dict):
            function = call.get("function")
            function = function if isinstance(function, dict) else {}
            calls.append(
                ToolCallView(
                    str(function.get("name") or call.get("type") or "?"),
                    pretty_arguments(function.get("arguments", "")),
                    str(call.get("id") or ""),
                )
            )
    return calls


def chat_message(m: Any, output: bool = False, finish_reason: str = "") -> Message:
    if not isinstance(m, dict):
        return Message("?", pretty_json(m), output=output)
    text, notes = _text_and_notes(m.get("content"))
    if m.get("refusal"):
        text = f"{text}\n(refused) {m['refusal']}".strip()
    calls = _calls(m.get("tool_calls"))
    legacy = m.get("function_call")
    if isinstance(legacy, dict):
        calls.append(
            ToolCallView(str(legacy.get("name")), pretty_arguments(legacy.get("arguments", "")))
        )
    return Message(
        str(m.get("role") or "?"),
        text,
        notes,
        calls,
        str(m.get("tool_call_id") or ""),
        str(m.get("name") or ""),
        output,
        finish_reason,
    )


def response_item(item: Any, output: bool) -> Message:
    """One Responses API input or output item."""
    if isinstance(item, str):
        return Message("user", item, output=output)
    if not isinstance(item, dict):
        return Message("?", pretty_json(item), output=output)
    kind = item.get("type") or "message"
    if kind == "message":
        text, notes = _text_and_notes(item.get("content"))
        return Message(str(item.get("role") or "assistant"), text, notes, output=output)
    if kind == "function_call":
        call = ToolCallView(
            str(item.get("name")),
            pretty_arguments(item.get("arguments", "")),
            str(item.get("call_id") or ""),
        )
        return Message("assistant", tool_calls=[call], output=output)
    if kind == "function_call_output":
        text, _ = _text_and_notes(item.get("output"))
        return Message("tool", text, tool_call_id=str(item.get("call_id") or ""), output=output)
    if kind == "reasoning":
        summary, _ = _text_and_notes(item.get("summary"))
        return Message("reasoning", summary, output=output)
    return Message(str(kind), pretty_json(item), output=output)


def _choices(outputs: Any) -> list[dict[str, Any]]:
    """An answer's choices that are objects (whatever else a broken upstream put there)."""
    choices = outputs.get("choices") if isinstance(outputs, dict) else None
    return [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []


def _chat(inputs: dict[str, Any], outputs: Any) -> list[Message]:
    given = inputs.get("messages")
    messages = [chat_message(m) for m in (given if isinstance(given, list) else [given])]
    for choice in _choices(outputs):
        messages.append(
            chat_message(choice.get("message"), True, str(choice.get("finish_reason") or ""))
        )
    return messages


def _completion(inputs: dict[str, Any], outputs: Any) -> list[Message]:
    prompt = inputs.get("prompt")
    messages = [Message("prompt", prompt if isinstance(prompt, str) else pretty_json(prompt))]
    for choice in _choices(outputs):
        messages.append(
            Message(
                "completion",
                str(choice.get("text") or ""),
                output=True,
                finish_reason=str(choice.get("finish_reason") or ""),
            )
        )
    return messages


def _responses(inputs: dict[str, Any], outputs: Any) -> list[Message]:
    instructions = inputs.get("instructions")  # (text, or a list of parts)
    messages = [Message("system", _text_and_notes(instructions)[0])] if instructions else []
    given = inputs.get("input")
    items: Iterable[Any] = given if isinstance(given, list) else [given] if given else []
    messages.extend(response_item(i, False) for i in items)
    produced = outputs.get("output") if isinstance(outputs, dict) else None
    messages.extend(
        response_item(i, True) for i in (produced if isinstance(produced, list) else [])
    )
    return messages


def _embedding(inputs: dict[str, Any], outputs: Any) -> str:
    given = inputs.get("input")
    # a list of strings or of token arrays is a batch; one token array is one input
    batched = isinstance(given, list) and bool(given) and not isinstance(given[0], int)
    count = len(given) if batched and isinstance(given, list) else 1
    data = outputs.get("data") if isinstance(outputs, dict) else None
    vector = data[0].get("embedding") if data and isinstance(data[0], dict) else None
    dims = f", {len(vector)} dimensions" if isinstance(vector, list) else ""
    return f"{count} input{'s' * (count != 1)} embedded{dims}"


def conversation(span: dict[str, Any]) -> SpanView:
    """The readable side of a span: messages for model calls, name and arguments for tools."""
    inputs, outputs, view = span["inputs"], span["outputs"], SpanView()
    if span["status"]["code"] == "ERROR":
        error = outputs.get("error") if isinstance(outputs, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        view.error = str(message or span["status"]["message"] or "failed")
    if span["span_type"] == "TOOL" and isinstance(inputs, dict):
        view.tool = ToolCallView(
            str(inputs.get("name")),
            pretty_arguments(inputs.get("arguments")),
            str(span["attributes"].get("tool_call_id") or ""),
        )
        view.tool_result = (
            outputs if isinstance(outputs, str) or outputs is None else pretty_json(outputs)
        )
        return view
    if not isinstance(inputs, dict) or span["span_type"] == "AGENT":
        return view  # (an agent run's root: its calls below show its conversation)
    endpoint = span["attributes"].get("endpoint") or span["name"]
    if endpoint == "embeddings":
        view.embedding = _embedding(inputs, None if view.error else outputs)
    elif endpoint == "responses":
        view.history, view.messages = split_history(_responses(inputs, outputs))
    elif endpoint == "completions":
        view.messages = _completion(inputs, outputs)
    elif "messages" in inputs:
        view.history, view.messages = split_history(_chat(inputs, outputs))
    return view


def show_first_history(spans: list[dict[str, Any]], views: dict[str, SpanView]) -> None:
    """The trace's first model call shows the turns it was sent in full: no span before it
    showed them (a conversation a client sends whole, or the first call of an agent run)."""
    for span in sorted(spans, key=lambda s: s["start_time_ns"]):
        view = views[span["span_id"]]
        if view.messages or view.history:
            view.messages, view.history = [*view.history, *view.messages], []
            return


def readable(span: dict[str, Any]) -> SpanView:
    """`conversation`, or for a span whose recorded bodies are beyond it, the span's JSON
    alone (the page shows that too): a broken answer never breaks the trace's page."""
    try:
        return conversation(span)
    except Exception:  # noqa: BLE001 - logged, and the page still renders
        log.exception("a span's conversation could not be shown: %s", span.get("span_id"))
        return SpanView()


def split_history(messages: list[Message]) -> tuple[list[Message], list[Message]]:
    """Earlier turns the client sent back, and what is new in this call (from the last
    assistant turn it sent on), so an agent's fifth call does not repeat four calls' text."""
    last = max(
        (i for i, m in enumerate(messages) if m.role == "assistant" and not m.output), default=-1
    )
    if last <= 0:
        return [], messages
    return messages[:last], messages[last:]
