"""The `llmtap` command: serve, demo, and the reading commands (traces, trace, export)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click
import orjson
from click.core import ParameterSource

from llmtap.proxy import __version__
from llmtap.proxy.cli_models import models, no_trace, predict, require_database
from llmtap.proxy.config import Settings, setting_fields
from llmtap.proxy.context import normalise_trace_id
from llmtap.proxy.setting_options import settings_options
from llmtap.recorder.reader import TraceQuery, TraceReader

F = Callable[..., Any]


def _db_option(func: F) -> F:
    return click.option(
        "--db",
        envvar="LLMTAP_DB",
        default="./llmtap.db",
        show_default=True,
        help="The llmtap database to read.",
    )(func)


def _dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


@click.group()
@click.version_option(__version__, prog_name="llmtap")
def main() -> None:
    """llmtap: a local recording proxy for the OpenAI API."""


class SwitchValues(click.Command):
    """`--log-models=false` as well as `--no-log-models` (and `=true`, `=1`, `=yes`...): the
    capture switches read as MLflow's keyword arguments do, as well as flags."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        switches = {
            f"--{f.name.replace('_', '-')}" for f in setting_fields() if isinstance(f.default, bool)
        }
        return super().parse_args(ctx, [_as_flag(arg, switches) for arg in args])


def _as_flag(arg: str, switches: set[str]) -> str:
    name, equals, value = arg.partition("=")
    if not equals or name not in switches:
        return arg
    try:
        on = click.BOOL.convert(value, None, None)
    except click.BadParameter:
        return arg  # click says what is wrong with it
    return name if on else f"--no-{name[2:]}"


@main.command(cls=SwitchValues)
@settings_options()
@click.option(
    "--print-config",
    is_flag=True,
    help="Print the settings as resolved from flags, environment and file, then exit.",
)
def serve(print_config: bool, **params: Any) -> None:
    """Start the proxy."""
    from llmtap.proxy.serve import run_server
    from llmtap.proxy.upstream_client import shown_url

    _empty_from_environment(params, "replay_ignore_fields")
    try:
        settings = Settings(**params)
    except ValueError as exc:  # each option is checked already; this is the net under them
        raise click.UsageError(str(exc)) from exc
    if print_config:
        shown = {f.name: getattr(settings, f.name) for f in setting_fields()}
        shown["upstream"] = shown_url(settings.upstream)  # its password is no setting to show
        click.echo(_dumps(shown))
        return
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    run_server(settings)


def _empty_from_environment(params: dict[str, Any], name: str) -> None:
    """click reads an empty environment variable as unset; for a list whose empty value means
    something (`LLMTAP_REPLAY_IGNORE_FIELDS=""`: ignore no field) it is the value, above the
    file and the default as the environment always is."""
    source = click.get_current_context().get_parameter_source(name)
    below = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    if os.environ.get(f"LLMTAP_{name.upper()}") == "" and source in below:
        params[name] = ""


@main.command()
@_db_option
@click.option("--serve", "keep_serving", is_flag=True, help="Keep the UI up until Ctrl-C.")
def demo(db: str, keep_serving: bool) -> None:
    """Run the proxy in front of a built-in offline OpenAI simulator and make a few real calls."""
    from llmtap.proxy.demo import run_demo

    run_demo(db, keep_serving=keep_serving)


def _reader(db: str) -> TraceReader:
    require_database(db, "`llmtap serve` or `llmtap demo`")
    return TraceReader(db)


