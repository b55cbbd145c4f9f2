"""The web UI at `/`: the trace list, newest first, and one page per trace.

Server-rendered, no build step and nothing fetched from elsewhere.
"""

from __future__ import annotations

import html

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from llmtap.recorder.reader import TraceQuery, TraceReader

_STYLE = """
body{font:14px system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;width:100%}
td,th{padding:.35rem .6rem;border-bottom:1px solid #eee;text-align:left}
.ERROR{color:#b00}.OK{color:#080}pre{background:#f6f6f6;padding:.8rem;overflow:auto;white-space:pre-wrap}
a{color:#036}h1 a{text-decoration:none;color:inherit}
"""


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1><a href='/'>llmtap</a></h1>{body}</body></html>"
    )


def ui_routes(reader: TraceReader) -> list[Route]:
    async def trace_list(request: Request) -> HTMLResponse:
        try:
            traces = await run_in_threadpool(reader.list_traces, TraceQuery(limit=100))
        except FileNotFoundError:
            traces = []
        rows = "".join(
            f"<tr><td><a href='/traces/{t['trace_id']}'>{t['trace_id'][:12]}</a></td>"
            f"<td>{html.escape(t['request_time'])}</td><td>{html.escape(t['experiment'])}</td>"
            f"<td class='{t['status']}'>{t['status']}</td><td>{t['span_count']}</td>"
            f"<td>{t['usage']['total_tokens']}</td><td>{t['execution_time_ms']:.1f} ms</td></tr>"
            for t in traces
        )
        return _page(
            "llmtap traces",
            "<table><tr><th>trace</th><th>time</th><th>experiment</th>"
            f"<th>status</th><th>spans</th><th>tokens</th><th>latency</th></tr>{rows}</table>",
        )

    async def trace_page(request: Request) -> HTMLResponse:
        trace = await run_in_threadpool(reader.get_trace, request.path_params["trace_id"])
        if trace is None:
            return HTMLResponse("no such trace", status_code=404)
        spans = "".join(
            f"<h3>{html.escape(s['name'])} <span class='{s['status']['code']}'>"
            f"{s['status']['code']}</span></h3>"
            f"<pre>{html.escape(orjson.dumps(s, option=orjson.OPT_INDENT_2).decode())}</pre>"
            for s in trace["spans"]
        )
        return _page(f"trace {trace['info']['trace_id']}", spans)

    return [Route("/", trace_list), Route("/traces/{trace_id}", trace_page)]
