"""Agent runs from the wire alone: tool calls, their results, and one trace per run.

A model call that answers with tool calls leaves them here. When a later request answers them
(ends with `tool` messages in chat, `function_call_output` items (or the outputs of custom
tools, computer use, shell and patch calls, and MCP approvals) in the Responses API, a legacy
`function` message, or smolagents' text form: the calls as assistant text and their results as
the user message after it), it joins that call's trace (SPEC section 3: only a call answering
tool calls joins; a new user turn, `previous_response_id` or not, is a trace of its own). The
trace gets one AGENT root span over the run's model calls, whose inputs are what the run began
with (the conversation the run's first calling request sent, kept from its call; when that is
not kept, the one the answering request carries, which may differ: a Swarm handoff swaps the
system message), whose status and outputs are those of the run's latest call (as MLflow's root
span), and a TOOL span per call: its name, arguments, result, and the time the client spent
between receiving the call and sending the result. A client that sends a `traceparent` keeps
its own structure: no root is made and no span is moved; each TOOL span goes beside the call
that asked for it.

Matching is scoped to the session when the client sends one, else to the experiment and the
key's fingerprint, so that two clients reusing ids like `call_1` never merge; a client that
names its session on some calls only is still followed, by the response its request names or
the conversation it carries (`_fallback`). Within a scope, two runs going at once may still
get the same ids (an upstream that numbers calls per answer): the response a request names
(`previous_response_id`) decides, else the conversation it carries, which starts with the whole
conversation the calling request sent. The memory is bounded (least recently used entries go
first) and lives in the writer process only.
"""

from __future__ import annotations

import ast
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import orjson

from llmtap.recorder.recording import Recording, new_span_id
from llmtap.recorder.records import Span, SpanType, Status

MEMORY = 50_000
CALLING_CONVERSATIONS = 2_000
"""Conversations of calls that asked for tools, kept for their run's AGENT root
(`AgentLinker._asked`): a run's results follow its call within the client's tool time."""
CALLING_CONVERSATION_BYTES = 16_384
"""The longest kept (as JSON): at most 2,000 x 16 KB = 32 MB; a question is some 100 bytes.
A longer one is left out: the root then shows the conversation the answering request carries
(a chained Responses run's, none)."""

CANDIDATES = 8
"""Calls kept per (scope, call id): runs going at once that got the same ids."""


@dataclass(frozen=True, slots=True)
class Caller:
    """A model call whose answer a later request may continue: where its span is."""

    trace_id: str
    span_id: str
    start_ns: int
    parent_id: str | None


@dataclass(frozen=True, slots=True)
class ToolCall:
    caller: Caller
    call_id: str
    name: str
    arguments: Any
    called_ns: int
    """When the client received the call: the end of the model call's response."""
    conversation: int
    """A hash of the whole conversation the calling request sent (`conversation_items`)."""
    conversation_length: int
    """How many entries it has: a request answering the call carries it as its start."""


@dataclass(slots=True)
class Links:
    """What linking adds to one request's batch."""

    trace_id: str | None = None
    parent_id: str | None = None
    spans: tuple[Span, ...] = ()
    reparent: tuple[tuple[str, str], ...] = ()
    """(span_id, new parent_id): earlier model calls moved under the AGENT root."""


class _Lru(OrderedDict[Any, Any]):
    def __init__(self, limit: int = MEMORY) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


def _scope(rec: Recording) -> tuple[str, str]:
    ctx = rec.context
    return (
        ctx.experiment,
        f"session:{ctx.session}" if ctx.session else f"key:{rec.key_fingerprint or '-'}",
    )


def _kept_in(rec: Recording) -> tuple[tuple[str, str], ...]:
    """Where a request's tool calls are kept: its scope, and a call made in a session under
    its key's sessions too, where a request of that key naming no session may find it."""
    own = _scope(rec)
    if not rec.context.session:
        return (own,)
    return own, (rec.context.experiment, f"sessions:{rec.key_fingerprint or '-'}")


def _fallback(rec: Recording) -> tuple[str, str]:
    """Where a request whose scope holds none of the calls it answers looks next, for a
    client that names its session on some calls only: a request in a session, among its
    key's calls made in none; a request in none, among its key's calls made in a session.
    What it finds there it joins only by the response it names or the conversation it
    carries (`_pick`'s strict rule), never as the latest call of that id: two runs of one
    key, one in a session and one not, reusing ids like `call_0`, stay apart."""
    ctx = rec.context
    kind = "key" if ctx.session else "sessions"
    return ctx.experiment, f"{kind}:{rec.key_fingerprint or '-'}"


