"""Legacy Completions (`POST /v1/completions`) of the offline OpenAI simulator."""

from __future__ import annotations

from .simulator_chat import DONE, ERROR_EVENT, MALFORMED_EVENT, chunk_writer, int_param
from .simulator_text import (
    BadRequest,
    SSEStream,
    count_tokens,
    find_magic,
    legacy_top,
    make_id,
    text_pieces,
    token_logprob,
    word_pieces,
)


def _prompts(body: dict) -> list[str]:
    prompt = body.get("prompt")
    if prompt is None:
        raise BadRequest(
            "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"
        )
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) for p in prompt):
            return [" ".join(map(str, prompt))]
        out = []
        for p in prompt:
            if isinstance(p, str):
                out.append(p)
            elif isinstance(p, list):
                out.append(" ".join(map(str, p)))
            else:
                raise BadRequest("Invalid 'prompt'.", "prompt")
        return out
    raise BadRequest("Invalid 'prompt': expected a string or a list.", "prompt")


def _legacy_logprobs(tokens: list[str], top: int, offset0: int, first_null: int) -> dict:
    offsets, pos = [], offset0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {
        "tokens": tokens,
        "token_logprobs": [
            None if k < first_null else token_logprob(t) for k, t in enumerate(tokens)
        ],
        "top_logprobs": [
            None if k < first_null else legacy_top(t, top) for k, t in enumerate(tokens)
        ],
        "text_offset": offsets,
    }


def completion(body: dict, seq: int, created: int, forced: int | None) -> dict | SSEStream:
    prompts = _prompts(body)
    n = int_param(body, "n", 1, 1, 128) or 1
    top = int_param(body, "logprobs", None, 0, 5)
    limit = int_param(body, "max_tokens", 16, 0, 1 << 20)
    echo = bool(body.get("echo"))
    model = body["model"]
    magic = find_magic(" ".join(prompts))
    plans = []  # (index, prompt, pieces, finish)
    for pi, prompt in enumerate(prompts):
        for j in range(n):
            variant = f" You said: {prompt}" if j == 0 else f" (choice {j + 1}) You said: {prompt}"
            pieces = text_pieces(variant, forced)
            finish = "stop"
            if limit and limit < len(pieces):
                pieces, finish = pieces[:limit], "length"
            plans.append((pi * n + j, prompt, pieces, finish))
    prompt_tokens = sum(count_tokens(p) for p in prompts)
    comp_tokens = sum(len(p[2]) for p in plans)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": comp_tokens,
        "total_tokens": prompt_tokens + comp_tokens,
    }
    cid = "cmpl-" + make_id("cmpl", seq, 29)

    if not body.get("stream"):
        choices = []
        if magic != "EMPTY_CHOICES":
            for index, prompt, pieces, finish in plans:
                text = "".join(pieces)
                lp = None
                if top is not None:
                    if echo:
                        ptoks = word_pieces(prompt)
                        lp = _legacy_logprobs(ptoks + pieces, top, 0, 1 if ptoks else 0)
                    else:
                        lp = _legacy_logprobs(pieces, top, len(prompt), 0)
                choices.append(
                    {
                        "text": (prompt + text) if echo else text,
                        "index": index,
                        "logprobs": lp,
                        "finish_reason": finish,
                    }
                )
        return {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": usage,
        }

    opts = body.get("stream_options")
    include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
    if magic == "EMPTY_STREAM":
        return SSEStream(
            [DONE], terminal=True, error_event=ERROR_EVENT, malformed_event=MALFORMED_EVENT
        )

    # the envelope in OpenAI's key order: choices before model
    envelope = {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "choices": [],
        "model": model,
    }
    chunk = chunk_writer(envelope, include_usage)

    events: list[bytes] = []
    if magic == "EMPTY_CHOICES":
        events.append(chunk([]))
    per_choice = []
    for index, prompt, pieces, _ in plans:
        offset = len(prompt)
        items = []
        if echo:
            items.append((prompt, None if top is None else _legacy_logprobs([prompt], top, 0, 1)))
        for p in pieces:
            items.append((p, None if top is None else _legacy_logprobs([p], top, offset, 0)))
            offset += len(p)
        per_choice.append((index, items))
    steps = max((len(items) for _, items in per_choice), default=0)
    for s in range(steps):
        for index, items in per_choice:
            if s < len(items):
                text, lp = items[s]
                events.append(
                    chunk([{"text": text, "index": index, "logprobs": lp, "finish_reason": None}])
                )
                if magic == "ERROR_MID_STREAM":
                    events.append(ERROR_EVENT)
                    return SSEStream(
                        events,
                        terminal=False,
                        error_event=ERROR_EVENT,
                        malformed_event=MALFORMED_EVENT,
                    )
    for index, _, _, finish in plans:
        events.append(
            chunk([{"text": "", "index": index, "logprobs": None, "finish_reason": finish}])
        )
    if include_usage:
        events.append(chunk([], usage))
    events.append(DONE)
    return SSEStream(
        events, terminal=True, error_event=ERROR_EVENT, malformed_event=MALFORMED_EVENT
    )
