"""Terminal output of the reading commands: rich tables in a terminal, plain text when piped."""

from __future__ import annotations

from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from llmtap.proxy.conversation import Message, SpanView, readable, show_first_history


def _console(soft_wrap: bool = False) -> Console:
    return Console(soft_wrap=soft_wrap, highlight=False)


def _status(code: str) -> str:
    return f"[red]{code}[/red]" if code == "ERROR" else f"[green]{code}[/green]"


_TRACE_COLUMNS = (
    "trace_id",
    "time (UTC)",
    "name",
    "model",
    "status",
    "spans",
    "tokens",
    "ms",
    "experiment",
    "session",
)
_NUMERIC = {"spans", "tokens", "ms"}


def _trace_cells(t: dict[str, Any]) -> list[str]:
    return [
        t["trace_id"],
        t["request_time"].replace("T", " ")[:19],
        t.get("name") or "",
        t.get("model") or "",
        t["status"],
        str(t["span_count"]),
        str(t["usage"]["total_tokens"]),
        f"{t['execution_time_ms']:.1f}",
        t["experiment"],
        t["session"] or "",
    ]


def print_traces(rows: list[dict[str, Any]]) -> None:
    console = _console()
    if not rows:
        console.print("no traces recorded yet")
        return
    if not console.is_terminal:  # piped: one tab-separated line per trace, nothing cut
        print("\t".join(_TRACE_COLUMNS))
        for t in rows:
            print("\t".join(_trace_cells(t)))
        return
    table = Table(box=None, header_style="bold")
    for name in _TRACE_COLUMNS:
        table.add_column(name, no_wrap=True, justify="right" if name in _NUMERIC else "left")
    for t in rows:
        # recorded text is never markup: a session or a model named "[/x]" prints as it is
        cells: list[Text | str] = [Text(cell) for cell in _trace_cells(t)]
        cells[4] = _status(t["status"])
        table.add_row(*cells)
    console.print(table)


def _preview(value: Any, limit: int = 400) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= limit else text[:limit] + "…"


def _span_facts(attrs: dict[str, Any]) -> list[str]:
    """A span's model, whether it streamed and its tokens, as markup, each only when the span
    has it (an AGENT or TOOL span has none)."""
    facts = []
    if attrs.get("model") is not None:
        facts.append(f"model={escape(str(attrs['model']))}")
    if attrs.get("stream") is True:
        facts.append("streamed")
    usage = attrs.get("usage")
    if isinstance(usage, dict):
        tokens = f"tokens {usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} out"
        if usage.get("cache_read_input_tokens"):
            tokens += f" ({usage['cache_read_input_tokens']} in from cache)"
        facts.append(escape(tokens))
    return facts


MESSAGE_SHOWN = 600
"""Characters of one message's text `llmtap trace` prints (the whole is in `--json`)."""


def _cut(text: str, limit: int = MESSAGE_SHOWN) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _compact(arguments: str) -> str:
    """Tool arguments on one line: the view indents them for the page."""
    try:
        return orjson.dumps(orjson.loads(arguments)).decode()
    except orjson.JSONDecodeError:
        return arguments


def _indented(label: str, text: str) -> str:
    """`label: text`, its further lines indented under the text."""
    lines = _cut(text).splitlines() or [""]
    pad = " " * (len(label) + 4)
    return "\n".join([f"  {label}: {lines[0]}", *(pad + line for line in lines[1:])])


def _message_lines(m: Message) -> list[str]:
    role = m.role + (f" {m.name}" if m.name else "")
    if m.tool_call_id:
        role += f" [{m.tool_call_id}]"
    lines = []
    text = m.text + "".join(f" [{note}]" for note in m.notes)
    if text or not m.tool_calls:
        ends = f"  ({m.finish_reason})" if m.finish_reason and not m.tool_calls else ""
        lines.append(_indented(role, text) + ends)
    for call in m.tool_calls:
        lines.append(_indented(f"{m.role} -> {call.name}", _compact(call.arguments)))
    return lines


def _view_lines(view: SpanView) -> list[str]:
    """What a span said, as a conversation (see `llmtap.proxy.conversation`)."""
    if view.tool is not None:
        call = _indented(f"call {view.tool.name}", _compact(view.tool.arguments))
        return [call, _indented("result", view.tool_result or "")]
    if view.embedding:
        return [f"  {view.embedding}"]
    lines = []
    if view.history:
        earlier = len(view.history)
        lines.append(f"  ({earlier} earlier message{'s' * (earlier != 1)})")
    for m in view.messages:
        lines.extend(_message_lines(m))
    return lines


def _agent_view(span: dict[str, Any]) -> SpanView:
    """An agent run's root read as the call it sums up: what the run began with and its
    latest answer (the page shows these on its calls; a terminal reads the root first)."""
    inputs = span["inputs"] if isinstance(span["inputs"], dict) else {}
    endpoint = "chat.completions" if "messages" in inputs else "responses"
    as_call = {**span, "span_type": "CHAT_MODEL", "attributes": {"endpoint": endpoint}}
    return readable(as_call)


def print_trace(trace: dict[str, Any]) -> None:
    # long lines as they are: piped to grep or a file, rich cut recorded JSON at 80 columns
    console = _console(soft_wrap=True)
    info = trace["info"]
    # every recorded value escaped: it is text, not markup (an upstream's "bad value [/tools]")
    console.print(
        f"[bold]trace {info['trace_id']}[/bold]  {_status(info['status'])}  "
        f"{info['request_time']}  {info['execution_time_ms']:.1f} ms  "
        f"experiment={escape(info['experiment'])}  session={escape(info['session'] or '-')}  "
        f"tokens={info['usage']['total_tokens']}"
    )
    spans = trace["spans"]
    views = {
        s["span_id"]: _agent_view(s) if s["span_type"] == "AGENT" else readable(s) for s in spans
    }
    show_first_history(spans, views)
    for span in spans:
        ms = (span["end_time_ns"] - span["start_time_ns"]) / 1e6
        facts = "".join(f"  {fact}" for fact in _span_facts(span["attributes"]))
        console.print(
            f"\n[bold]{escape(span['name'])}[/bold] {span['span_type']} "
            f"{_status(span['status']['code'])} {ms:.1f} ms{facts}"
        )
        if span["status"]["message"]:
            console.print(f"  [red]{escape(span['status']['message'])}[/red]")
        try:
            lines = _view_lines(views[span["span_id"]])
        except Exception:  # noqa: BLE001 - a recorded body beyond the reading: its JSON
            lines = []
        if not lines:  # nothing read as a conversation (another endpoint): its JSON
            lines = [f"  in:  {_preview(span['inputs'])}", f"  out: {_preview(span['outputs'])}"]
        for line in lines:
            console.print(line, markup=False)