_RESPONSES_CALLS: dict[str, tuple[str, str | None, str]] = {
    "function_call": ("call_id", None, "arguments"),
    "custom_tool_call": ("call_id", None, "input"),
    "computer_call": ("call_id", "computer", "action"),
    "local_shell_call": ("call_id", "local_shell", "action"),
    "shell_call": ("call_id", "shell", "action"),
    "apply_patch_call": ("call_id", "apply_patch", "operation"),
    "mcp_approval_request": ("id", None, "arguments"),
}
"""Responses output items the client answers, by type: the field holding the id its answer
names, the tool's name when the item has none of its own, and the field of its arguments.
(Hosted tools, such as web search or an `mcp_call`, run at OpenAI: nothing comes back.)"""

_RESPONSES_RESULTS: dict[str, tuple[str, str]] = {
    "function_call_output": ("call_id", "output"),
    "custom_tool_call_output": ("call_id", "output"),
    "computer_call_output": ("call_id", "output"),
    "local_shell_call_output": ("id", "output"),  # its `id` is the call's `call_id`
    "shell_call_output": ("call_id", "output"),
    "apply_patch_call_output": ("call_id", "output"),
    "mcp_approval_response": ("approval_request_id", "approve"),
}
"""The client's answers to those items, by type: the field naming the call, and its result."""

_SAME_TURN = frozenset({*_RESPONSES_CALLS, "reasoning"})
"""Responses input items of the turn whose results a request sends: a call, then its result
(OpenAI's function-calling guide appends them in pairs), reasoning before the calls."""


def _legacy_id(name: Any) -> str:
    """The legacy `functions` API has no call ids: a function's name stands for one."""
    return f"function:{name}"


_EXTRA_ROLES = frozenset({"user", "system", "developer"})
"""Roles of what a client may send along with tool results, before any assistant answers
them: pydantic-ai's `ToolReturn(content=...)` is a user message right after the result. The
wire cannot tell that from a new question after a tool whose result went to the user directly
(LangChain's `return_direct`, the Agents SDK's `stop_on_first_tool`): that question carries
the results to the model for the first time, so it answers the calls too (SPEC 3's rule), and
joins the run."""


_TEXT_CALLS = "Calling tools:\n"
"""How smolagents sends a model's tool calls back (an assistant message of text, the calls as
a Python list: `Calling tools:\n[{'id': 'call_1', 'type': 'function', ...}]`), and its results
as the user message after it: `Observation:\n...`, or `Call id: ...\nError:\n...` for a
tool that failed. No `tool` message is ever sent (its OpenAIServerModel, ToolCallingAgent)."""
_TEXT_RESULTS = ("Observation:\n", "Call id: ")
_TEXT_CALLS_AT_MOST = 1 << 20
"""Characters of smolagents' list of calls read at most: a longer one is not linked."""


def _texts(message: Any) -> list[str]:
    """The text of a chat message: its content string, or the text of its parts."""
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]


def _text_tool_results(messages: list[Any]) -> list[tuple[str, Any]]:
    """(call id, result) when `messages` end with smolagents' text form of a tool turn: an
    assistant message calling the tools in text, then the user message with their results
    (one text for all the calls of a turn: each of their TOOL spans shows it)."""
    if len(messages) < 2 or _role(messages[-1]) != "user" or _role(messages[-2]) != "assistant":
        return []
    results = [t for t in _texts(messages[-1]) if t.startswith(_TEXT_RESULTS)]
    calls = [t[t.index(_TEXT_CALLS) :] for t in _texts(messages[-2]) if _TEXT_CALLS in t]
    if not results or not calls:
        return []
    result = results[0].removeprefix("Observation:\n")
    return [(cid, result) for cid in _text_call_ids(calls[-1].removeprefix(_TEXT_CALLS))]


