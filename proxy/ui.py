"""The web UI at `/`: traces, one trace as a span tree and a conversation, experiments,
sessions and models.

Server-rendered with jinja2 (autoescape on: inputs and outputs are untrusted text) from
templates and static files that ship in the package: no build step, nothing fetched from
elsewhere. A Content-Security-Policy that allows only our own script backs up the escaping.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from llmtap.proxy.context import normalise_trace_id
from llmtap.proxy.trace_route import TRACE_ID
from llmtap.proxy.ui_queries import TraceFilter, UiQueries, bounded_int
from llmtap.recorder.reader import TraceReader

_HERE = Path(__file__).parent
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
# inline style attributes carry the waterfall's geometry; scripts come only from /static
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
SESSIONS_PAGE = 100

log = logging.getLogger("llmtap.ui")


def pretty_json(value: Any) -> str:
    return orjson.dumps(
        value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str
    ).decode()


RAW_SHOWN = 64_000
"""Characters of one span's JSON block the trace page holds, while the page is within
`RAW_PAGE`; past it, `RAW_SHOWN_PAST_PAGE`. An agent sends its whole conversation with every
call, so a page holding each call's whole JSON grows as the square of the run (164 MB of HTML
for 1,000 calls, seconds to build); the whole of every span is in `/api/traces/{id}`."""

RAW_PAGE = 4_000_000
RAW_SHOWN_PAST_PAGE = 2_000

HISTORY_SHOWN = 10
"""Earlier messages a later call of a trace shows (the latest of them): the calls above on the
page showed the others as they happened."""


@dataclass(frozen=True, slots=True)
class RawJson:
    """One of a span's JSON blocks on the trace page: its first characters, and how many more."""

    label: str
    text: str
    more: int


def raw_blocks(spans: list[dict[str, Any]]) -> dict[str, list[RawJson]]:
    """Each span's request, response and attributes as indented JSON, cut to `RAW_SHOWN`
    characters a block, and to `RAW_SHOWN_PAST_PAGE` once the page holds `RAW_PAGE`."""
    blocks: dict[str, list[RawJson]] = {}
    held = 0
    for span in spans:
        limit = RAW_SHOWN if held < RAW_PAGE else RAW_SHOWN_PAST_PAGE
        found = [
            _cut(label, span.get(key), limit)
            for label, key in (
                ("Request JSON", "inputs"),
                ("Response JSON", "outputs"),
                ("Attributes", "attributes"),
            )
            if key == "attributes" or span.get(key) is not None
        ]
        blocks[span["span_id"]] = found
        held += sum(len(b.text) for b in found)
    return blocks


def _cut(label: str, value: Any, limit: int) -> RawJson:
    text = pretty_json(value)
    if len(text) <= limit:
        return RawJson(label, text, 0)
    return RawJson(label, text[:limit], len(text) - limit)


def format_ms(ms: float | None) -> str:
    if ms is None:
        return ""
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.1f} ms"


def format_cost(value: float | None) -> str:
    """Dollars with enough decimals to show small per-call costs: $0.000355, $1.25."""
    if value is None:
        return ""
    if value <= 0:
        return "$0"
    if value >= 0.01:
        return f"${value:.2f}"
    decimals = min(12, 2 - math.floor(math.log10(value)))  # three significant digits
    return f"${value:.{decimals}f}".rstrip("0")


