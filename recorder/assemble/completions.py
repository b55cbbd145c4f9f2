"""Reassemble a legacy `text_completion` stream into the `text_completion` it stands for.

The SDK has no accumulator for this endpoint; the rules are those of the chat assembler: the
envelope takes the first non-empty identity fields and the last non-null `usage`, each choice
(by `index`) concatenates its `text` and extends the four logprobs lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmtap.recorder.assemble.chat import Envelope, copy_json, is_index

_LOGPROBS_LISTS = ("tokens", "token_logprobs", "top_logprobs", "text_offset")


class CompletionsAssembler:
    """Feeds on parsed `text_completion` chunks; `result()` is the `text_completion`."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self._envelope = Envelope("text_completion")
        self._choices: dict[int, dict[str, Any]] = {}
        self._fed = False

    def feed(self, chunk: Mapping[str, Any]) -> None:
        """Take one chunk. Never raises: what cannot be used is noted in `problems`."""
        try:
            self._feed(chunk)
        except Exception as exc:  # a last resort: junk must never stop a recording
            self.problems.append(f"chunk not understood: {exc!r}")

    def result(self) -> dict[str, Any] | None:
        """The `text_completion`, or None if no chunk had a `choices` list."""
        if not self._fed:
            return None
        return self._envelope.result([self._choices[i] for i in sorted(self._choices)])

    def _feed(self, chunk: Mapping[str, Any]) -> None:
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if not isinstance(choices, list):
            self.problems.append(f"chunk without a choices list: {str(chunk)[:200]}")
            return
        self._fed = True
        self._envelope.feed(chunk)
        for choice in choices:
            self._feed_choice(choice)

    def _feed_choice(self, choice: Any) -> None:
        index = choice.get("index") if isinstance(choice, dict) else None
        if not is_index(index):
            self.problems.append(f"choice without an integer index: {str(choice)[:200]}")
            return
        snapshot = self._choices.get(index)
        if snapshot is None:
            snapshot = self._choices[index] = {
                "text": "",
                "index": index,
                "logprobs": None,
                "finish_reason": None,
            }
        text = choice.get("text")
        if isinstance(text, str):
            snapshot["text"] += text
        elif text is not None:
            self.problems.append(f"choice {index}: text is a {type(text).__name__}")
        if choice.get("finish_reason"):
            snapshot["finish_reason"] = choice["finish_reason"]
        self._feed_logprobs(snapshot, choice.get("logprobs"))
        for key, value in choice.items():  # provider extras, e.g. Azure content_filter_results
            if key not in snapshot:
                snapshot[key] = copy_json(value)

    def _feed_logprobs(self, snapshot: dict[str, Any], logprobs: Any) -> None:
        if logprobs is None:
            return
        if not isinstance(logprobs, dict):
            self.problems.append("logprobs is not an object")
            return
        current = snapshot["logprobs"]
        if current is None:
            current = snapshot["logprobs"] = {key: [] for key in _LOGPROBS_LISTS}
        for key, value in logprobs.items():
            if isinstance(value, list) and isinstance(current.get(key, []), list):
                current[key] = current.get(key, []) + copy_json(value)
            elif value is not None:
                self.problems.append(f"logprobs.{key} is not a list")
