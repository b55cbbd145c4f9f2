"""Agent runs from the wire alone: tool calls, their results, and one trace per run.

A model call that answers with tool calls leaves them here. When a later request answers them
(ends with `tool` messages in chat, `function_call_output` items in the Responses API), or names
an earlier response (`previous_response_id`), it joins that call's trace; the trace gets one
AGENT root span over the run's model calls, and a TOOL span per call: its name, arguments,
result, and the time the client spent between receiving the call and sending the result.

Matching is scoped to the session when the client sends one, else to the experiment and the
key's fingerprint, so that two clients reusing ids like `call_1` never merge. The memory is
bounded (least recently used entries go first) and lives in the writer process only.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from llmtap.recorder.recording import Recording, new_span_id
from llmtap.recorder.records import Span, SpanType, Status

MEMORY = 50_000


@dataclass(frozen=True, slots=True)
class ToolCall:
    trace_id: str
    span_id: str
    call_id: str
    name: str
    arguments: Any
    called_ns: int
    """When the client received the call: the end of the model call's response."""


@dataclass(slots=True)
class Links:
    """What linking adds to one request's batch."""

    trace_id: str | None = None
    parent_id: str | None = None
    spans: tuple[Span, ...] = ()
    reparent: tuple[tuple[str, str], ...] = ()
    """(span_id, new parent_id): earlier model calls moved under the AGENT root."""


