"""Factories for streamed payloads as OpenAI sends them, and the SDK's verdict on them.

`make_chunks()` builds one realistic `chat.completion.chunk` stream and `azure_chunks()` the same
as Azure OpenAI sends it; `random_chunks(rng)` draws one from a wide mix (content, refusal,
parallel tool calls, n>1, logprobs, usage, annotation chunks, Azure's filter results);
`sse_bytes()` serialises payloads as the wire carries them; `sdk_final_completion()`
is what the OpenAI SDK's own accumulator makes of chunks, dumped as the fair comparison.
"""

from __future__ import annotations

import copy
import json
import random
import warnings
from typing import Any

from openai import ContentFilterFinishReasonError, LengthFinishReasonError
from openai._models import construct_type
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from llmtap.recorder.recording import Recording
from llmtap.recorder.records import RequestContext

Chunk = dict[str, Any]

WORDS = ["Hello", " world", ",", " héllo", " 日本語", " 🎉", " the", " quick", "\n", " fox", ""]
TOOL_NAMES = ["get_weather", "search", "lookup_user"]


def split_text(text: str, rng: random.Random | None, size: int = 4) -> list[str]:
    """Cut text into fragments: fixed size, or random sizes when `rng` is given."""
    pieces, at = [], 0
    while at < len(text):
        step = rng.randint(1, 6) if rng else size
        pieces.append(text[at : at + step])
        at += step
    return pieces


def token_logprobs(text: str) -> list[dict[str, Any]]:
    return [
        {
            "token": text,
            "logprob": -0.25,
            "bytes": list(text.encode()),
            "top_logprobs": [{"token": text, "logprob": -0.25, "bytes": list(text.encode())}],
        }
    ]


def _choice(index: int, delta: dict[str, Any], *, logprobs: Any = None, **extra: Any) -> Chunk:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": None, **extra}


def choice_events(
    index: int = 0,
    *,
    content: str | None = "Hello there!",
    refusal: str | None = None,
    tool_calls: int | list[tuple[str, str]] = 0,
    function_call: tuple[str, str] | None = None,
    logprobs: bool = False,
    finish_reason: str | None = None,
    rng: random.Random | None = None,
) -> list[Chunk]:
    """The choice dicts one choice contributes, in order, each destined for its own chunk."""
    empty_logprobs = {"content": [], "refusal": []} if logprobs else None
    first: dict[str, Any] = {"role": "assistant", "content": "" if content is not None else None}
    if refusal is not None:
        first["refusal"] = None
    events = [_choice(index, first, logprobs=empty_logprobs)]
    for piece in split_text(content or "", rng):
        lp = {"content": token_logprobs(piece), "refusal": None} if logprobs else None
        events.append(_choice(index, {"content": piece}, logprobs=lp))
    for piece in split_text(refusal or "", rng):
        lp = {"content": None, "refusal": token_logprobs(piece)} if logprobs else None
        events.append(_choice(index, {"refusal": piece}, logprobs=lp))
    calls = _tool_calls(tool_calls, rng)
    for position, (name, arguments) in enumerate(calls):
        head = {"index": position, "id": f"call_{index}_{position}", "type": "function"}
        head["function"] = {"name": name, "arguments": ""}
        events.append(_choice(index, {"tool_calls": [head]}))
        for piece in split_text(arguments, rng):
            fragment = {"index": position, "function": {"arguments": piece}}
            events.append(_choice(index, {"tool_calls": [fragment]}))
    if function_call is not None:
        events.append(
            _choice(index, {"function_call": {"name": function_call[0], "arguments": ""}})
        )
        for piece in split_text(function_call[1], rng):
            events.append(_choice(index, {"function_call": {"arguments": piece}}))
    reason = finish_reason or (
        "tool_calls" if calls else "function_call" if function_call else "stop"
    )
    events.append({**_choice(index, {}), "finish_reason": reason})
    return events


def _tool_calls(
    spec: int | list[tuple[str, str]], rng: random.Random | None
) -> list[tuple[str, str]]:
    if isinstance(spec, list):
        return spec
    return [
        (TOOL_NAMES[i % len(TOOL_NAMES)], json.dumps({"city": f"Zürich {i}", "days": i + 1}))
        for i in range(spec)
    ]


def envelope(choices: list[Chunk], **fields: Any) -> Chunk:
    chunk: Chunk = {
        "id": "chatcmpl-abc123",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": choices,
    }
    chunk.update(fields)
    return chunk


def usage_body(prompt: int = 12, completion: int = 34) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }


