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
from functools import partial
from typing import Any

from llmtap.recorder.assemble.chat import copy_json, is_index

_LIFECYCLE = frozenset({"response.created", "response.queued", "response.in_progress"})
_TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete"})
_UNFINISHED = frozenset({"queued", "in_progress", None})
_TEXTS: dict[str, tuple[str, str]] = {
    "response.output_text": ("part", "text"),
    "response.refusal": ("part", "refusal"),
    "response.reasoning_text": ("part", "text"),
    "response.reasoning_summary_text": ("summary", "text"),
    "response.function_call_arguments": ("item", "arguments"),
    "response.mcp_call_arguments": ("item", "arguments"),
    "response.custom_tool_call_input": ("item", "input"),
    "response.code_interpreter_call_code": ("item", "code"),
}
"""The texts that grow by deltas, by event name without its `.delta` / `.done`: where the text
lives (a content part, a reasoning summary part, the item itself) and its field, which is
also the field of the `.done` event that sends it whole (as openai/types/responses names
them)."""


class ResponsesAssembler:
    """Feeds on parsed Responses stream events; `result()` is the `response` object."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self._snapshot: dict[str, Any] | None = None
        self._terminal: dict[str, Any] | None = None
        self._error: dict[str, Any] | None = None
        self._items: dict[int, dict[str, Any]] = {}  # built from `added` and the deltas
        self._done: dict[int, Any] = {}  # as `response.output_item.done` sent them

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
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, event)

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

    def _add(self, event: Mapping[str, Any], field: str) -> None:
        """A part added to the item's `content` or reasoning `summary` list."""
        item, part = self._item(event), event.get("part")
        if item is not None and isinstance(part, dict):
            parts = item.setdefault(field, [])
            if isinstance(parts, list):
                parts.append(copy_json(part))

    def _replace(self, part: dict[str, Any] | None, event: Mapping[str, Any]) -> None:
        if part is not None and isinstance(event.get("part"), dict):
            part.clear()
            part.update(copy_json(event["part"]))

    def _append(self, event: Mapping[str, Any], where: str, key: str) -> None:
        target = _TARGETS[where](self, event)
        delta = event.get("delta")
        if target is not None and isinstance(delta, str):
            previous = target.get(key)
            target[key] = (previous if isinstance(previous, str) else "") + delta
            logprobs = event.get("logprobs")  # an output text's, token by token
            if isinstance(logprobs, list) and logprobs:
                kept = target.get("logprobs")
                target["logprobs"] = [*(kept if isinstance(kept, list) else ()), *logprobs]

    def _set(self, event: Mapping[str, Any], where: str, key: str) -> None:
        target = _TARGETS[where](self, event)
        if target is not None and isinstance(event.get(key), str):
            target[key] = event[key]

    def _annotation_added(self, event: Mapping[str, Any]) -> None:
        part, annotation = self._part(event), event.get("annotation")
        if part is None or not isinstance(annotation, dict):
            return
        annotations = part.get("annotations")
        if not isinstance(annotations, list):
            annotations = part["annotations"] = []
        index = event.get("annotation_index")
        if is_index(index) and index < len(annotations):  # sent again: the later one holds
            annotations[index] = copy_json(annotation)
        else:
            annotations.append(copy_json(annotation))

    def _item(self, event: Mapping[str, Any]) -> dict[str, Any] | None:
        index = self._output_index(event)
        item = self._items.get(index) if index is not None else None
        if index is not None and item is None:
            self.problems.append(f"{event.get('type')} for output {index} before its item")
        return item

    def _part(self, event: Mapping[str, Any]) -> dict[str, Any] | None:
        return self._listed(event, "content", "content_index")

    def _summary(self, event: Mapping[str, Any]) -> dict[str, Any] | None:
        return self._listed(event, "summary", "summary_index")

    def _listed(
        self, event: Mapping[str, Any], field: str, index_field: str
    ) -> dict[str, Any] | None:
        """The part at the event's index in the item's `field` list, or None (noted)."""
        item, index = self._item(event), event.get(index_field)
        parts = item.get(field) if item is not None else None
        if not isinstance(parts, list) or not is_index(index) or not 0 <= index < len(parts):
            if item is not None:
                self.problems.append(f"{event.get('type')} for a part never added")
            return None
        part = parts[index]
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


_Handler = Callable[[ResponsesAssembler, Mapping[str, Any]], None]
_HANDLERS: dict[str, _Handler] = {
    "response.output_item.added": ResponsesAssembler._item_added,
    "response.output_item.done": ResponsesAssembler._item_done,
    "response.content_part.added": lambda self, e: self._add(e, "content"),
    "response.content_part.done": lambda self, e: self._replace(self._part(e), e),
    "response.reasoning_summary_part.added": lambda self, e: self._add(e, "summary"),
    "response.reasoning_summary_part.done": lambda self, e: self._replace(self._summary(e), e),
    "response.output_text.annotation.added": ResponsesAssembler._annotation_added,
    "error": ResponsesAssembler._error_event,
}
"""What each event does; the others (web search progress...) are summed up by `done`."""
for _name, (_where, _key) in _TEXTS.items():
    _HANDLERS[f"{_name}.delta"] = partial(ResponsesAssembler._append, where=_where, key=_key)
    _HANDLERS[f"{_name}.done"] = partial(ResponsesAssembler._set, where=_where, key=_key)
_TARGETS: dict[str, Callable[[ResponsesAssembler, Mapping[str, Any]], dict[str, Any] | None]] = {
    "item": ResponsesAssembler._item,
    "part": ResponsesAssembler._part,
    "summary": ResponsesAssembler._summary,
}
