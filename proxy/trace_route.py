"""`TRACE_ID`, the path parameter of a trace's routes (`/api/traces/...`, `/traces/...`): a
trace's id, or the name a client sent in llmtap-trace-id, which may hold slashes
(`eval/run-1`), as `{trace_id:path}` allows; never empty and never ending in a slash, so that
`/api/traces/` and `/api/traces/ID/` are still redirected (to `/api/traces`, `/api/traces/ID`),
as Starlette redirects a path that no route matches."""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor


class _TraceIdConvertor(Convertor[str]):
    regex = ".*[^/]"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("trace_id", _TraceIdConvertor())
TRACE_ID = "{trace_id:trace_id}"
