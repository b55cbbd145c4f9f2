"""CompletionsAssembler: legacy `text_completion` streams, text and logprobs per choice."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from llmtap.recorder.assemble import ASSEMBLERS, CompletionsAssembler


def chunk(choices: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1_700_000_000,
        "model": "gpt-3.5-turbo-instruct",
        "system_fingerprint": None,
        "choices": choices,
        **fields,
    }


def piece(index: int, text: str, finish: str | None = None, offset: int = 0) -> dict[str, Any]:
    logprobs = {
        "tokens": [text],
        "token_logprobs": [-0.5],
        "top_logprobs": [{text: -0.5}],
        "text_offset": [offset],
    }
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}


def make_completion_chunks(n: int = 1, usage: bool = True) -> list[dict[str, Any]]:
    chunks = []
    for words in (["Once", " upon"], [" a", " time"]):
        for index in range(n):
            chunks += [chunk([piece(index, w, offset=i)]) for i, w in enumerate(words)]
    chunks += [chunk([piece(i, "", "length", 9)]) for i in range(n)]
    if usage:
        chunks.append(
            chunk([], usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
        )
    return chunks


def assemble(chunks: list[Any]) -> dict[str, Any] | None:
    assembler = CompletionsAssembler()
    for c in chunks:
        assembler.feed(c)
    return assembler.result()


def test_text_and_logprobs_are_concatenated_per_choice() -> None:
    result = assemble(make_completion_chunks(n=2))
    assert result == {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1_700_000_000,
        "model": "gpt-3.5-turbo-instruct",
        "system_fingerprint": None,
        "choices": [
            {
                "text": "Once upon a time",
                "index": i,
                "logprobs": {
                    "tokens": ["Once", " upon", " a", " time", ""],
                    "token_logprobs": [-0.5] * 5,
                    "top_logprobs": [
                        {"Once": -0.5},
                        {" upon": -0.5},
                        {" a": -0.5},
                        {" time": -0.5},
                        {"": -0.5},
                    ],
                    "text_offset": [0, 1, 0, 1, 9],
                },
                "finish_reason": "length",
            }
            for i in range(2)
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }


def test_without_logprobs_or_usage() -> None:
    chunks = [
        chunk([{"text": t, "index": 0, "logprobs": None, "finish_reason": None}])
        for t in ("a", "b")
    ]
    chunks.append(chunk([{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}]))
    result = assemble(chunks)
    assert result is not None
    assert result["choices"] == [
        {"text": "ab", "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]
    assert result["usage"] is None


def test_empty_stream_gives_none() -> None:
    assert assemble([]) is None
    assert ASSEMBLERS["completions"]().result() is None


def test_wrong_shapes_are_noted() -> None:
    assembler = CompletionsAssembler()
    assembler.feed({"choices": "x"})
    assembler.feed(chunk([{"index": "0", "text": "a"}, {"index": 0, "text": 5}]))
    assert len(assembler.problems) == 3


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1, 2) | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
choice_like = st.fixed_dictionaries(
    {},
    optional={
        "index": json_values,
        "text": json_values,
        "logprobs": json_values,
        "finish_reason": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries({"choices": st.lists(choice_like, max_size=3) | json_values})
        | json_values,
        max_size=6,
    )
)
def test_junk_never_raises(chunks: list[Any]) -> None:
    json.dumps(assemble(chunks))
