"""Reassemble a Responses API stream into the `response` object it stands for.

A finished stream ends with `response.completed`, `response.failed` or `response.incomplete`,
whose `response` is the answer, as the SDK's `ResponseStreamState` takes it (and, like the SDK,
we fill its `output` from the `response.output_item.done` items when it came without one).
A stream cut short has no such event; then the best response is rebuilt from the last lifecycle
snapshot (`response.created` / `queued` / `in_progress`) and the output items: done items as
sent, unfinished ones as their deltas built them, with status `incomplete` (or `failed` after
an `error` event).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from llmtap.recorder.assemble.chat import copy_json, is_index

_LIFECYCLE = frozenset({"response.created", "response.queued", "response.in_progress"})
_TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete"})
_UNFINISHED = frozenset({"queued", "in_progress", None})


class ResponsesAssembler:
    """Feeds on parsed Responses stream events; `result()` is the `response` object."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self._snapshot: dict[str, Any] | None = None
        self._terminal: dict[str, Any] | None = None
        self._error: dict[str, Any] | None = None
        self._items: dict[int, dict[str, Any]] = {}  # built from `added` and the deltas
        self._done: dict[int, Any] = {}  # as `response.output_item.done` sent them
        self._handlers: dict[str, Callable[[Mapping[str, Any]], None]] = {
            "response.output_item.added": self._item_added,
            "response.output_item.done": self._item_done,
            "response.content_part.added": self._part_added,
            "response.content_part.done": self._part_done,
            "response.output_text.delta": lambda e: self._append(e, "text"),
            "response.output_text.done": lambda e: self._set(e, "text"),
            "response.refusal.delta": lambda e: self._append(e, "refusal"),
            "response.refusal.done": lambda e: self._set(e, "refusal"),
            "response.function_call_arguments.delta": lambda e: self._append(e, "arguments"),
            "response.function_call_arguments.done": lambda e: self._set(e, "arguments"),
            "error": self._error_event,
        }

    def feed(self, chunk: Mapping[str, Any]) -> None:
        """Take one event. Never raises: what cannot be used is noted in `problems`."""
        try:
            self._feed(chunk)
        except Exception as exc:  # a last resort: junk must never stop a recording
            self.problems.append(f"event not understood: {exc!r}")

    def result(self) -> dict[str, Any] | None:
        """The terminal `response`, else the rebuilt one, else None if nothing usable came."""
        if self._terminal is not None:
            response = dict(self._terminal)
            if response.get("output") is None:
                response["output"] = self._output()
            return response
        if self._snapshot is None and not self._items and not self._done:
            return None
        response = dict(self._snapshot or {"object": "response"})
        response["output"] = self._output()
        if self._error is not None:
            response["status"] = "failed"
            response["error"] = self._error
        elif response.get("status") in _UNFINISHED:
            response["status"] = "incomplete"
        return response

    def _output(self) -> list[Any]:
        indexes = sorted(self._items.keys() | self._done.keys())
        return [self._done[i] if i in self._done else self._items[i] for i in indexes]

    def _feed(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type") if isinstance(event, dict) else None
        if not isinstance(kind, str):
            self.problems.append(f"event without a type: {str(event)[:200]}")
            return
        if kind in _LIFECYCLE or kind in _TERMINAL:
            response = event.get("response")
            if not isinstance(response, dict):
                self.problems.append(f"{kind} without a response object")
            elif kind in _TERMINAL:
                self._terminal = copy_json(response)
            else:
                self._snapshot = copy_json(response)
            return
        handler = self._handlers.get(kind)
        if handler is not None:
            handler(event)  # other events (reasoning, web search...) are summed up by `done`

    def _output_index(self, event: Mapping[str, Any]) -> int | None:
        index = event.get("output_index")
        if not is_index(index):
            self.problems.append(f"{event.get('type')} without an integer output_index")
            return None
        return index

    def _item_added(self, event: Mapping[str, Any]) -> None:
        index, item = self._output_index(event), event.get("item")
        if index is not None and isinstance(item, dict):
            self._items[index] = copy_json(item)

    def _item_done(self, event: Mapping[str, Any]) -> None:
        index = self._output_index(event)
        if index is not None and "item" in event:
            self._done[index] = copy_json(event["item"])

    def _part_added(self, event: Mapping[str, Any]) -> None:
        item, part = self._item(event), event.get("part")
        if item is not None and isinstance(part, dict):
            content = item.setdefault("content", [])
            if isinstance(content, list):
                content.append(copy_json(part))

    def _part_done(self, event: Mapping[str, Any]) -> None:
        part = self._part(event)
        if part is not None and isinstance(event.get("part"), dict):
            part.clear()
            part.update(copy_json(event["part"]))

    def _append(self, event: Mapping[str, Any], key: str) -> None:
        target = self._part(event) if key != "arguments" else self._item(event)
        delta = event.get("delta")
        if target is not None and isinstance(delta, str):
            previous = target.get(key)
            target[key] = (previous if isinstance(previous, str) else "") + delta

    def _set(self, event: Mapping[str, Any], key: str) -> None:
        target = self._part(event) if key != "arguments" else self._item(event)
        if target is not None and isinstance(event.get(key), str):
            target[key] = event[key]

    def _item(self, event: Mapping[str, Any]) -> dict[str, Any] | None:
        index = self._output_index(event)
        item = self._items.get(index) if index is not None else None
        if index is not None and item is None:
            self.problems.append(f"{event.get('type')} for output {index} before its item")
        return item

    def _part(self, event: Mapping[str, Any]) -> dict[str, Any] | None:
        item, index = self._item(event), event.get("content_index")
        content = item.get("content") if item is not None else None
        if not isinstance(content, list) or not is_index(index) or not 0 <= index < len(content):
            if item is not None:
                self.problems.append(f"{event.get('type')} for a content part never added")
            return None
        part = content[index]
        return part if isinstance(part, dict) else None

    def _error_event(self, event: Mapping[str, Any]) -> None:
        nested = event.get("error")
        source: Mapping[str, Any] = nested if isinstance(nested, dict) else event
        error = {
            key: copy_json(value)
            for key, value in source.items()
            if key in ("code", "message", "param")
        }
        self._error = error or {"message": str(event)[:200]}