class _Lru(OrderedDict[Any, Any]):
    def remember(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > MEMORY:
            self.popitem(last=False)


def _scope(rec: Recording) -> tuple[str, str]:
    ctx = rec.context
    return (
        ctx.experiment,
        f"session:{ctx.session}" if ctx.session else f"key:{rec.key_fingerprint or '-'}",
    )


_SAME_TURN = frozenset({"function_call", "reasoning"})
"""Responses input items of the turn whose results a request sends: a call, then its result
(OpenAI's function-calling guide appends them in pairs), reasoning before the calls."""


def tool_results(inputs: Any) -> list[tuple[str, Any]]:
    """(call id, result) for the tool results a chat or Responses request ends with: those it
    answers now. Results further back are history: a new user turn after them starts a run of
    its own (its own trace), as SPEC section 3 has it."""
    if not isinstance(inputs, dict):
        return []
    found: list[tuple[str, Any]] = []
    messages = inputs.get("messages")
    for message in reversed(messages) if isinstance(messages, list) else ():
        if not (
            isinstance(message, dict)
            and message.get("role") == "tool"
            and isinstance(message.get("tool_call_id"), str)
        ):
            break
        found.append((message["tool_call_id"], message.get("content")))
    items = inputs.get("input")
    for item in reversed(items) if isinstance(items, list) else ():
        kind = item.get("type") if isinstance(item, dict) else None
        if kind in _SAME_TURN:  # the calls answered, as OpenAI's guide interleaves them
            continue
        if kind != "function_call_output" or not isinstance(item.get("call_id"), str):
            break
        found.append((item["call_id"], item.get("output")))
    found.reverse()
    return found


def tool_calls(outputs: Any) -> list[tuple[str, str, Any]]:
    """(call id, name, arguments) for each tool call in a chat or Responses answer."""
    if not isinstance(outputs, dict):
        return []
    found: list[tuple[str, str, Any]] = []
    for choice in outputs.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        for call in (message or {}).get("tool_calls") or () if isinstance(message, dict) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(call.get("id"), str):
                found.append((call["id"], str(function.get("name")), function.get("arguments")))
    for item in outputs.get("output") or () if isinstance(outputs.get("output"), list) else ():
        if (
            isinstance(item, dict)
            and item.get("type") == "function_call"
            and isinstance(item.get("call_id"), str)
        ):
            found.append((item["call_id"], str(item.get("name")), item.get("arguments")))
    return found


class AgentLinker:
    def __init__(self) -> None:
        self._calls: _Lru = _Lru()  # (scope, call id) -> ToolCall
        # (scope, call id, the calling span) -> True once its TOOL span exists: an upstream
        # that gives every run the same ids (`call_1`) still gets a TOOL span in each run
        self._answered: _Lru = _Lru()
        self._responses: _Lru = _Lru()  # response id -> (trace id, span id)
        self._roots: _Lru = _Lru()  # trace id -> the AGENT root Span
        self._first: _Lru = _Lru()  # trace id -> (span id, start ns) of its first call

    def link(self, rec: Recording, inputs: Any, explicit_trace: bool) -> Links:
        """Before the span is built: which trace this request joins, and the TOOL spans."""
        scope = _scope(rec)
        known: list[tuple[ToolCall, str, Any]] = []
        for cid, result in tool_results(inputs):
            call: ToolCall | None = self._calls.get((scope, cid))
            if call is not None:
                known.append((call, cid, result))
        previous = inputs.get("previous_response_id") if isinstance(inputs, dict) else None
        via_response: tuple[str, str] | None = (
            self._responses.get(previous) if isinstance(previous, str) else None
        )
        if known:
            joined = known[-1][0].trace_id
        elif via_response is not None:
            joined = via_response[0]
        else:
            return Links()
        trace_id = rec.trace_id if explicit_trace else joined
        root, reparent = self._root(trace_id, rec)
        links = Links(trace_id=trace_id, parent_id=root.span_id, reparent=reparent)
        spans = [root]
        for call, cid, result in known:
            answered = (scope, cid, call.span_id)
            if answered in self._answered:
                continue  # a result sent again (a retry): its TOOL span exists already
            self._answered.remember(answered, True)
            spans.append(
                Span(
                    span_id=new_span_id(),
                    trace_id=trace_id,
                    parent_id=root.span_id,
                    name=call.name,
                    span_type=SpanType.TOOL,
                    start_time_ns=call.called_ns,
                    end_time_ns=max(rec.started_ns, call.called_ns),
                    status=Status(),
                    inputs={"name": call.name, "arguments": call.arguments},
                    outputs=result,
                    attributes={
                        "tool_call_id": cid,
                        "gen_ai.operation.name": "execute_tool",
                        "gen_ai.tool.name": call.name,
                        "gen_ai.tool.call.id": cid,
                        "client_time_ms": round((rec.started_ns - call.called_ns) / 1e6, 3),
                        "llm_span_id": call.span_id,
                    },
                )
            )
        links.spans = tuple(spans)
        return links

    def _root(self, trace_id: str, rec: Recording) -> tuple[Span, tuple[tuple[str, str], ...]]:
        """The run's AGENT root, created on the first link, stretched to this call's end."""
        root: Span | None = self._roots.get(trace_id)
        reparent: tuple[tuple[str, str], ...] = ()
        end = rec.ended_ns or rec.started_ns
        if root is None:
            first_id, first_start, first_parent = self._first.get(
                trace_id, (None, rec.started_ns, rec.context.parent_id)
            )
            root = Span(
                span_id=new_span_id(),
                trace_id=trace_id,
                parent_id=first_parent,
                name="agent run",
                span_type=SpanType.AGENT,
                start_time_ns=first_start,
                end_time_ns=end,
                status=Status(),
                inputs=None,
                outputs=None,
                attributes={"gen_ai.operation.name": "invoke_agent"},
            )
            if first_id is not None:
                reparent = ((first_id, root.span_id),)
        root = replace(root, end_time_ns=max(root.end_time_ns, end))
        self._roots.remember(trace_id, root)
        return root, reparent

    def remember(self, rec: Recording, span: Span) -> None:
        """After the span is built: its tool calls and response id, for the requests to come."""
        scope = _scope(rec)
        calls = tool_calls(span.outputs)
        response_id = span.outputs.get("id") if isinstance(span.outputs, dict) else None
        linkable = span.name == "responses" and isinstance(response_id, str)
        # only a trace a later request can join needs its first call kept: one whose answer
        # calls tools or can be continued, or one the client names itself. Remembering every
        # trace held ~18 MB of plain chat traces per 50,000 for nothing.
        if (
            calls or linkable or rec.context.trace_id is not None
        ) and span.trace_id not in self._first:
            self._first.remember(span.trace_id, (span.span_id, span.start_time_ns, span.parent_id))
        ended = span.end_time_ns
        for cid, name, arguments in calls:
            self._calls.remember(
                (scope, cid), ToolCall(span.trace_id, span.span_id, cid, name, arguments, ended)
            )
        if linkable:
            self._responses.remember(response_id, (span.trace_id, span.span_id))