def short_time(iso: str | None) -> str:
    """`2025-01-02T03:04:05.678Z` as `2025-01-02 03:04:05`."""
    return (iso or "").replace("T", " ")[:19]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.ChainableUndefined,  # absent attributes render as nothing
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(json=pretty_json, ms=format_ms, cost=format_cost, short_time=short_time)
    env.globals["history_shown"] = HISTORY_SHOWN
    return env


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The few static files, read once; a fixed table leaves no path to traverse."""
    folder = _HERE / "static"
    return {
        p.name: (p.read_bytes(), _STATIC_TYPES[p.suffix])
        for p in folder.iterdir()
        if p.suffix in _STATIC_TYPES
    }


# ------------------------------------------------------------------ span tree and waterfall


@dataclass(frozen=True, slots=True)
class TreeRow:
    """One span in the tree: its depth, and its bar on the waterfall in percent of the trace."""

    span: dict[str, Any]
    depth: int
    left: float
    width: float
    duration_ms: float


def span_tree(spans: list[dict[str, Any]], start_ns: int, end_ns: int) -> list[TreeRow]:
    """Depth-first, children by start time; a span whose parent is not here is a root."""
    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for s in spans:
        parent = s["parent_id"] if s["parent_id"] in ids else None
        children.setdefault(parent, []).append(s)
    total = max(end_ns - start_ns, 1)
    rows: list[TreeRow] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda s: s["start_time_ns"]):
            left = 100 * (s["start_time_ns"] - start_ns) / total
            width = max(100 * (s["end_time_ns"] - s["start_time_ns"]) / total, 0.4)
            rows.append(
                TreeRow(
                    s,
                    depth,
                    round(left, 3),
                    round(min(width, 100 - left), 3) or 0.4,
                    (s["end_time_ns"] - s["start_time_ns"]) / 1e6,
                )
            )
            if depth < 50:  # a parent cycle in hand-written data must not recurse forever
                walk(s["span_id"], depth + 1)

    walk(None, 0)
    return rows


# ------------------------------------------------------------------ conversations


@dataclass(slots=True)
class ToolCallView:
    name: str
    arguments: str
    call_id: str = ""


@dataclass(slots=True)
class Message:
    """One turn of a conversation as the page shows it, whatever API it came from."""

    role: str
    text: str = ""
    notes: list[str] = field(default_factory=list)
    """Parts that are not text (images, audio, files), named rather than shown."""
    tool_calls: list[ToolCallView] = field(default_factory=list)
    tool_call_id: str = ""
    name: str = ""
    output: bool = False
    """True for what the model answered, False for what the client sent."""
    finish_reason: str = ""


@dataclass(slots=True)
class SpanView:
    """What the trace page shows of one span besides its raw JSON."""

    messages: list[Message] = field(default_factory=list)
    history: list[Message] = field(default_factory=list)
    """Input messages up to the last assistant turn: what earlier spans already showed."""
    tool: ToolCallView | None = None
    tool_result: str | None = None
    embedding: str = ""
    error: str = ""
    raws: list[RawJson] = field(default_factory=list)
    """The span's JSON blocks (`raw_blocks`)."""


def pretty_arguments(arguments: Any) -> str:
    """Tool arguments arrive as a JSON string: indent it when it parses, else keep it as sent."""
    if isinstance(arguments, str):
        try:
            return pretty_json(orjson.loads(arguments))
        except orjson.JSONDecodeError:
            return arguments
    return pretty_json(arguments)


