"""Chat Completions and legacy Completions of the offline OpenAI simulator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from .simulator_text import (
    REFUSAL_TEXT,
    STREAM_ERROR,
    ArgFiller,
    BadRequest,
    SSEStream,
    chat_logprob,
    chat_usage,
    content_text,
    count_tokens,
    find_magic,
    fingerprint,
    fragment_pieces,
    make_id,
    pick_tools,
    resolve_model,
    text_pieces,
    tool_answer,
)

DONE = b"data: [DONE]\n\n"
ERROR_EVENT = b"data: " + orjson.dumps(STREAM_ERROR) + b"\n\n"
MALFORMED_EVENT = (
    b'data: {"id": "chatcmpl-broken", "object": "chat.completion.chunk", "choices": [\n\n'
)
_CONTENT_FILTER = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}


def sse(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chunk_writer(head: dict, include_usage: bool) -> Callable[..., bytes]:
    """`chunk(choices, usage=None)`: one SSE chunk with the stream's envelope; `usage` (null
    unless given) only when the client asked for it, as OpenAI does."""

    def chunk(out_choices: list, chunk_usage: Any = None) -> bytes:
        d = {**head, "choices": out_choices}
        if include_usage:
            d["usage"] = chunk_usage
        return sse(d)

    return chunk


def int_param(body: dict, key: str, default: int | None, lo: int, hi: int) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(
            f"Invalid '{key}': expected an integer between {lo} and {hi}.",
            key,
            "integer_below_min_value" if isinstance(value, int) else None,
        )
    return value


class _Choice:
    """What one choice answers: kind is text | refusal | list | tools | function."""

    __slots__ = ("kind", "pieces", "calls", "finish", "tokens")

    def __init__(
        self,
        kind: str,
        pieces: list[str],
        calls: list[tuple[str, str, str, list[str]]],
        finish: str,
    ) -> None:
        self.kind = kind
        self.pieces = pieces
        self.calls = calls  # (call id, name, arguments, argument fragments)
        self.finish = finish
        if calls:
            self.tokens = sum(len(c[3]) + count_tokens(c[1]) + 4 for c in calls)
        else:
            self.tokens = len(pieces)


def _prompt_tokens(messages: list, body: dict) -> int:
    total = 3
    for m in messages:
        if not isinstance(m, dict):
            continue
        total += 3 + count_tokens(content_text(m.get("content")))
        if m.get("name"):
            total += 1
        for call in m.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                total += count_tokens(str(fn.get("name", ""))) + count_tokens(
                    str(fn.get("arguments", ""))
                )
    for key in ("tools", "functions", "response_format"):
        if body.get(key):
            total += count_tokens(orjson.dumps(body[key]).decode()) // 2
    return total


def _plan_chat(
    body: dict, messages: list, n: int, forced: int | None, seq: int, model_req: str
) -> tuple[list[_Choice], str, str | None]:
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    last_role = last.get("role")
    user_text = ""
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            user_text = content_text(m.get("content"))
            break
    magic = find_magic(user_text)

    answering = last_role in ("tool", "function")
    if answering:
        results = []
        for m in reversed(messages):
            if not isinstance(m, dict) or m.get("role") not in ("tool", "function"):
                break
            results.append(content_text(m.get("content")))
        text = tool_answer(results[::-1])
    elif user_text:
        text = user_text if "echo" in model_req else f"Hello! You said: {user_text}"
    else:
        text = "Hello! How can I help you today?"

    tools = [
        (t["function"].get("name", ""), t["function"].get("parameters") or {})
        for t in body.get("tools") or ()
        if isinstance(t, dict)
        and t.get("type") == "function"
        and isinstance(t.get("function"), dict)
    ]
    chosen = pick_tools(
        tools,
        body.get("tool_choice"),
        body.get("parallel_tool_calls"),
        user_text,
        last_role == "tool",
    )
    function = None
    functions = [f for f in body.get("functions") or () if isinstance(f, dict)]
    if not chosen and functions and body.get("function_call") != "none":
        fc = body.get("function_call")
        if isinstance(fc, dict):
            function = next((f for f in functions if f.get("name") == fc.get("name")), None)
        elif last_role != "function":
            function = functions[0]

    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    fmt: dict = body["response_format"] if isinstance(body.get("response_format"), dict) else {}
    choices = []
    for i in range(n):
        if chosen:
            calls = []
            for k, (name, params) in enumerate(chosen):
                args = orjson.dumps(ArgFiller(params, user_text).value(params)).decode()
                call_id = "call_" + make_id("call", seq * 4096 + i * 64 + k, 24)
                calls.append((call_id, name, args, fragment_pieces(args, forced)))
            choices.append(_Choice("tools", [], calls, "tool_calls"))
            continue
        if function is not None:
            params = function.get("parameters") or {}
            args = orjson.dumps(ArgFiller(params, user_text).value(params)).decode()
            calls = [("", function.get("name", ""), args, fragment_pieces(args, forced))]
            choices.append(_Choice("function", [], calls, "function_call"))
            continue
        variant = text if i == 0 else f"(choice {i + 1}) {text}"
        kind = "text"
        if magic == "REFUSAL" and not answering:
            kind, pieces = "refusal", text_pieces(REFUSAL_TEXT, forced)
        elif fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema") or {}
            value = ArgFiller(schema, user_text).value(schema)
            pieces = fragment_pieces(orjson.dumps(value).decode(), forced)
        elif fmt.get("type") == "json_object":
            pieces = fragment_pieces(orjson.dumps({"response": variant}).decode(), forced)
        else:
            pieces = text_pieces(variant, forced)
            if magic == "LIST_CONTENT":
                kind = "list"
        finish = "stop"
        if isinstance(limit, int) and 0 < limit < len(pieces):
            pieces, finish = pieces[:limit], "length"
        choices.append(_Choice(kind, pieces, [], finish))
    return choices, last_role or "", magic


def _message(c: _Choice) -> dict:
    if c.kind == "tools":
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args, _ in c.calls
            ],
            "refusal": None,
            "annotations": [],
        }
    if c.kind == "function":
        _, name, args, _ = c.calls[0]
        return {
            "role": "assistant",
            "content": None,
            "function_call": {"name": name, "arguments": args},
            "refusal": None,
            "annotations": [],
        }
    text = "".join(c.pieces)
    if c.kind == "refusal":
        return {"role": "assistant", "content": None, "refusal": text, "annotations": []}
    if c.kind == "list":
        return {
            "role": "assistant",
            "content": [{"type": "text", "text": text}],
            "refusal": None,
            "annotations": [],
        }
    return {"role": "assistant", "content": text, "refusal": None, "annotations": []}


def _logprobs(c: _Choice, top: int) -> dict | None:
    if c.kind in ("tools", "function"):
        return {"content": None, "refusal": None}
    entries = [chat_logprob(p, top) for p in c.pieces]
    if c.kind == "refusal":
        return {"content": None, "refusal": entries}
    return {"content": entries, "refusal": None}


def _deltas(c: _Choice, want_lp: bool, top: int) -> list[tuple[dict, dict | None]]:
    out: list[tuple[dict, dict | None]] = []
    if c.kind in ("tools", "function"):
        for k, (cid, name, _, frags) in enumerate(c.calls):
            if c.kind == "function":
                head: dict = {"function_call": {"name": name, "arguments": ""}}
            else:
                head = {
                    "tool_calls": [
                        {
                            "index": k,
                            "id": cid,
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            if k == 0:
                head = {"role": "assistant", "content": None, **head, "refusal": None}
            out.append((head, None))
            for frag in frags:
                if c.kind == "function":
                    out.append(({"function_call": {"arguments": frag}}, None))
                else:
                    out.append(
                        ({"tool_calls": [{"index": k, "function": {"arguments": frag}}]}, None)
                    )
        return out
    if c.kind == "refusal":
        out.append(({"role": "assistant", "content": None, "refusal": ""}, None))
        for p in c.pieces:
            lp = {"content": None, "refusal": [chat_logprob(p, top)]} if want_lp else None
            out.append(({"refusal": p}, lp))
        return out
    if c.kind == "list":
        out.append(({"role": "assistant", "content": []}, None))
        for p in c.pieces:
            lp = {"content": [chat_logprob(p, top)], "refusal": None} if want_lp else None
            out.append(({"content": [{"type": "text", "text": p}]}, lp))
        return out
    out.append(({"role": "assistant", "content": "", "refusal": None}, None))
    for p in c.pieces:
        lp = {"content": [chat_logprob(p, top)], "refusal": None} if want_lp else None
        out.append(({"content": p}, lp))
    return out


def chat_completion(body: dict, seq: int, created: int, forced: int | None) -> dict | SSEStream:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    n = int_param(body, "n", 1, 1, 128) or 1
    top = int_param(body, "top_logprobs", 0, 0, 20) or 0
    want_lp = bool(body.get("logprobs"))
    model_req = body["model"]
    choices, _, magic = _plan_chat(body, messages, n, forced, seq, model_req)
    prompt_tokens = _prompt_tokens(messages, body)
    usage = chat_usage(prompt_tokens, sum(c.tokens for c in choices))
    cid = "chatcmpl-" + make_id("chatcmpl", seq, 29)
    model = resolve_model(model_req)
    tier = body.get("service_tier")
    tier = tier if tier in ("flex", "priority", "scale") else "default"
    fp = fingerprint(model)

    if not body.get("stream"):
        out_choices = []
        if magic != "EMPTY_CHOICES":
            for i, c in enumerate(choices):
                choice = {
                    "index": i,
                    "message": _message(c),
                    "logprobs": _logprobs(c, top) if want_lp else None,
                    "finish_reason": c.finish,
                }
                if magic == "AZURE_ANNOTATIONS":
                    choice["content_filter_results"] = _CONTENT_FILTER
                out_choices.append(choice)
        result = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": out_choices,
            "usage": usage,
            "service_tier": tier,
            "system_fingerprint": fp,
        }
        if magic == "AZURE_ANNOTATIONS":
            result["prompt_filter_results"] = [
                {"prompt_index": 0, "content_filter_results": _CONTENT_FILTER}
            ]
        return result

    if magic == "EMPTY_STREAM":
        return SSEStream(
            [DONE], terminal=True, error_event=ERROR_EVENT, malformed_event=MALFORMED_EVENT
        )
    opts = body.get("stream_options")
    include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
    head = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "service_tier": tier,
        "system_fingerprint": fp,
    }

    chunk = chunk_writer(head, include_usage)

    events: list[bytes] = []
    if magic == "EMPTY_CHOICES":
        events.append(chunk([]))
    if magic == "AZURE_ANNOTATIONS":
        events.append(
            _azure_annotation(
                prompt_filter_results=[
                    {"prompt_index": 0, "content_filter_results": _CONTENT_FILTER}
                ]
            )
        )
    per_choice = [_deltas(c, want_lp, top) for c in choices]
    steps = max(map(len, per_choice))
    for s in range(steps):
        for i, deltas in enumerate(per_choice):
            if s < len(deltas):
                delta, lp = deltas[s]
                events.append(
                    chunk([{"index": i, "delta": delta, "logprobs": lp, "finish_reason": None}])
                )
                if magic == "ERROR_MID_STREAM" and s == 1:
                    events.append(ERROR_EVENT)
                    return SSEStream(
                        events,
                        terminal=False,
                        error_event=ERROR_EVENT,
                        malformed_event=MALFORMED_EVENT,
                    )
    finishes = [
        {"index": i, "delta": {}, "logprobs": None, "finish_reason": c.finish}
        for i, c in enumerate(choices)
    ]
    if magic == "USAGE_ALWAYS":  # as Mistral and Together do: usage on the last chunk, unasked
        events.extend(chunk([finish]) for finish in finishes[:-1])
        events.append(sse({**head, "choices": finishes[-1:], "usage": usage}))
        events.append(DONE)
        return SSEStream(
            events, terminal=True, error_event=ERROR_EVENT, malformed_event=MALFORMED_EVENT
        )
    for finish in finishes:
        events.append(chunk([finish]))
    if magic == "AZURE_ANNOTATIONS":
        events.append(_azure_annotation(content_filter_results=_CONTENT_FILTER))
        d = dict(head)
        d["choices"] = []
        d["usage"] = usage
        events.append(sse(d))
    elif include_usage:
        events.append(chunk([], usage))
    events.append(DONE)
    return SSEStream(
        events, terminal=True, error_event=ERROR_EVENT, malformed_event=MALFORMED_EVENT
    )


def _azure_annotation(**results: Any) -> bytes:
    """Azure's annotation chunk: no id, no model, no choices, only content-filter results."""
    return sse({"choices": [], "created": 0, "id": "", "model": "", "object": "", **results})
