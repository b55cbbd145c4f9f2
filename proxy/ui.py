"""The web UI at `/`: traces, one trace as a span tree and a conversation, experiments,
sessions and models.

Server-rendered with jinja2 (autoescape on: inputs and outputs are untrusted text) from
templates and static files that ship in the package: no build step, nothing fetched from
elsewhere. A Content-Security-Policy that allows only our own script backs up the escaping.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from llmtap.proxy.context import normalise_trace_id
from llmtap.proxy.conversation import pretty_json, readable, show_first_history
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
        views = {s["span_id"]: readable(s) for s in spans}
        show_first_history(spans, views)
        raws = raw_blocks([row.span for row in rows])
        return self.render("trace.html", info=info, rows=rows, views=views, raws=raws)

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