def _text_and_notes(content: Any) -> tuple[str, list[str]]:
    """Text of a message's content (a string or a list of parts) and names of other parts."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        return pretty_json(content), []
    texts, notes = [], []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part, dict) and part.get("type") == "refusal":
            texts.append(f"(refused) {part.get('refusal', '')}")
        elif isinstance(part, dict):
            notes.append(str(part.get("type") or "part"))
    return "\n\n".join(texts), notes


def _calls(items: Any) -> list[ToolCallView]:
    calls = []
    for call in items if isinstance(items, list) else []:
        if isinstance(call, dict):
            function = call.get("function")
            function = function if isinstance(function, dict) else {}
            calls.append(
                ToolCallView(
                    str(function.get("name") or call.get("type") or "?"),
                    pretty_arguments(function.get("arguments", "")),
                    str(call.get("id") or ""),
                )
            )
    return calls


def chat_message(m: Any, output: bool = False, finish_reason: str = "") -> Message:
    if not isinstance(m, dict):
        return Message("?", pretty_json(m), output=output)
    text, notes = _text_and_notes(m.get("content"))
    if m.get("refusal"):
        text = f"{text}\n(refused) {m['refusal']}".strip()
    calls = _calls(m.get("tool_calls"))
    legacy = m.get("function_call")
    if isinstance(legacy, dict):
        calls.append(
            ToolCallView(str(legacy.get("name")), pretty_arguments(legacy.get("arguments", "")))
        )
    return Message(
        str(m.get("role") or "?"),
        text,
        notes,
        calls,
        str(m.get("tool_call_id") or ""),
        str(m.get("name") or ""),
        output,
        finish_reason,
    )


def response_item(item: Any, output: bool) -> Message:
    """One Responses API input or output item."""
    if isinstance(item, str):
        return Message("user", item, output=output)
    if not isinstance(item, dict):
        return Message("?", pretty_json(item), output=output)
    kind = item.get("type") or "message"
    if kind == "message":
        text, notes = _text_and_notes(item.get("content"))
        return Message(str(item.get("role") or "assistant"), text, notes, output=output)
    if kind == "function_call":
        call = ToolCallView(
            str(item.get("name")),
            pretty_arguments(item.get("arguments", "")),
            str(item.get("call_id") or ""),
        )
        return Message("assistant", tool_calls=[call], output=output)
    if kind == "function_call_output":
        text, _ = _text_and_notes(item.get("output"))
        return Message("tool", text, tool_call_id=str(item.get("call_id") or ""), output=output)
    if kind == "reasoning":
        summary, _ = _text_and_notes(item.get("summary"))
        return Message("reasoning", summary, output=output)
    return Message(str(kind), pretty_json(item), output=output)


def _choices(outputs: Any) -> list[dict[str, Any]]:
    """An answer's choices that are objects (whatever else a broken upstream put there)."""
    choices = outputs.get("choices") if isinstance(outputs, dict) else None
    return [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []


def _chat(inputs: dict[str, Any], outputs: Any) -> list[Message]:
    given = inputs.get("messages")
    messages = [chat_message(m) for m in (given if isinstance(given, list) else [given])]
    for choice in _choices(outputs):
        messages.append(
            chat_message(choice.get("message"), True, str(choice.get("finish_reason") or ""))
        )
    return messages


def _completion(inputs: dict[str, Any], outputs: Any) -> list[Message]:
    prompt = inputs.get("prompt")
    messages = [Message("prompt", prompt if isinstance(prompt, str) else pretty_json(prompt))]
    for choice in _choices(outputs):
        messages.append(
            Message(
                "completion",
                str(choice.get("text") or ""),
                output=True,
                finish_reason=str(choice.get("finish_reason") or ""),
            )
        )
    return messages


def _responses(inputs: dict[str, Any], outputs: Any) -> list[Message]:
    messages = [Message("system", inputs["instructions"])] if inputs.get("instructions") else []
    given = inputs.get("input")
    items: Iterable[Any] = given if isinstance(given, list) else [given] if given else []
    messages.extend(response_item(i, False) for i in items)
    produced = outputs.get("output") if isinstance(outputs, dict) else None
    messages.extend(
        response_item(i, True) for i in (produced if isinstance(produced, list) else [])
    )
    return messages


def _embedding(inputs: dict[str, Any], outputs: Any) -> str:
    given = inputs.get("input")
    # a list of strings or of token arrays is a batch; one token array is one input
    batched = isinstance(given, list) and bool(given) and not isinstance(given[0], int)
    count = len(given) if batched and isinstance(given, list) else 1
    data = outputs.get("data") if isinstance(outputs, dict) else None
    vector = data[0].get("embedding") if data and isinstance(data[0], dict) else None
    dims = f", {len(vector)} dimensions" if isinstance(vector, list) else ""
    return f"{count} input{'s' * (count != 1)} embedded{dims}"


def conversation(span: dict[str, Any]) -> SpanView:
    """The readable side of a span: messages for model calls, name and arguments for tools."""
    inputs, outputs, view = span["inputs"], span["outputs"], SpanView()
    if span["status"]["code"] == "ERROR":
        error = outputs.get("error") if isinstance(outputs, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        view.error = str(message or span["status"]["message"] or "failed")
    if span["span_type"] == "TOOL" and isinstance(inputs, dict):
        view.tool = ToolCallView(
            str(inputs.get("name")),
            pretty_arguments(inputs.get("arguments")),
            str(span["attributes"].get("tool_call_id") or ""),
        )
        view.tool_result = (
            outputs if isinstance(outputs, str) or outputs is None else pretty_json(outputs)
        )
        return view
    if not isinstance(inputs, dict) or span["span_type"] == "AGENT":
        return view  # (an agent run's root: its calls below show its conversation)
    endpoint = span["attributes"].get("endpoint") or span["name"]
    if endpoint == "embeddings":
        view.embedding = _embedding(inputs, None if view.error else outputs)
    elif endpoint == "responses":
        view.history, view.messages = split_history(_responses(inputs, outputs))
    elif endpoint == "completions":
        view.messages = _completion(inputs, outputs)
    elif "messages" in inputs:
        view.history, view.messages = split_history(_chat(inputs, outputs))
    return view


def _show_first_history(spans: list[dict[str, Any]], views: dict[str, SpanView]) -> None:
    """The trace's first model call shows the turns it was sent in full: no span before it
    showed them (a conversation a client sends whole, or the first call of an agent run)."""
    for span in sorted(spans, key=lambda s: s["start_time_ns"]):
        view = views[span["span_id"]]
        if view.messages or view.history:
            view.messages, view.history = [*view.history, *view.messages], []
            return


def _readable(span: dict[str, Any]) -> SpanView:
    """`conversation`, or for a span whose recorded bodies are beyond it, the span's JSON
    alone (the page shows that too): a broken answer never breaks the trace's page."""
    try:
        return conversation(span)
    except Exception:  # noqa: BLE001 - logged, and the page still renders
        log.exception("a span's conversation could not be shown: %s", span.get("span_id"))
        return SpanView()


def split_history(messages: list[Message]) -> tuple[list[Message], list[Message]]:
    """Earlier turns the client sent back, and what is new in this call (from the last
    assistant turn it sent on), so an agent's fifth call does not repeat four calls' text."""
    last = max(
        (i for i, m in enumerate(messages) if m.role == "assistant" and not m.output), default=-1
    )
    if last <= 0:
        return [], messages
    return messages[:last], messages[last:]


# ------------------------------------------------------------------ pages


class Pages:
    """Renders the UI's pages from the store; every database call runs in the thread pool."""

    def __init__(self, reader: TraceReader) -> None:
        self.reader = reader
        self.queries = UiQueries(reader.path)
        self.env = _environment()
        self.static = _static_files()

    def render(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(db=str(self.reader.path), **context)
        return HTMLResponse(html, status_code=status_code, headers=_HEADERS)

    def problem(self, status_code: int, title: str, message: str) -> HTMLResponse:
        return self.render("problem.html", status_code, title=title, message=message)

    async def trace_list(self, request: Request) -> HTMLResponse:
        try:
            flt = TraceFilter.from_params(request.query_params)
        except ValueError as exc:
            return self.problem(400, "Bad filter", str(exc))
        return await run_in_threadpool(self._trace_list, flt)

    def _trace_list(self, flt: TraceFilter) -> HTMLResponse:
        traces, more = self.queries.traces(flt)
        names = self.queries.experiment_names()
        return self.render(
            "traces.html",
            traces=traces,
            flt=flt,
            more=more,
            experiments=names,
            newer=_link("/", {**flt.active(), "limit": flt.limit, "offset": flt.offset - flt.limit})
            if flt.offset
            else None,
            older=_link("/", {**flt.active(), "limit": flt.limit, "offset": flt.offset + flt.limit})
            if more
            else None,
            filter_link=lambda **extra: _link("/", {**flt.active(), **extra}),
        )

    async def trace_page(self, request: Request) -> HTMLResponse:
        # built whole in the thread pool: a long agent run's page is seconds of work, which on
        # the event loop held up every request the proxy was forwarding
        return await run_in_threadpool(self._trace_page, request.path_params["trace_id"])

    def _trace_page(self, trace_id: str) -> HTMLResponse:
        # the id a client sent in llmtap-trace-id finds its trace, as the stored id does
        trace = self.reader.find_trace(normalise_trace_id(trace_id), trace_id)
        if trace is None:
            return self.problem(404, "No such trace", f"There is no trace with id {trace_id}.")
        info, spans = trace["info"], trace["spans"]
        rows = span_tree(spans, info["start_time_ns"], info["end_time_ns"])
        views = {s["span_id"]: _readable(s) for s in spans}
        _show_first_history(spans, views)
        for span_id, blocks in raw_blocks([row.span for row in rows]).items():
            views[span_id].raws = blocks
        return self.render("trace.html", info=info, rows=rows, views=views)

    async def experiments(self, request: Request) -> HTMLResponse:
        rows = await run_in_threadpool(self.queries.experiments)
        return self.render("experiments.html", rows=rows, link=_link)

    async def sessions(self, request: Request) -> HTMLResponse:
        try:
            offset = bounded_int(request.query_params.get("offset"), 0, 0, 1 << 62, "offset")
        except ValueError as exc:
            return self.problem(400, "Bad offset", str(exc))
        rows, more = await run_in_threadpool(self.queries.sessions, SESSIONS_PAGE, offset)
        return self.render(
            "sessions.html",
            rows=rows,
            link=_link,
            newer=_link("/sessions", {"offset": offset - SESSIONS_PAGE}) if offset else None,
            older=_link("/sessions", {"offset": offset + SESSIONS_PAGE}) if more else None,
        )

    async def models(self, request: Request) -> HTMLResponse:
        tables = await run_in_threadpool(self.queries.model_tables)
        return self.render("models.html", tables=[t for t in tables if t.rows])

    async def static_file(self, request: Request) -> Response:
        found = self.static.get(request.path_params["name"])
        if found is None:
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(found[0], media_type=found[1], headers={"Cache-Control": "max-age=300"})


def _link(path: str, params: dict[str, Any]) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "") and v != 0 or k == "limit"}
    return f"{path}?{urlencode(kept)}" if kept else path


def _no_database(pages: Pages, page: Callable[[Request], Awaitable[Response]]) -> Any:
    """A missing database file is an empty store, not a server error."""

    async def endpoint(request: Request) -> Response:
        try:
            return await page(request)
        except FileNotFoundError:
            return pages.render("empty.html")

    return endpoint


def ui_routes(reader: TraceReader) -> list[Route]:
    pages = Pages(reader)
    guarded = {
        "/": pages.trace_list,
        f"/traces/{TRACE_ID}": pages.trace_page,
        "/experiments": pages.experiments,
        "/sessions": pages.sessions,
        "/models": pages.models,
    }
    routes = [Route(path, _no_database(pages, page)) for path, page in guarded.items()]
    return [*routes, Route("/static/{name}", pages.static_file)]