@main.command()
@_db_option
@click.option("--experiment", help="Only traces of this experiment.")
@click.option("--session", help="Only traces of this session.")
@click.option(
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="How many traces, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
def traces(db: str, experiment: str | None, session: str | None, limit: int, as_json: bool) -> None:
    """List recorded traces, newest first."""
    rows = _reader(db).list_traces(TraceQuery(experiment=experiment, session=session, limit=limit))
    if as_json:
        click.echo(_dumps({"traces": rows}))
        return
    filters = [f"{k} {v}" for k, v in (("experiment", experiment), ("session", session)) if v]
    if not rows and filters:  # not "no traces recorded yet": others may be
        click.echo(f"no traces in {' and '.join(filters)}")
        return
    from llmtap.proxy.tables import print_traces

    print_traces(rows)


def _find_trace(reader: TraceReader, wanted: str) -> dict[str, Any]:
    """The trace `wanted` names, else a ClickException with the nearest ids.

    The exact id comes first, in the form the proxy stored for what a client sent (a UUID,
    upper case hex or a run name), then a unique prefix of at least 4 characters, as with git.
    """
    found = reader.find_trace(normalise_trace_id(wanted), wanted)
    if found is None:
        raise no_trace(reader, wanted)
    return found


@main.command()
@_db_option
@click.argument("trace_id")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
def trace(db: str, trace_id: str, as_json: bool) -> None:
    """One trace with its spans: by its id, the llmtap-trace-id a client sent, or a prefix."""
    found = _find_trace(_reader(db), trace_id)
    if as_json:
        click.echo(_dumps(found))
        return
    from llmtap.proxy.tables import print_trace

    print_trace(found)


@main.command()
@_db_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "otlp"]),
    default="jsonl",
    show_default=True,
    help="jsonl: GET /api/traces/{id}'s shape; otlp: an OTLP/JSON ExportTraceServiceRequest.",
)
@click.option("--experiment", help="Only traces of this experiment.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    help="File to write (default: stdout).",
)
def export(db: str, fmt: str, experiment: str | None, output: str) -> None:
    """Traces as JSON lines, one trace per line: in the shape of GET /api/traces/{id}, or
    with --format otlp as the OpenTelemetry Collector's file exporter writes them."""
    reader = _reader(db)
    encode = _otlp_line if fmt == "otlp" else _same
    # opened once the database is known good, and always: an export with no traces leaves an
    # empty FILE, not the previous export's lines (click.File opens lazily, at the first write)
    try:
        out = click.open_file(output, "w")
    except OSError as exc:  # a folder that is not there, no permission
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from exc
    with out:
        for full in reader.each_trace(experiment):  # one snapshot, however long it takes
            out.write(orjson.dumps(encode(full), option=orjson.OPT_NON_STR_KEYS).decode() + "\n")


def _same(full: dict[str, Any]) -> dict[str, Any]:
    return full


def _otlp_line(full: dict[str, Any]) -> dict[str, Any]:
    from llmtap.recorder.otlp import export_request

    return export_request(full, __version__)


main.add_command(models)
main.add_command(predict)


@main.group()
def cassette() -> None:
    """Recordings as YAML files that live in git: export, import, check."""


@cassette.command("export")
@_db_option
@click.option("--experiment", help="Only exchanges of this experiment.")
@click.option(
    "--trace",
    "traces",
    multiple=True,
    help="Only exchanges of this trace (its id, the llmtap-trace-id sent, a prefix); repeatable.",
)
@click.option("--session", help="Only exchanges of the traces of this session.")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="The cassette file to write.",
)
def cassette_export(
    db: str, experiment: str | None, traces: tuple[str, ...], session: str | None, output: str
) -> None:
    """Write the database's recorded exchanges to a cassette: all, or those of an experiment,
    of some traces or of a session (a run seen go wrong, made a test fixture)."""
    from llmtap.recorder.cassettes import export_cassette

    reader = _reader(db)
    trace_ids = [_find_trace(reader, t)["info"]["trace_id"] for t in traces] if traces else None
    try:
        count = export_cassette(db, output, experiment, trace_ids=trace_ids, session=session)
    except OSError as exc:  # a folder that cannot be made, no permission
        raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from exc
    click.echo(f"{_exchanges(count)} written to {output}")


@cassette.command("import")
@_db_option
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def cassette_import(db: str, path: str) -> None:
    """Add a cassette's exchanges to the database (for replay)."""
    from llmtap.recorder.cassettes import import_cassette

    try:
        count = import_cassette(path, db)
    except (ValueError, KeyError) as exc:
        raise click.ClickException(f"{path}: not a valid llmtap cassette ({exc})") from exc
    click.echo(f"{_exchanges(count)} imported into {db}")


def _exchanges(count: int) -> str:
    return f"{count} exchange{'' if count == 1 else 's'}"


@cassette.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
def cassette_check(paths: tuple[str, ...]) -> None:
    """Fail when a cassette holds something that looks like a key or a secret header."""
    from pathlib import Path

    from llmtap.recorder.cassettes import find_secrets

    files = [
        p
        for path in paths
        for p in (sorted(Path(path).rglob("*.yaml")) if Path(path).is_dir() else [Path(path)])
    ]
    bad = 0
    for file in files:
        try:
            findings = find_secrets(file)
        except ValueError as exc:
            findings = [str(exc)]
        for finding in findings:
            click.echo(f"{file}: {finding}", err=True)
        bad += bool(findings)
    if bad:
        raise click.ClickException(f"{bad} of {len(files)} cassette(s) hold secrets")
    click.echo(f"{len(files)} cassette(s) clean")


if __name__ == "__main__":
    sys.exit(main())
