"""Assemblers: sans-io reassembly of a streamed answer into its non-streamed shape.

One per traced endpoint, all alike: `feed()` each parsed JSON `data:` payload (never `[DONE]`,
never an `{"error": ...}` payload: the caller filters those), then `result()` once. `feed()`
never raises, whatever it is given; what looked wrong is noted in `problems`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from llmtap.recorder.assemble.chat import ChatAssembler
from llmtap.recorder.assemble.completions import CompletionsAssembler
from llmtap.recorder.assemble.embeddings import EmbeddingsAssembler, decode_embeddings
from llmtap.recorder.assemble.responses import ResponsesAssembler


class Assembler(Protocol):
    problems: list[str]
    """What looked wrong in the payloads fed, for the span's attributes; empty when all was well."""

    def feed(self, chunk: Mapping[str, Any]) -> None: ...

    def result(self) -> dict[str, Any] | None:
        """The non-streamed shape, or None if nothing usable was fed."""
        ...


ASSEMBLERS: dict[str, Callable[[], Assembler]] = {
    "chat.completions": ChatAssembler,
    "completions": CompletionsAssembler,
    "embeddings": EmbeddingsAssembler,
    "responses": ResponsesAssembler,
}

__all__ = [
    "ASSEMBLERS",
    "Assembler",
    "ChatAssembler",
    "CompletionsAssembler",
    "EmbeddingsAssembler",
    "ResponsesAssembler",
    "decode_embeddings",
]
