"""Embeddings and model listing of the offline OpenAI simulator."""

from __future__ import annotations

import base64
import hashlib
import math
import sys
from array import array
from functools import lru_cache

from .simulator_text import BadRequest, count_tokens

NATIVE_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}

MODELS = [
    ("gpt-4o", 1715367049, "system"),
    ("gpt-4o-mini", 1721172741, "system"),
    ("gpt-4.1", 1744316542, "system"),
    ("gpt-4.1-mini", 1744318173, "system"),
    ("gpt-4.1-nano", 1744321707, "system"),
    ("gpt-5", 1754425777, "system"),
    ("gpt-5-mini", 1754425928, "system"),
    ("o3-mini", 1737146383, "system"),
    ("gpt-3.5-turbo", 1677610602, "openai"),
    ("gpt-3.5-turbo-instruct", 1692901427, "system"),
    ("text-embedding-3-small", 1705948997, "system"),
    ("text-embedding-3-large", 1705953180, "system"),
    ("text-embedding-ada-002", 1671217299, "openai-internal"),
]
MODEL_OBJECTS = {m: {"id": m, "object": "model", "created": c, "owned_by": o} for m, c, o in MODELS}
MODEL_LIST = {"object": "list", "data": list(MODEL_OBJECTS.values())}


@lru_cache(maxsize=4096)
def vector(key: str, dims: int) -> tuple[list[float], str]:
    """A deterministic unit vector for ``key`` (float32 values) and its base64 encoding
    (little-endian float32, as the API sends it)."""
    raw = hashlib.shake_256(key.encode()).digest(4 * dims)
    ints = array("I", raw)
    if sys.byteorder == "big":
        ints.byteswap()
    scale = 1.0 / 2147483648.0
    values = [u * scale - 1.0 for u in ints]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    packed = array("f", [v / norm for v in values])
    floats = packed.tolist()
    if sys.byteorder == "big":
        packed.byteswap()
    return floats, base64.b64encode(packed.tobytes()).decode()


def embeddings(body: dict, seq: int, created: int, forced: int | None) -> dict:
    model = body["model"]
    value = body.get("input")
    if value is None:
        raise BadRequest(
            "Missing required parameter: 'input'.", "input", "missing_required_parameter"
        )
    keys: list[tuple[str, int]] = []  # (key, tokens)
    if isinstance(value, str):
        values: list = [value]
    elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        values = [value]
    elif isinstance(value, list) and value:
        values = value
    else:
        raise BadRequest(
            "'$.input' is invalid. Please check the API reference: "
            "https://platform.openai.com/docs/api-reference.",
            "input",
        )
    for v in values:
        if isinstance(v, str) and v:
            keys.append((v, count_tokens(v) or 1))
        elif isinstance(v, list) and v and all(isinstance(t, int) for t in v):
            keys.append(("tokens:" + ",".join(map(str, v)), len(v)))
        else:
            raise BadRequest(
                "'$.input' is invalid. Please check the API reference: "
                "https://platform.openai.com/docs/api-reference.",
                "input",
            )
    native = NATIVE_DIMENSIONS.get(model, 1536)
    dims = body.get("dimensions")
    if dims is None:
        dims = native
    elif model == "text-embedding-ada-002":
        raise BadRequest("This model does not support specifying dimensions.", "dimensions")
    elif not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= native:
        raise BadRequest(
            f"Invalid 'dimensions': expected an integer between 1 and {native}.", "dimensions"
        )
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise BadRequest(
            "Invalid 'encoding_format': expected 'float' or 'base64'.", "encoding_format"
        )
    slot = 1 if fmt == "base64" else 0
    data = [
        {"object": "embedding", "index": i, "embedding": vector(f"{model}\0{key}", dims)[slot]}
        for i, (key, _) in enumerate(keys)
    ]
    tokens = sum(t for _, t in keys)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