def make_chunks(
    content: str | None = "Hello there!",
    *,
    n: int = 1,
    tool_calls: int | list[tuple[str, str]] = 0,
    refusal: str | None = None,
    function_call: tuple[str, str] | None = None,
    logprobs: bool = False,
    usage: bool = False,
    finish_reason: str | None = None,
) -> list[Chunk]:
    """One stream as OpenAI sends it: each choice's chunks in turn, then the usage chunk."""
    extra = {"usage": None} if usage else {}
    chunks = []
    for index in range(n):
        for choice in choice_events(
            index,
            content=content,
            refusal=refusal,
            tool_calls=tool_calls,
            function_call=function_call,
            logprobs=logprobs,
            finish_reason=finish_reason,
        ):
            chunks.append(envelope([choice], **extra))
    if usage:
        chunks.append(envelope([], usage=usage_body()))
    return chunks


def annotation_chunk(**results: Any) -> Chunk:
    """Azure's filter-results chunk: no choices, an empty envelope, and the `results` given."""
    return {"id": "", "object": "", "created": 0, "model": "", "choices": [], **results}


CONTENT_FILTER = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}
FILTERED = {**CONTENT_FILTER, "violence": {"filtered": True, "severity": "medium"}}


def prompt_filter_chunk() -> Chunk:
    """The chunk Azure sends first: the prompt's filter results, before any choice."""
    results = [{"prompt_index": 0, "content_filter_results": CONTENT_FILTER}]
    return annotation_chunk(prompt_filter_results=results)


def add_filter_results(choices: list[Chunk], rng: random.Random | None = None) -> None:
    """Azure's `content_filter_results` on each of `choices` (chunk choices): empty on the role
    and finish chunks, random (from chunk to chunk) when `rng` is given."""
    for choice in choices:
        if rng is not None:
            results: dict[str, Any] = rng.choice([{}, CONTENT_FILTER, FILTERED])
        elif "role" in choice["delta"] or not choice["delta"]:
            results = {}
        else:
            results = CONTENT_FILTER
        choice["content_filter_results"] = copy.deepcopy(results)


def azure_chunks(content: str | None = "Hello there!", **knobs: Any) -> list[Chunk]:
    """`make_chunks(content, **knobs)` as Azure OpenAI streams it: the prompt's filter results
    first, then per-choice filter results; with usage, the completion's filter results in a
    chunk of their own just before the usage chunk (never last, see `random_chunks`)."""
    chunks = make_chunks(content, **knobs)
    for chunk in chunks:
        add_filter_results(chunk["choices"])
    if knobs.get("usage"):
        chunks.insert(-1, annotation_chunk(content_filter_results=CONTENT_FILTER))
    return [prompt_filter_chunk(), *chunks]


def random_chunks(rng: random.Random, *, azure: bool | None = None) -> list[Chunk]:
    """A random stream: n choices interleaved, each with a random mix of what a choice carries;
    in a share of them (all when `azure`, none when False) Azure's filter results."""
    n = rng.choice([1, 1, 1, 2, 3])
    with_usage, with_logprobs = rng.random() < 0.6, rng.random() < 0.3
    azure = rng.random() < 0.25 if azure is None else azure
    queues = [_random_choice(index, rng, with_logprobs) for index in range(n)]
    if azure:
        for queue in queues:
            add_filter_results(queue, rng)
    extra: dict[str, Any] = {"usage": None} if with_usage else {}
    if rng.random() < 0.3:
        extra["obfuscation"] = "x" * rng.randint(1, 9)
    chunks = [envelope([queues[i].pop(0)], **extra) for i in range(n)]  # first appearances in order
    while any(queues):
        index = rng.choice([i for i, queue in enumerate(queues) if queue])
        choices = [queues[index].pop(0)]
        other = (index + 1) % n
        if other != index and queues[other] and rng.random() < 0.2:
            choices.append(queues[other].pop(0))  # some providers put several choices in a chunk
        if rng.random() < 0.05:
            chunks.append(annotation_chunk())  # never last: the SDK keeps the last fingerprint
        chunks.append(envelope(choices, **extra))
    if azure:
        chunks.insert(0, prompt_filter_chunk())
        if with_usage and rng.random() < 0.5:  # never last, as above
            chunks.append(annotation_chunk(content_filter_results=FILTERED))
    if with_usage:
        chunks.append(envelope([], usage=usage_body(rng.randint(1, 999), rng.randint(1, 999))))
    return chunks


def _random_choice(index: int, rng: random.Random, logprobs: bool) -> list[Chunk]:
    content = "".join(rng.choice(WORDS) for _ in range(rng.randint(0, 12)))
    refusal = "I can't help with that." if rng.random() < 0.15 else None
    return choice_events(
        index,
        content=content if rng.random() < 0.85 else None,
        refusal=refusal,
        tool_calls=rng.choice([0, 0, 1, 2, 3]),
        function_call=("legacy_fn", '{"a": 1}') if rng.random() < 0.05 else None,
        logprobs=logprobs,
        finish_reason=rng.choice([None, None, None, "length", "content_filter"]),
        rng=rng,
    )


