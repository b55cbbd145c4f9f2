"""Embeddings: base64 vectors decoded exactly as the OpenAI SDK decodes them."""

from __future__ import annotations

import array
import base64
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from openai._models import construct_type
from openai._types import omit
from openai.lib._parsing._embeddings import parse_embedding_response
from openai.types import CreateEmbeddingResponse

from llmtap.recorder.assemble import ASSEMBLERS, EmbeddingsAssembler, decode_embeddings


def response(*embeddings: Any) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)
        ],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }


def b64(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def sdk_decoded(body: dict[str, Any]) -> dict[str, Any]:
    """What `client.embeddings.create()` returns when it chose base64 for the user."""
    parsed = parse_embedding_response(
        construct_type(type_=CreateEmbeddingResponse, value=body), encoding_format=omit
    )
    return parsed.to_dict(mode="json")  # type: ignore[no-any-return]


floats32 = st.floats(width=32, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(floats32, min_size=1, max_size=16), min_size=1, max_size=3))
def test_base64_round_trip_equals_the_sdk(vectors: list[list[float]]) -> None:
    body = response(*(b64(v) for v in vectors))
    decoded = decode_embeddings(body)
    assert decoded == sdk_decoded(body)
    assert [item["embedding"] for item in decoded["data"]] == vectors


def test_float_vectors_pass_through() -> None:
    body = response([0.25, -1.5], [3.0])
    assert decode_embeddings(body) == body


def test_little_endian_float32() -> None:
    values = array.array("f", [1.0, -2.5])
    body = response(base64.b64encode(struct.pack("<2f", *values)).decode())
    assert decode_embeddings(body)["data"][0]["embedding"] == [1.0, -2.5]


def test_bad_base64_stays_as_it_came() -> None:
    body = response(base64.b64encode(b"abc").decode(), 5)  # 3 bytes is no float32 vector
    assert decode_embeddings(body) == body
    assert decode_embeddings({"data": "nope"}) == {"data": "nope"}


def test_assembler_keeps_the_last_payload() -> None:
    assembler = ASSEMBLERS["embeddings"]()
    assert assembler.result() is None
    assembler.feed(response([1.0]))
    assembler.feed(response(b64([2.0])))
    assert assembler.result() == response([2.0])


def test_decode_does_not_mutate_the_body() -> None:
    body = response(b64([1.0]))
    decode_embeddings(body)
    assert isinstance(body["data"][0]["embedding"], str)


@given(st.lists(st.none() | st.integers() | st.text() | st.dictionaries(st.text(), st.text())))
def test_junk_never_raises(payloads: list[Any]) -> None:
    assembler = EmbeddingsAssembler()
    for payload in payloads:
        assembler.feed(payload)
        assembler.feed({"data": payload})
    assembler.result()
