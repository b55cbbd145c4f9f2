"""`llmtap models [NAME]` and `llmtap predict models:/NAME/VERSION INPUT`.

Both read the database named by --db whether or not a server runs; `predict` starts llmtap
in process (no port) in front of --upstream, so its calls are recorded into that database,
traced and linked to the version they ran, as a served call would be.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import click
import orjson

from llmtap.proxy.config import Settings
from llmtap.proxy.context import normalise_trace_id
from llmtap.proxy.predict import PredictError, Prediction, records_traces, run_prediction
from llmtap.proxy.setting_options import settings_options
from llmtap.recorder.inflight import settle
from llmtap.recorder.model_store import ModelReader, parse_model_uri
from llmtap.recorder.reader import NotAnLlmtapDatabase, TraceReader, open_for_reading


def require_database(db: str, first: str) -> None:
    """A ClickException unless `db` is a database llmtap wrote; `first` says how to make one.
    A foreign file would otherwise crash a query, or read as "nothing recorded yet".
    What a proxy had answered and not stored yet is stored first (`settle`)."""
    if os.path.exists(db):
        settle(db)
    try:
        conn = open_for_reading(db)
    except NotAnLlmtapDatabase as exc:
        raise click.ClickException(f"{exc}; pass --db with the file llmtap records into") from exc
    if conn is None:
        raise click.ClickException(f"no llmtap database at {db} (run {first} first, or pass --db)")
    conn.close()


def _reader(db: str) -> ModelReader:
    require_database(db, "`llmtap serve --log-models`")
    return ModelReader(db)


def _dumps(value: Any, indent: bool = True) -> str:
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
    return orjson.dumps(value, option=option).decode()


def _find_version(reader: ModelReader, ref: str) -> dict[str, Any] | None:
    """A version from `models:/NAME/VERSION`, `models:/m-ID` or `NAME/VERSION`."""
    uri = ref if ref.startswith("models:/") else f"models:/{ref}"
    try:
        name, version = parse_model_uri(uri)
    except ValueError:
        return None
    return reader.get_version(name, version)


def _resolve_trace(db: str, sent: str) -> str:
    """The stored id of the trace `sent` names, found as `GET /api/traces/{id}/models` and
    `llmtap trace` find it (as sent in llmtap-trace-id, stored, or a unique prefix of 4 or
    more); a ClickException when there is none, with the nearest ids."""
    traces = TraceReader(db)
    found = traces.resolve_id(normalise_trace_id(sent), sent)
    if found is None:
        raise no_trace(traces, sent)
    return found


def no_trace(reader: TraceReader, sent: str) -> click.ClickException:
    """The error for a trace id that names none, with the nearest ids."""
    near = reader.similar_ids(sent.lower())
    hint = f"; did you mean {', '.join(near)}?" if near else ""
    return click.ClickException(f"no trace with id {sent}{hint}")


def _short(value: Any, limit: int = 60) -> str:
    text = "" if value is None else value if isinstance(value, str) else _dumps(value, False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _print_models(models: list[dict[str, Any]]) -> None:
    if not models:
        click.echo("no models recorded yet (serve with --log-models)")
        return
    click.echo("\t".join(("name", "versions", "latest", "task", "model", "traces", "updated")))
    for m in models:
        latest = m["versions"][0] if m["versions"] else {}
        traces = sum(v["trace_count"] for v in m["versions"])
        cells = [m["name"], len(m["versions"]), m["latest_version"], latest.get("task")]
        cells += [latest.get("model"), traces, m["updated_time"]]
        click.echo("\t".join(str(c) for c in cells))


def _print_versions(model: dict[str, Any]) -> None:
    kind = "registered model" if model["registered"] else f"logged in {model['experiment']}"
    click.echo(f"{model['name']} ({kind})")
    click.echo("\t".join(("version", "model_id", "task", "model", "traces", "params", "template")))
    for v in model["versions"]:
        cells = [v["version"], v["model_id"], v["task"], v["model"], v["trace_count"]]
        cells += [_short(v["params"]), _short(v["prompt_template"])]
        click.echo("\t".join(str(c) for c in cells))


@click.command()
@click.argument("name", required=False)
@click.option(
    "--db",
    envvar="LLMTAP_DB",
    default="./llmtap.db",
    show_default=True,
    help="The llmtap database to read.",
)
@click.option("--trace", "trace_id", help="The model versions a trace's calls ran.")
@click.option("--json", "as_json", is_flag=True, help="JSON for scripts.")
def models(name: str | None, db: str, trace_id: str | None, as_json: bool) -> None:
    """Model records and their versions; NAME (or models:/NAME/VERSION) for one of them."""
    reader = _reader(db)
    if trace_id is not None:
        stored = _resolve_trace(db, trace_id)
        found: Any = {"trace_id": stored, "model_versions": reader.versions_of_trace(stored)}
        click.echo(_dumps(found))
        return
    if name is None:
        listed = reader.list_models()
        click.echo(_dumps({"models": listed})) if as_json else _print_models(listed)
        return
    model = reader.get_model(name)
    if model is not None:
        click.echo(_dumps(model)) if as_json else _print_versions(model)
        return
    version = _find_version(reader, name)
    if version is None:
        known = ", ".join(m["name"] for m in reader.list_models()) or "none yet"
        raise click.ClickException(f"no model {name} (models: {known})")
    version["traces"] = reader.traces_of(version["name"], version["version"], limit=20)
    click.echo(_dumps(version))


PREDICT_SETTINGS = (
    "mode",
    "log_traces",
    "replay_exhausted",
    "prices_file",
    "connect_timeout",
    "read_timeout",
)
"""The settings of `serve` that shape predict's calls besides --db and --upstream, each an
option of predict too, read as `serve` reads it: command line > LLMTAP_<NAME> > the --config
file > default. (The capture switches of models are not among them: a prediction links to
the version it ran and never makes one.)"""


@click.command()
@click.argument("model_uri")
@click.argument("input_text", metavar="INPUT")
@click.option(
    "--db",
    envvar="LLMTAP_DB",
    default="./llmtap.db",
    show_default=True,
    help="The llmtap database to read the version from and record the call into.",
)
@click.option(
    "--upstream",
    envvar="LLMTAP_UPSTREAM",
    default=Settings().upstream,
    show_default=True,
    help="The OpenAI-compatible API to call (the key comes from OPENAI_API_KEY).",
)
@click.option(
    "--json-input",
    is_flag=True,
    help='INPUT is JSON: a list of inputs (["a", "b"]), a list of chat messages, a dict of '
    'columns ({"content": "a"}, or a version\'s input_example) or a list of such records.',
)
@click.option(
    "--params",
    "params_json",
    metavar="JSON",
    help="Parameters laid over the version's, as MLflow's predict(params=...) takes them: "
    "'{\"temperature\": 0.9}'. Only the version's own parameters may be given.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print {predictions, model_uri, trace_ids} as JSON."
)
@settings_options(
    PREDICT_SETTINGS, "TOML file of settings, as serve's (--db, --upstream and the options below)."
)
def predict(
    model_uri: str,
    input_text: str,
    db: str,
    upstream: str,
    json_input: bool,
    params_json: str | None,
    as_json: bool,
    **settings_given: Any,
) -> None:
    """Run a recorded model version again with INPUT ('-' reads stdin), like MLflow's
    pyfunc.load_model(MODEL_URI).predict(INPUT); the call is recorded into --db.

    Prints the answer's text when there is one text prediction, else the predictions (one
    per input) as a JSON list."""
    reader = _reader(db)
    version = _find_version(reader, model_uri)
    if version is None:
        raise click.ClickException(f"no model version {model_uri} in {db} (see `llmtap models`)")
    # (`echo hi | llmtap predict ... -`: the line's end is the shell's, not the input's)
    text = _without_line_end(sys.stdin.read()) if input_text == "-" else input_text
    try:
        inputs = orjson.loads(text) if json_input else text
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="INPUT") from exc
    try:
        params = None if params_json is None else orjson.loads(params_json)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--params") from exc
    model = reader.get_model(version["name"]) or {}
    try:
        settings = Settings(
            upstream=upstream,
            db=db,
            port=0,
            log_models=True,  # so that the new call links to the version it ran
            registered_model_name=version["name"] if model.get("registered") else None,
            **settings_given,
        )
    except ValueError as exc:  # --upstream or --db from the file or environment
        raise click.UsageError(str(exc)) from exc
    try:
        result = asyncio.run(_predict_in_process(settings, version, inputs, params))
    except PredictError as exc:
        raise click.ClickException(f"{model_uri}: {exc}") from exc
    if as_json:
        payload = {"predictions": result.predictions, "model_uri": version["model_uri"]}
        click.echo(_dumps({**payload, "trace_ids": result.trace_ids}))
    elif len(result.predictions) == 1 and isinstance(result.predictions[0], str):
        click.echo(result.predictions[0])  # one answer reads best as itself
    else:
        click.echo(_dumps(result.predictions, indent=False))


async def _predict_in_process(
    settings: Settings, version: dict[str, Any], inputs: Any, params: Any
) -> Prediction:
    from llmtap.proxy.app import create_app

    app = create_app(settings, write_ahead=False)  # (one call, and the command exits)
    await app.startup()
    try:
        key = os.environ.get("OPENAI_API_KEY")
        headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
        traced = records_traces(settings)
        return await run_prediction(app, version, inputs, headers, params, traced=traced)
    finally:
        await app.shutdown()  # drains the writer: the calls are in the database


def _without_line_end(text: str) -> str:
    """Text read from stdin without the one line end that closes it."""
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text
