"""Terminal output of the reading commands: rich tables in a terminal, plain text when piped."""

from __future__ import annotations

from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text


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
    for span in trace["spans"]:
        ms = (span["end_time_ns"] - span["start_time_ns"]) / 1e6
        facts = "".join(f"  {fact}" for fact in _span_facts(span["attributes"]))
        console.print(
            f"\n[bold]{escape(span['name'])}[/bold] {span['span_type']} "
            f"{_status(span['status']['code'])} {ms:.1f} ms{facts}"
        )
        if span["status"]["message"]:
            console.print(f"  [red]{escape(span['status']['message'])}[/red]")
        console.print(f"  in:  {_preview(span['inputs'])}", markup=False)
        console.print(f"  out: {_preview(span['outputs'])}", markup=False)