def sse_bytes(payloads: list[Chunk], *, done: bool = True, line_end: str = "\n") -> bytes:
    """The wire form: `data: {json}` and a blank line for each payload, then `data: [DONE]`."""
    datas = [json.dumps(p, ensure_ascii=False) for p in payloads] + (["[DONE]"] if done else [])
    return "".join(f"data: {d}{line_end}{line_end}" for d in datas).encode()


def cut_at_random(data: bytes, rng: random.Random, pieces: int = 8) -> list[bytes]:
    cuts = sorted(rng.randint(0, len(data)) for _ in range(pieces))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def sdk_final_completion(chunks: list[Chunk]) -> dict[str, Any]:
    """What the SDK's stream accumulator makes of `chunks`, as a wire-format `chat.completion`.

    Chunks are built as the SDK's `Stream` builds them (`construct_type`, no validation). The
    dump drops only what the SDK's parser adds on top of the wire format: `parsed` on messages
    and `parsed_arguments` on tool calls. A `length` or `content_filter` finish makes
    `get_final_completion()` raise by design (it is for parsed outputs); the completion that
    the exception carries is the same accumulation.
    """
    state = ChatCompletionStreamState()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydantic warns when dumping unvalidated models
        for chunk in chunks:
            if chunk.get("object") == "":
                continue  # Azure's filter events, skipped as `chat.completions.stream()` does
            state.handle_chunk(construct_type(type_=ChatCompletionChunk, value=chunk))
        try:
            final: Any = state.get_final_completion()
        except (LengthFinishReasonError, ContentFilterFinishReasonError) as exc:
            final = exc.completion
        dumped: dict[str, Any] = final.to_dict(mode="json", warnings=False)
    for choice in dumped["choices"]:
        message = choice["message"]
        message.pop("parsed", None)
        for call in message.get("tool_calls") or []:
            call.get("function", {}).pop("parsed_arguments", None)
    return dumped


# Responses API streams


def response_object(status: str, output: list[Any] | None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "resp_123",
        "object": "response",
        "created_at": 1_700_000_000,
        "status": status,
        "model": "gpt-4o-mini-2024-07-18",
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": None,
    }
    body.update(fields)
    return body


def response_events(
    text: str = "Hello there!", *, call: tuple[str, str] | None = None, terminal: bool = True
) -> tuple[list[Chunk], dict[str, Any]]:
    """A Responses stream (a message, then maybe a function call) and its final response."""
    message_done = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }
    events: list[Chunk] = [
        {"type": "response.created", "response": response_object("in_progress", [])},
        {"type": "response.in_progress", "response": response_object("in_progress", [])},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**message_done, "status": "in_progress", "content": []},
        },
        {
            "type": "response.content_part.added",
            "output_index": 0,
            "content_index": 0,
            "item_id": "msg_1",
            "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []},
        },
    ]
    for piece in split_text(text, None):
        events.append(
            {
                "type": "response.output_text.delta",
                "output_index": 0,
                "content_index": 0,
                "item_id": "msg_1",
                "delta": piece,
                "logprobs": [],
            }
        )
    events += [
        {
            "type": "response.output_text.done",
            "output_index": 0,
            "content_index": 0,
            "item_id": "msg_1",
            "text": text,
            "logprobs": [],
        },
        {
            "type": "response.content_part.done",
            "output_index": 0,
            "content_index": 0,
            "item_id": "msg_1",
            "part": message_done["content"][0],
        },
        {"type": "response.output_item.done", "output_index": 0, "item": message_done},
    ]
    output = [message_done]
    if call is not None:
        name, arguments = call
        done = {
            "id": "fc_1",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_1",
            "name": name,
            "arguments": arguments,
        }
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": 1,
                "item": {**done, "status": "in_progress", "arguments": ""},
            }
        )
        for piece in split_text(arguments, None):
            events.append(
                {
                    "type": "response.function_call_arguments.delta",
                    "output_index": 1,
                    "item_id": "fc_1",
                    "delta": piece,
                }
            )
        events += [
            {
                "type": "response.function_call_arguments.done",
                "output_index": 1,
                "item_id": "fc_1",
                "arguments": arguments,
            },
            {"type": "response.output_item.done", "output_index": 1, "item": done},
        ]
        output.append(done)
    usage = {"input_tokens": 9, "output_tokens": 5, "total_tokens": 14}
    final = response_object("completed", output, usage=usage)
    if terminal:
        events.append({"type": "response.completed", "response": final})
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events, final