def _text_call_ids(listed: str) -> list[str]:
    """The ids of the calls in smolagents' Python list (`[{'id': 'call_1', ...}, ...]`), each
    call's own `id` only (an argument named `id` is no call's); none when it does not read."""
    if len(listed) > _TEXT_CALLS_AT_MOST:  # (the literal is parsed whole)
        return []
    try:
        calls = ast.literal_eval(listed.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return []
    if not isinstance(calls, list):
        return []
    ids = (c.get("id") for c in calls if isinstance(c, dict))
    return list(dict.fromkeys(i for i in ids if isinstance(i, str)))


_HISTORY = ("<CONVERSATION HISTORY>", "</CONVERSATION HISTORY>")
"""How the Agents SDK wraps the run so far for the agent a run hands off to, with
`RunConfig(nest_handoff_history=True)`: one message whose text numbers each earlier item, its
calls and their results as JSON (`2. {"call_id": ..., "output": ..., "type":
"function_call_output"}`), and no `function_call_output` item."""


def _nested_history_results(entries: list[Any]) -> list[tuple[str, Any]]:
    """(call id, result) for the results that end the Agents SDK's nested handoff history,
    when the request ends with it: the handoff's own, which the agent handed to answers."""
    if not entries or not isinstance(entries[-1], dict):
        return []
    for text in reversed(_texts(entries[-1])):
        start, end = text.rfind(_HISTORY[0]), text.rfind(_HISTORY[1])
        if start < 0 or end < start:
            continue
        found = []
        for line in reversed(text[start + len(_HISTORY[0]) : end].strip("\n").split("\n")):
            number, dot, item = line.partition(". ")
            if not (dot and number.isdigit() and item.startswith("{")):
                break
            try:
                parsed = orjson.loads(item)
            except orjson.JSONDecodeError:
                break
            if not _is_responses_result(parsed) or not isinstance(parsed.get("call_id"), str):
                break
            found.append((parsed["call_id"], parsed.get("output")))
        return found[::-1]
    return []


def _is_chat_result(message: Any) -> bool:
    return _role(message) in ("tool", "function")


def _is_responses_result(item: Any) -> bool:
    return _kind(item) in _RESPONSES_RESULTS


def _without_extras(entries: list[Any], is_result: Any) -> int:
    """Where the entries end once the extras sent along with tool results are left out
    (user, system or developer messages after a result, no assistant between); the whole list
    when no result comes before them (a new user turn)."""
    end = len(entries)
    while (
        end
        and _role(entries[end - 1]) in _EXTRA_ROLES
        and _kind(entries[end - 1])
        in (
            None,
            "message",
        )
    ):
        end -= 1
    return end if end < len(entries) and end and is_result(entries[end - 1]) else len(entries)


def tool_results(inputs: Any) -> list[tuple[str, Any]]:
    """(call id, result) for the tool results a chat or Responses request ends with (before
    what it sends along with them): those it answers now. Results further back are history: a
    new user turn after them starts a run of its own (its own trace), as SPEC section 3 has
    it."""
    if not isinstance(inputs, dict):
        return []
    found: list[tuple[str, Any]] = []
    messages = inputs.get("messages")
    end = _without_extras(messages, _is_chat_result) if isinstance(messages, list) else 0
    for i in range(end - 1, -1, -1):
        message = messages[i]  # type: ignore[index]
        role = message.get("role") if isinstance(message, dict) else None
        if role == "tool" and isinstance(message.get("tool_call_id"), str):
            found.append((message["tool_call_id"], message.get("content")))
        elif role == "function" and isinstance(message.get("name"), str):
            found.append((_legacy_id(message["name"]), message.get("content")))
        else:
            break
    if not found and isinstance(messages, list):
        found = (_text_tool_results(messages) or _nested_history_results(messages))[::-1]
    items = inputs.get("input")
    end = _without_extras(items, _is_responses_result) if isinstance(items, list) else 0
    for i in range(end - 1, -1, -1):
        item = items[i]  # type: ignore[index]
        kind = _kind(item)
        if kind in _SAME_TURN:  # the calls answered, as OpenAI's guide interleaves them
            continue
        fields = _RESPONSES_RESULTS.get(kind or "")
        if fields is None or not isinstance(item.get(fields[0]), str):
            break
        found.append((item[fields[0]], item.get(fields[1])))
    if not found and isinstance(items, list):
        found = _nested_history_results(items)[::-1]
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
            if not isinstance(call, dict) or not isinstance(call.get("id"), str):
                continue
            function, custom = call.get("function"), call.get("custom")
            if isinstance(function, dict):
                found.append((call["id"], str(function.get("name")), function.get("arguments")))
            elif isinstance(custom, dict):  # a custom (freeform) tool: its input is text
                found.append((call["id"], str(custom.get("name")), custom.get("input")))
        legacy = message.get("function_call") if isinstance(message, dict) else None
        if isinstance(legacy, dict) and isinstance(legacy.get("name"), str):
            found.append((_legacy_id(legacy["name"]), legacy["name"], legacy.get("arguments")))
    for item in outputs.get("output") or () if isinstance(outputs.get("output"), list) else ():
        fields = _RESPONSES_CALLS.get(_kind(item) or "")
        if fields is None:
            continue
        id_field, fixed_name, arguments = fields
        call_id = item.get(id_field)
        if isinstance(call_id, str):
            found.append((call_id, fixed_name or str(item.get("name")), item.get(arguments)))
    return found


def conversation_of(inputs: Any) -> list[Any] | None:
    """What a run began with, as a request answering tool calls carries it: in chat, the
    messages before the assistant message that made the calls; in the Responses API, the input
    items before the calls (and reasoning) of the turns its results end. The AGENT root's
    inputs. None when there is nothing to show."""
    if not isinstance(inputs, dict):
        return None
    messages = inputs.get("messages")
    if isinstance(messages, list):
        if _text_tool_results(messages):  # smolagents: the calls and results as text
            return messages[:-2]
        end = _without_extras(messages, _is_chat_result)
        while end and _role(messages[end - 1]) in ("tool", "function"):
            end -= 1
        if end and _role(messages[end - 1]) == "assistant":
            end -= 1
        return messages[:end]
    items = inputs.get("input")
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if isinstance(items, list):
        end = _without_extras(items, _is_responses_result)
        while end and (_kind(items[end - 1]) in _SAME_TURN or _is_responses_result(items[end - 1])):
            end -= 1
        return [_plain_item(item) for item in items[:end]]
    return None


def conversation_items(inputs: Any) -> list[Any] | None:
    """The whole conversation a request sent, in one form for chat and Responses (a string
    input as the message it stands for, message items as plain messages). A request answering
    a call's results carries the calling request's as its start, whatever came between (the
    call's own turn, reasoning, an assistant's words, results, extras): how runs going at once
    that got the same call ids are told apart."""
    if not isinstance(inputs, dict):
        return None
    messages = inputs.get("messages")
    if isinstance(messages, list):
        return messages
    items = inputs.get("input")
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if isinstance(items, list):
        return [_plain_item(item) for item in items]
    return None


def conversation_json(conversation: list[Any] | None) -> bytes:
    """The conversation as canonical JSON (sorted keys), b"" when empty or unwritable."""
    if not conversation:
        return b""
    try:
        return orjson.dumps(conversation, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # nested deeper than orjson writes
        return b""


def conversation_hash(conversation: list[Any] | None) -> int:
    text = conversation_json(conversation)
    return hash(text) if text else 0


def _role(message: Any) -> str | None:
    role = message.get("role") if isinstance(message, dict) else None
    return role if isinstance(role, str) else None  # (never a list a set could not hash)


def _kind(item: Any) -> str | None:
    kind = item.get("type") if isinstance(item, dict) else None
    return kind if isinstance(kind, str) else None


def _plain_item(item: Any) -> Any:
    """A message item as any client writes it: `"hi"`, `{"role", "content"}` and
    `{"type": "message", ...}` alike (the Agents SDK turns the first into the last)."""
    if isinstance(item, dict) and item.get("type") in (None, "message") and "role" in item:
        return {k: v for k, v in item.items() if k not in ("type", "id", "status")}
    return item


class AgentLinker:
    def __init__(self) -> None:
        self._calls: _Lru = _Lru()  # (scope, call id) -> (ToolCall, ...), the latest last
        # (scope, call id, the calling span) -> True once its TOOL span exists: an upstream
        # that gives every run the same ids (`call_1`) still gets a TOOL span in each run
        self._answered: _Lru = _Lru()
        self._responses: _Lru = _Lru()  # response id -> Caller
        self._roots: _Lru = _Lru()  # trace id -> the AGENT root Span
        self._under_root: _Lru = _Lru()  # trace id -> ids of the spans placed under its root
        # a call's span id -> (request field, JSON of the conversation it sent), when it asked
        # for tools: the answer may carry another (a Swarm handoff swaps the system message),
        # or none (a Responses run chained by `previous_response_id`)
        self._asked: _Lru = _Lru(CALLING_CONVERSATIONS)

    def link(self, rec: Recording, inputs: Any, explicit_trace: bool) -> Links:
        """Before the span is built: which trace this request joins, and the TOOL spans."""
        results = tool_results(inputs)
        if not results:
            return Links()  # SPEC 3: only a call answering tool calls joins their trace
        scope = _scope(rec)
        previous = inputs.get("previous_response_id")
        via: Caller | None = self._responses.get(previous) if isinstance(previous, str) else None
        # an id answered twice in one request is the latest turn's (an upstream numbering every
        # answer's call `call_0`, and a Responses input holding each turn's pairs)
        results = list(dict(results).items())
        starts = _Starts(inputs)  # its conversation's starts, hashed only when runs collide
        known: list[tuple[ToolCall, str, Any]] = []
        fallback = _fallback(rec)
        for cid, result in results:
            candidates: tuple[ToolCall, ...] | None = self._calls.get((scope, cid))
            if candidates:
                known.append((_pick(candidates, via, starts), cid, result))
            elif (elsewhere := self._calls.get((fallback, cid))) and (
                picked := _pick(elsewhere, via, starts, strict=True)
            ):
                known.append((picked, cid, result))
        callers = [call.caller for call, _, _ in known] or ([via] if via is not None else [])
        if not callers:
            return Links()
        if rec.context.parent_id is not None:
            return self._beside(rec, known)  # the client's own structure (a traceparent)
        trace_id = rec.trace_id if explicit_trace else callers[-1].trace_id
        root, reparent = self._root(trace_id, rec, callers, inputs)
        links = Links(trace_id=trace_id, parent_id=root.span_id, reparent=reparent)
        links.spans = (root, *self._tool_spans(rec, scope, known, trace_id, root.span_id))
        return links

    def settle(self, root: Span, latest: Span) -> Span:
        """The run's root as of its latest model call: that call's status (a run whose last
        call failed failed; one that recovered by a retry did not) and outputs."""
        settled = replace(root, status=latest.status, outputs=latest.outputs)
        self._roots.remember(root.trace_id, settled)
        return settled

    def _beside(self, rec: Recording, known: list[tuple[ToolCall, str, Any]]) -> Links:
        """A call with a `traceparent`: no root, nothing moved; each TOOL span beside the
        model call that asked for it (under that call's parent), in the client's trace."""
        spans = []
        for call, cid, result in known:
            caller = call.caller
            if caller.trace_id != rec.trace_id:
                continue  # asked for in another trace: not this trace's to show
            spans += self._tool_spans(
                rec, _scope(rec), [(call, cid, result)], rec.trace_id, caller.parent_id
            )
        return Links(trace_id=rec.trace_id, spans=tuple(spans))

    def _tool_spans(
        self,
        rec: Recording,
        scope: tuple[str, str],
        known: list[tuple[ToolCall, str, Any]],
        trace_id: str,
        parent_id: str | None,
    ) -> list[Span]:
        spans = []
        for call, cid, result in known:
            answered = (scope, cid, call.caller.span_id)
            if answered in self._answered:
                continue  # a result sent again (a retry): its TOOL span exists already
            self._answered.remember(answered, True)
            spans.append(
                Span(
                    span_id=new_span_id(),
                    trace_id=trace_id,
                    parent_id=parent_id,
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
                        "llm_span_id": call.caller.span_id,
                    },
                )
            )
        return spans

    def _root(
        self, trace_id: str, rec: Recording, callers: list[Caller], inputs: Any
    ) -> tuple[Span, tuple[tuple[str, str], ...]]:
        """The run's AGENT root, created on the first link, stretched to this call's end; the
        model calls that asked for the tools answered now move under it, if not there yet."""
        root: Span | None = self._roots.get(trace_id)
        mine = [c for c in callers if c.trace_id == trace_id]  # (named into another trace)
        end = rec.ended_ns or rec.started_ns
        if root is None:
            first = min(mine, key=lambda c: c.start_ns) if mine else None
            key, conversation = self._calling_conversation(first) or (
                "messages" if isinstance(inputs.get("messages"), list) else "input",
                conversation_of(inputs),
            )
            root = Span(
                span_id=new_span_id(),
                trace_id=trace_id,
                parent_id=first.parent_id if first is not None else None,
                name="agent run",
                span_type=SpanType.AGENT,
                start_time_ns=first.start_ns if first is not None else rec.started_ns,
                end_time_ns=end,
                status=Status(),
                inputs={key: conversation} if conversation else None,  # what the run began with
                outputs=None,
                attributes={"gen_ai.operation.name": "invoke_agent"},
            )
        under: set[str] = self._under_root.get(trace_id) or set()
        reparent = tuple(
            (c.span_id, root.span_id) for c in dict.fromkeys(mine) if c.span_id not in under
        )
        under.update(c.span_id for c in mine)
        under.add(rec.span_id)  # built under the root
        self._under_root.remember(trace_id, under)
        root = replace(root, end_time_ns=max(root.end_time_ns, end))
        self._roots.remember(trace_id, root)
        return root, reparent

    def _calling_conversation(self, caller: Caller | None) -> tuple[str, list[Any]] | None:
        """What the request that asked for the tools sent, when it is kept: the request field
        (`messages` or `input`) and the conversation."""
        kept = self._asked.get(caller.span_id) if caller is not None else None
        return (kept[0], orjson.loads(kept[1])) if kept else None

    def remember(self, rec: Recording, span: Span) -> None:
        """After the span is built: its tool calls and response id, for the requests to come."""
        calls = tool_calls(span.outputs)
        response_id = span.outputs.get("id") if isinstance(span.outputs, dict) else None
        linkable = span.name == "responses" and isinstance(response_id, str)
        if not calls and not linkable:
            return
        caller = Caller(span.trace_id, span.span_id, span.start_time_ns, span.parent_id)
        if calls:
            scopes = _kept_in(rec)
            items = conversation_items(span.inputs) or []
            text = conversation_json(items)
            conversation, length = (hash(text) if text else 0), len(items)
            # what the run began with, for its root: the answer may carry another or none
            if text and len(text) <= CALLING_CONVERSATION_BYTES:
                field = "messages" if isinstance(span.inputs.get("messages"), list) else "input"
                # kept as sent: `text`'s keys are sorted (for the hash), a root shown so read
                # `{"content": ..., "role": ...}`
                self._asked.remember(span.span_id, (field, orjson.dumps(items)))
            for cid, name, arguments in calls:
                call = ToolCall(
                    caller, cid, name, arguments, span.end_time_ns, conversation, length
                )
                for scope in scopes:
                    kept = self._calls.get((scope, cid)) or ()
                    self._calls.remember((scope, cid), (*kept[-(CANDIDATES - 1) :], call))
        if linkable:
            self._responses.remember(response_id, caller)


class _Starts:
    """A request's conversation and the hashes of its starts, made once per request (for all
    its call ids) and only when asked."""

    __slots__ = ("_inputs", "_items", "_hashes")

    def __init__(self, inputs: Any) -> None:
        self._inputs = inputs
        self._items: list[Any] | None = None
        self._hashes: dict[int, int] = {}

    def hash_of(self, length: int) -> int | None:
        """The hash of its first `length` entries, if it can answer a call asked with them:
        it holds two entries more at least, the call and its result (else None). Without
        this, a run's answer to its first call was taken for the answer to an earlier run's
        second call, asked with the very same conversation (the same question, ids numbered
        per answer, the same results)."""
        if self._items is None:
            self._items = conversation_items(self._inputs) or []
        if length + 2 > len(self._items):
            return None
        if length not in self._hashes:
            self._hashes[length] = conversation_hash(self._items[:length])
        return self._hashes[length]


def _pick(
    candidates: tuple[ToolCall, ...], via: Caller | None, starts: _Starts, strict: bool = False
) -> ToolCall | None:
    """Which of the calls with one id a request answers: the one the response it names made;
    else the one whose calling conversation this request starts with (the longest such: a
    run's earlier turns start it too, and so may another run's first turn, same prompt);
    else the latest. `strict`: only by the response named or the conversation, else None."""
    if len(candidates) == 1 and not strict:
        return candidates[0]
    if via is not None:
        for call in reversed(candidates):
            if call.caller.span_id == via.span_id:
                return call
    best: ToolCall | None = None
    for call in reversed(candidates):  # the latest first: it wins a tie
        length = call.conversation_length
        if not call.conversation or (best is not None and length <= best.conversation_length):
            continue
        if starts.hash_of(length) == call.conversation:
            best = call
    if best is None and not strict:
        return candidates[-1]
    return best
