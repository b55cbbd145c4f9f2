"""An answer in the other shape: a recorded stream as a non-streamed answer, a recorded
non-streamed answer as a stream (FIELD 4.3, for stream/non-stream parity tests).

Replay offers these only when no recording of the request's own shape exists.
- Stream to JSON: what the span's `outputs` hold, the stream reassembled by the endpoint's
  assembler (a `chat.completion`, a `text_completion`, or the Responses `response`).
- JSON to stream, for chat and legacy completions: the chunks OpenAI would send for that
  answer, from which the SDK's stream accumulator
  (`client.chat.completions.stream(...).get_final_completion()`) rebuilds it: per choice a
  first chunk with the role (and any other message field, as it is), the content, the refusal,
  each tool call with its index, then the finish reason; with `include_usage`, `"usage": null`
  on each and a usage chunk at the end, as OpenAI sends it; then `data: [DONE]`.
- JSON to stream, for the Responses API: its typed events as OpenAI sends them for that
  response (`response.created`, `response.in_progress`, per output item `output_item.added`,
  its content parts with their text or refusal in one delta each, a function call's arguments
  in one delta, `output_item.done`, then `response.completed`, or `response.incomplete` /
  `response.failed` as the response ended), numbered by `sequence_number`, from which the
  SDK's `client.responses.stream(...).get_final_response()` rebuilds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson

from llmtap.recorder.decoding import DECODED_AT_MOST, decode_at_most
from llmtap.recorder.endpoints import endpoint_for
from llmtap.recorder.stream_summary import StreamSummariser

Chunks = Callable[[Mapping[str, Any]], Iterator[dict[str, Any]]]

DONE = b"data: [DONE]\n\n"
_CHAT_ENVELOPE = ("id", "object", "created", "model", "service_tier", "system_fingerprint")
_COMPLETION_ENVELOPE = ("id", "object", "created", "model", "system_fingerprint")
_MESSAGE_ORDER = ("content", "refusal", "tool_calls")
"""Message fields sent after the first chunk, in this order; any other goes in the first."""


def reshapes(path: str, to_stream: bool) -> bool:
    """Whether an answer of this endpoint can be given in the other shape: as a stream
    (`to_stream`) from a non-streamed answer, or the reverse."""
    endpoint = endpoint_for(path)
    if endpoint is None:
        return False
    return endpoint.name in (_CHUNKS if to_stream else STREAMED_ENDPOINTS)


def json_from_stream(path: str, body: bytes, content_encoding: str | None) -> bytes | None:
    """A recorded stream's answer as the JSON body of a non-streamed one; None when the
    stream did not end as a whole answer (no terminal event, an error, unreadable events)."""
    endpoint = endpoint_for(path)
    if endpoint is None or endpoint.name not in STREAMED_ENDPOINTS:
        return None
    summariser = StreamSummariser(endpoint, content_encoding, 0)
    summariser.feed([body], [0])
    summary = summariser.finish()
    if not summary.terminal_seen or summary.error is not None or summary.problems:
        return None
    return orjson.dumps(summary.output) if isinstance(summary.output, dict) else None


def stream_from_json(
    path: str, body: bytes, content_encoding: str | None, include_usage: bool
) -> bytes | None:
    """A recorded non-streamed answer as the SSE body of a stream; None when the endpoint has
    no synthesized stream or the body is not such an answer."""
    endpoint = endpoint_for(path)
    write = _CHUNKS.get(endpoint.name) if endpoint is not None else None
    if write is None:
        return None
    try:
        decoded = decode_at_most(body, content_encoding, DECODED_AT_MOST)
        answer = orjson.loads(decoded) if decoded is not None else None
    except Exception:  # (corrupt compressed bytes, or not JSON): no answer to stream
        return None
    if endpoint is not None and endpoint.name == "responses":
        if not isinstance(answer, dict) or not isinstance(answer.get("output"), list):
            return None
        if answer.get("status") not in _TERMINAL:  # (queued, in progress: a background one)
            return None
        return b"".join(
            b"event: %s\ndata: %s\n\n" % (event["type"].encode(), orjson.dumps(event))
            for event in _response_events(answer)
        )
    if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
        return None
    chunks = list(write(answer))
    if include_usage:
        last = {**_envelope(answer, _ENVELOPES[endpoint.name]), "choices": []}
        chunks = [{**chunk, "usage": None} for chunk in chunks]
        chunks.append({**last, "usage": answer.get("usage")})
    return b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks) + DONE


def _envelope(answer: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    envelope = {key: answer[key] for key in fields if key in answer}
    if "object" in envelope:  # (a legacy completion's chunks are `text_completion` too)
        envelope["object"] = _CHUNK_OBJECT.get(envelope["object"], envelope["object"])
    return envelope


def _chat_chunks(answer: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    envelope = _envelope(answer, _CHAT_ENVELOPE)
    envelope.setdefault("object", "chat.completion.chunk")
    for at, choice in enumerate(answer["choices"]):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", at)
        # whole, on the chunk after the role's: the SDK extends its lists, and it takes a
        # choice's logprobs twice from the chunk that opens a choice after the first
        logprobs, first = choice.get("logprobs"), True
        for delta in _message_deltas(choice.get("message") or {}):
            yield _chat_chunk(envelope, index, delta, None if first else logprobs, None)
            logprobs = logprobs if first else None
            first = False
        yield _chat_chunk(envelope, index, {}, logprobs, choice.get("finish_reason"))


def _chat_chunk(
    envelope: dict[str, Any], index: Any, delta: dict[str, Any], logprobs: Any, finish: Any
) -> dict[str, Any]:
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    return {**envelope, "choices": [choice]}


def _message_deltas(message: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """As OpenAI streams a message: the role with empty content first (null content when
    the message has none: a tool call's), then the text, the refusal and each tool call."""
    content = message.get("content")
    first: dict[str, Any] = {
        "role": message.get("role", "assistant"),
        "content": "" if isinstance(content, str) else None,
        "refusal": None,
    }
    first.update((k, v) for k, v in message.items() if k not in first and k not in _MESSAGE_ORDER)
    yield {k: v for k, v in first.items() if v is not None or k in ("content", "refusal")}
    if isinstance(content, str) and content:
        yield {"content": content}
    elif content is not None and not isinstance(content, str):
        yield {"content": content}  # (not OpenAI's: as it was)
    if message.get("refusal") is not None:
        yield {"refusal": message["refusal"]}
    for at, call in enumerate(message.get("tool_calls") or ()):
        if isinstance(call, dict):
            yield {"tool_calls": [{"index": at, **call}]}


def _completion_chunks(answer: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    envelope = _envelope(answer, _COMPLETION_ENVELOPE)
    envelope.setdefault("object", "text_completion")
    for at, choice in enumerate(answer["choices"]):
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", at)
        text = {**choice, "index": index, "finish_reason": None}
        yield {**envelope, "choices": [text]}
        end = {"text": "", "index": index, "logprobs": None}
        yield {**envelope, "choices": [{**end, "finish_reason": choice.get("finish_reason")}]}


_TERMINAL = {
    "completed": "response.completed",
    "incomplete": "response.incomplete",
    "failed": "response.failed",
}
"""A response's status, and the event that ends its stream."""


def _response_events(answer: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """A Responses API answer as the events of its stream (see the module's docstring)."""
    counter = iter(range(1 << 62))

    def event(kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, **fields, "sequence_number": next(counter)}

    opening = {**answer, "status": "in_progress", "output": [], "usage": None}
    opening.pop("incomplete_details", None)
    opening.pop("error", None)
    yield event("response.created", response=opening)
    yield event("response.in_progress", response=opening)
    for at, item in enumerate(answer["output"]):
        if not isinstance(item, dict):
            continue
        yield from _item_events(event, at, item)
        yield event("response.output_item.done", output_index=at, item=item)
    yield event(_TERMINAL[answer["status"]], response=answer)


def _item_events(event: Callable[..., dict[str, Any]], at: int, item: dict[str, Any]) -> Any:
    """An output item's events up to its `output_item.done`: a message's parts and their
    text, a function call's arguments; any other item (reasoning, a hosted tool's call) added
    whole."""
    kind, item_id = item.get("type"), item.get("id")
    where = {"item_id": item_id, "output_index": at}
    if kind == "message":
        yield event(
            "response.output_item.added",
            output_index=at,
            item={**item, "status": "in_progress", "content": []},
        )
        for index, part in enumerate(item.get("content") or ()):
            if not isinstance(part, dict):
                continue
            part_at = {**where, "content_index": index}
            if part.get("type") == "output_text":
                empty = {**part, "text": "", "annotations": []}
                yield event("response.content_part.added", **part_at, part=empty)
                if part.get("text"):
                    delta = event("response.output_text.delta", **part_at, delta=part["text"])
                    yield {**delta, "logprobs": []}
                yield {
                    **event("response.output_text.done", **part_at, text=part.get("text", "")),
                    "logprobs": [],
                }
            elif part.get("type") == "refusal":
                empty = {**part, "refusal": ""}
                yield event("response.content_part.added", **part_at, part=empty)
                refusal = part.get("refusal") or ""
                if refusal:
                    yield event("response.refusal.delta", **part_at, delta=refusal)
                yield event("response.refusal.done", **part_at, refusal=refusal)
            else:
                yield event("response.content_part.added", **part_at, part=part)
            yield event("response.content_part.done", **part_at, part=part)
    elif kind == "function_call":
        arguments = item.get("arguments") or ""
        started = {**item, "arguments": "", "status": "in_progress"}
        yield event("response.output_item.added", output_index=at, item=started)
        if arguments:
            yield event("response.function_call_arguments.delta", **where, delta=arguments)
        yield event("response.function_call_arguments.done", **where, arguments=arguments)
    else:
        yield event("response.output_item.added", output_index=at, item=item)


_CHUNK_OBJECT = {"chat.completion": "chat.completion.chunk"}
_CHUNKS: dict[str, Chunks] = {
    "chat.completions": _chat_chunks,
    "completions": _completion_chunks,
    "responses": _response_events,
}
_ENVELOPES = {"chat.completions": _CHAT_ENVELOPE, "completions": _COMPLETION_ENVELOPE}
STREAMED_ENDPOINTS = frozenset({"chat.completions", "completions", "responses"})
"""The endpoints whose streams reassemble into their non-streamed answer."""