_LOGPROB = {"token": "See", "logprob": -0.1, "bytes": [83, 101, 101], "top_logprobs": []}
_CITATION = {
    "type": "url_citation",
    "start_index": 4,
    "end_index": 15,
    "url": "https://example.com",
    "title": "Example",
}


def _event(kind: str, where: dict[str, Any], **fields: Any) -> Chunk:
    return {"type": f"response.{kind}", **where, **fields}


def _item_events(kind: str) -> tuple[dict[str, Any], dict[str, Any], list[Chunk]]:
    """One output item of `kind` as a stream sends it: (added, done, the events between)."""
    if kind == "message":
        part = {"type": "output_text", "text": "See example.com", "annotations": [_CITATION]}
        done = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed"}
        done["content"] = [{**part, "logprobs": [_LOGPROB]}]
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        at = {"item_id": "msg_1", "content_index": 0}
        return (
            {**done, "status": "in_progress", "content": []},
            done,
            [
                _event("content_part.added", at, part=empty),
                _event("output_text.delta", at, delta="See", logprobs=[_LOGPROB]),
                _event("output_text.delta", at, delta=" example.com", logprobs=[]),
                _event(
                    "output_text.annotation.added", at, annotation_index=0, annotation=_CITATION
                ),
                _event("output_text.done", at, text=part["text"], logprobs=[_LOGPROB]),
                _event("content_part.done", at, part=done["content"][0]),
            ],
        )
    if kind == "reasoning":
        summary = {"type": "summary_text", "text": "Think hard."}
        thought = {"type": "reasoning_text", "text": "Two and two."}
        done = {"id": "rs_1", "type": "reasoning", "summary": [summary], "content": [thought]}
        at = {"item_id": "rs_1", "summary_index": 0}
        inside = {"item_id": "rs_1", "content_index": 0}
        return (
            {**done, "summary": [], "content": []},
            done,
            [
                _event("reasoning_summary_part.added", at, part={**summary, "text": ""}),
                _event("reasoning_summary_text.delta", at, delta="Think "),
                _event("reasoning_summary_text.delta", at, delta="hard."),
                _event("reasoning_summary_text.done", at, text="Think hard."),
                _event("reasoning_summary_part.done", at, part=summary),
                _event("content_part.added", inside, part={**thought, "text": ""}),
                _event("reasoning_text.delta", inside, delta="Two and "),
                _event("reasoning_text.delta", inside, delta="two."),
                _event("reasoning_text.done", inside, text="Two and two."),
                _event("content_part.done", inside, part=thought),
            ],
        )
    # a tool call whose one text field grows by deltas: (type, event prefix, field, its text)
    item_type, prefix, field, text = {
        "custom_tool_call": ("custom_tool_call", "custom_tool_call_input", "input", "SELECT 1"),
        "code_interpreter_call": (
            "code_interpreter_call", "code_interpreter_call_code", "code", "print(1+1)"
        ),
        "mcp_call": ("mcp_call", "mcp_call_arguments", "arguments", '{"q":"x"}'),
    }[kind]  # fmt: skip
    done = {"id": f"{kind}_1", "type": item_type, "status": "completed", field: text}
    at = {"item_id": done["id"]}
    return (
        {**done, "status": "in_progress", field: ""},
        done,
        [
            _event(f"{prefix}.delta", at, delta=text[:3]),
            _event(f"{prefix}.delta", at, delta=text[3:]),
            _event(f"{prefix}.done", at, **{field: text}),
        ],
    )


RESPONSE_ITEM_KINDS = (
    "message",
    "reasoning",
    "custom_tool_call",
    "code_interpreter_call",
    "mcp_call",
)


def response_item_stream(kind: str) -> tuple[list[Chunk], dict[str, Any]]:
    """A Responses stream of one output item of `kind` whose deltas build it (text with
    annotations and logprobs, reasoning with its summary, a custom tool call's input...), and
    its final response."""
    added, done, between = _item_events(kind)
    final = response_object("completed", [done])
    events: list[Chunk] = [
        {"type": "response.created", "response": response_object("in_progress", [])},
        {"type": "response.output_item.added", "output_index": 0, "item": added},
        *({**event, "output_index": 0} for event in between),
        {"type": "response.output_item.done", "output_index": 0, "item": done},
        {"type": "response.completed", "response": final},
    ]
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events, final


def chat_stream_recording() -> Recording:
    """A streamed chat call's recording that has only responded yet: feed it the wire."""
    rec = Recording(
        "POST",
        "/chat/completions",
        "",
        [],
        b'{"model": "gpt-4o-mini", "stream": true, "messages": []}',
        RequestContext(),
    )
    rec.respond(200, [("content-type", "text/event-stream")])
    return rec
