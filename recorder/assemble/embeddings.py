"""Embeddings responses, with base64 vectors decoded as the OpenAI SDK decodes them.

The SDK asks for `encoding_format: "base64"` behind the user's back and turns each vector back
into floats (little-endian float32), so the floats are what the user saw and what we record.
Embeddings are never streamed; `EmbeddingsAssembler` exists so that every endpoint has one.
"""

from __future__ import annotations

import array
import base64
import binascii
import sys
from collections.abc import Mapping
from typing import Any


def decode_embeddings(body: Mapping[str, Any]) -> dict[str, Any]:
    """The response with each base64 `embedding` turned into a list of floats; never raises.

    Float vectors pass through; a vector that is not valid base64 float32 stays as it came.
    """
    out = dict(body)
    data = body.get("data")
    if isinstance(data, list):
        out["data"] = [_decoded_item(item) for item in data]
    return out


def _decoded_item(item: Any) -> Any:
    if not isinstance(item, dict) or not isinstance(item.get("embedding"), str):
        return item
    vector = _floats(item["embedding"])
    return item if vector is None else {**item, "embedding": vector}


def _floats(encoded: str) -> list[float] | None:
    try:
        raw = base64.b64decode(encoded)  # not strict, as the SDK
        values = array.array("f", raw)  # ValueError unless a whole number of float32s
    except (binascii.Error, ValueError):
        return None
    if sys.byteorder == "big":
        values.byteswap()  # the wire is little-endian
    return values.tolist()


class EmbeddingsAssembler:
    """Keeps the last payload fed; `result()` is it with its vectors decoded."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self._body: Mapping[str, Any] | None = None

    def feed(self, chunk: Mapping[str, Any]) -> None:
        """Take the response body. Never raises."""
        if isinstance(chunk, dict):
            self._body = chunk
        else:
            self.problems.append(f"payload is a {type(chunk).__name__}, not an object")

    def result(self) -> dict[str, Any] | None:
        """The decoded response, or None if nothing usable was fed."""
        if self._body is None:
            return None
        try:
            return decode_embeddings(self._body)
        except Exception as exc:  # a last resort: junk must never stop a recording
            self.problems.append(f"payload not understood: {exc!r}")
            return dict(self._body)
