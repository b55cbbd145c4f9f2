"""Responses API (`POST /v1/responses`) of the offline OpenAI simulator."""

from __future__ import annotations

import hashlib

import orjson

from .simulator_text import (
    REFUSAL_TEXT,
    ArgFiller,
    BadRequest,
    SSEStream,
    content_text,
    count_tokens,
    find_magic,
    fragment_pieces,
    pick_tools,
    resolve_model,
    responses_usage,
    text_pieces,
    tool_answer,
)

_ERROR = {
    "type": "error",
    "code": "server_error",
    "message": "The server had an error while processing your request. Sorry about that!",
    "param": None,
}
MALFORMED_EVENT = (
    b'event: response.output_text.delta\ndata: {"type": "response.output_text.delta", "delta": \n\n'
)


def _hex_id(prefix: str, kind: str, n: int) -> str:
    return prefix + hashlib.blake2b(f"{kind}:{n}".encode(), digest_size=24).hexdigest()


def _event(type_: str, payload: dict) -> bytes:
    return b"event: " + type_.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def _items(body: dict) -> list:
    value = body.get("input")
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        return [i for i in value if isinstance(i, dict)]
    raise BadRequest("Invalid 'input': expected a string or a list of items.", "input")


def responses(body: dict, seq: int, created: int, forced: int | None) -> dict | SSEStream:
    items = _items(body)
    user_text = ""
    for item in reversed(items):
        if item.get("role") == "user" and item.get("type", "message") == "message":
            user_text = content_text(item.get("content"))
            break
    results = []
    for item in reversed(items):
        if item.get("type") != "function_call_output":
            break
        results.append(content_text(item.get("output")))
    answering = bool(results)
    magic = find_magic(user_text)
    if answering:
        text = tool_answer(results[::-1])
    elif user_text:
        text = user_text if "echo" in body["model"] else f"Hello! You said: {user_text}"
    else:
        text = "Hello! How can I help you today?"

    tools = [
        (t.get("name", ""), t.get("parameters") or {})
        for t in body.get("tools") or ()
        if isinstance(t, dict) and t.get("type") == "function"
    ]
    chosen = pick_tools(
        tools, body.get("tool_choice"), body.get("parallel_tool_calls"), user_text, answering
    )
    limit = body.get("max_output_tokens")
    text_opts: dict = body["text"] if isinstance(body.get("text"), dict) else {}
    fmt: dict = text_opts["format"] if isinstance(text_opts.get("format"), dict) else {}

    incomplete = False
    outputs: list[dict] = []  # final output items
    fragments: list[list[str]] = []  # per output item: deltas
    out_tokens = 0
    if chosen:
        for k, (name, params) in enumerate(chosen):
            args = orjson.dumps(ArgFiller(params, user_text).value(params)).decode()
            frags = fragment_pieces(args, forced)
            outputs.append(
                {
                    "id": _hex_id("fc_", "fc", seq * 64 + k),
                    "type": "function_call",
                    "status": "completed",
                    "arguments": args,
                    "call_id": "call_" + _hex_id("", "call", seq * 64 + k)[:24],
                    "name": name,
                }
            )
            fragments.append(frags)
            out_tokens += len(frags) + count_tokens(name) + 4
    else:
        refusal = magic == "REFUSAL" and not answering
        if refusal:
            pieces = text_pieces(REFUSAL_TEXT, forced)
        elif fmt.get("type") == "json_schema":
            schema = fmt.get("schema") or {}
            pieces = fragment_pieces(
                orjson.dumps(ArgFiller(schema, user_text).value(schema)).decode(), forced
            )
        elif fmt.get("type") == "json_object":
            pieces = fragment_pieces(orjson.dumps({"response": text}).decode(), forced)
        else:
            pieces = text_pieces(text, forced)
        if isinstance(limit, int) and 0 < limit < len(pieces):
            pieces, incomplete = pieces[:limit], True
        joined = "".join(pieces)
        part = (
            {"type": "refusal", "refusal": joined}
            if refusal
            else {"type": "output_text", "annotations": [], "logprobs": [], "text": joined}
        )
        outputs.append(
            {
                "id": _hex_id("msg_", "msg", seq),
                "type": "message",
                "status": "incomplete" if incomplete else "completed",
                "content": [part],
                "role": "assistant",
            }
        )
        fragments.append(pieces)
        out_tokens = len(pieces)

    in_tokens = count_tokens(content_text(body.get("instructions"))) + sum(
        3 + count_tokens(content_text(i.get("content", i.get("output", i.get("arguments")))))
        for i in items
    )
    if body.get("tools"):
        in_tokens += count_tokens(orjson.dumps(body["tools"]).decode()) // 2
    response = {
        "id": _hex_id("resp_", "resp", seq),
        "object": "response",
        "created_at": created,
        "status": "incomplete" if incomplete else "completed",
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": limit,
        "max_tool_calls": body.get("max_tool_calls"),
        "model": resolve_model(body["model"]),
        "output": outputs,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {
            "format": fmt or {"type": "text"},
            "verbosity": text_opts.get("verbosity", "medium"),
        },
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_logprobs": body.get("top_logprobs", 0),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": responses_usage(in_tokens, out_tokens),
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }
    if not body.get("stream"):
        return response
    return _stream(response, outputs, fragments, magic == "ERROR_MID_STREAM")


def _stream(
    response: dict, outputs: list[dict], fragments: list[list[str]], error_mid: bool
) -> SSEStream:
    events: list[bytes] = []
    seq = 0

    def emit(type_: str, **fields: object) -> None:
        nonlocal seq
        events.append(_event(type_, {"type": type_, "sequence_number": seq, **fields}))
        seq += 1

    start = dict(response, status="in_progress", output=[], usage=None, incomplete_details=None)
    emit("response.created", response=start)
    emit("response.in_progress", response=start)
    error_event = b""
    for index, (item, frags) in enumerate(zip(outputs, fragments, strict=True)):
        if item["type"] == "function_call":
            emit(
                "response.output_item.added",
                output_index=index,
                item=dict(item, status="in_progress", arguments=""),
            )
            for frag in frags:
                emit(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=frag,
                )
            emit(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=item["arguments"],
            )
            emit("response.output_item.done", output_index=index, item=item)
            continue
        part = item["content"][0]
        refusal = part["type"] == "refusal"
        emit(
            "response.output_item.added",
            output_index=index,
            item=dict(item, status="in_progress", content=[]),
        )
        ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
        emit(
            "response.content_part.added",
            **ids,
            part={"type": "refusal", "refusal": ""}
            if refusal
            else {"type": "output_text", "annotations": [], "logprobs": [], "text": ""},
        )
        for k, frag in enumerate(frags):
            if refusal:
                emit("response.refusal.delta", **ids, delta=frag)
            else:
                emit("response.output_text.delta", **ids, delta=frag, logprobs=[])
            if error_mid and k == 0:
                emit("error", **_ERROR)
                return SSEStream(
                    events, terminal=False, error_event=events[-1], malformed_event=MALFORMED_EVENT
                )
        if refusal:
            emit("response.refusal.done", **ids, refusal=part["refusal"])
        else:
            emit("response.output_text.done", **ids, text=part["text"], logprobs=[])
        emit("response.content_part.done", **ids, part=part)
        emit("response.output_item.done", output_index=index, item=item)
    # the error event a fault injects mid-stream numbers itself after the last real event
    error_event = _event("error", {"type": "error", "sequence_number": seq, **_ERROR})
    final = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
    emit(final, response=response)
    return SSEStream(
        events, terminal=True, error_event=error_event, malformed_event=MALFORMED_EVENT
    )
