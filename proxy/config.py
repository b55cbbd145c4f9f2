"""Settings: the one source of option names, defaults and help text.

`llmtap serve` turns every field into a click option with `envvar="LLMTAP_<NAME>"`, and the
TOML file given by `--config` fills click's `default_map`; click then resolves
command line > environment > file > default, which is SPEC section 1's order.
`config.example.toml` is checked against these fields by a test.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from llmtap.recorder.records import Mode


def _option(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


def replay_speed(timing: str) -> float | None:
    """None for instant replay, else the factor to divide recorded delays by."""
    if timing == "instant":
        return None
    if timing == "recorded":
        return 1.0
    try:
        factor = float(timing)
    except ValueError:
        raise ValueError(
            f"replay_timing must be instant, recorded or a speed factor, not {timing!r}"
        ) from None
    if factor <= 0:
        raise ValueError("replay_timing speed factor must be positive")
    return factor


def _check_upstream(url: str) -> None:
    # `127.0.0.1:8000/v1` (no scheme) is the usual slip: said at start, not as a 502 per call
    from llmtap.proxy.upstream_client import shown_url  # (its module imports much more)

    url = url.strip()  # (as Settings keeps it)
    shown = shown_url(url)  # never its password, in a message printed at start
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise ValueError(f"upstream must be an http:// or https:// URL, not {shown!r}")
    try:  # a port past 65535 or not a number, an unclosed IPv6 bracket: at start too
        parts = urlsplit(url)
        parts.port  # noqa: B018 - read for the ValueError it raises
    except ValueError as exc:
        raise ValueError(f"upstream {shown!r} is not a URL llmtap can use: {exc}") from None
    if not parts.hostname:
        raise ValueError(f"upstream {shown!r} names no host")


def _check_db(path: str) -> None:
    # `--db "$DB"` with DB unset, or `:memory:`: SQLite then records into a private database
    # that is gone at exit, and nothing said so
    if not path.strip() or path.strip() == ":memory:":
        raise ValueError(f"db must name a file, not {path!r}")
    if Path(path).is_dir():
        raise ValueError(f"db must name a file, not the folder {path!r}")


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = _option("127.0.0.1", "Address to listen on (loopback by default).")
    port: int = _option(8787, "Port to listen on (0 picks a free one).", low=0, high=65535)
    allowed_hosts: str = _option(
        "",
        "Comma-separated host names llmtap answers to besides 127.0.0.1, localhost, [::1], "
        "0.0.0.0 and --host (a name you put in front of it), * for any. A request with another "
        "Host gets 403 (DNS rebinding). Listening beyond loopback, Host is checked only when "
        "this is set.",
    )
    upstream: str = _option(
        "https://api.openai.com/v1",
        "Base URL of the OpenAI-compatible API to forward to.",
        check=_check_upstream,
    )
    db: str = _option(
        "./llmtap.db", "SQLite file that holds traces, models and exchanges.", check=_check_db
    )
    mode: Mode = _option(
        Mode.RECORD, "record | replay | auto | off", choices=[m.value for m in Mode]
    )
    log_traces: bool = _option(True, "Record traces.")
    log_models: bool = _option(False, "Record model records (one version per configuration).")
    log_model_signatures: bool = _option(
        False, "With log_models: store the input/output signature inferred from traffic."
    )
    log_input_examples: bool = _option(
        False, "With log_models: store the first request's inputs as the input example."
    )
    registered_model_name: str | None = _option(
        None, "With log_models: register model versions under this name."
    )
    stream_usage: bool = _option(
        True,
        "Ask the upstream for token usage on streams that do not request it; the extra "
        "usage is removed from what the client receives.",
    )
    prices_file: str | None = _option(
        None,
        "TOML or JSON file of prices per 1M tokens ({model = {input, cached_input, "
        "output}}) laid over the built-in table.",
    )
    replay_ignore_fields: str = _option(
        # fields that say who asks or what to keep, never what to answer: a test run that tags
        # its calls differently still replays ("" to match on every field)
        "user,metadata,store,safety_identifier,prompt_cache_key",
        "Comma-separated top-level request fields replay matching ignores (by default those that "
        "never change an answer: user, metadata, store, safety_identifier, prompt_cache_key; "
        '"" for none).',
    )
    replay_exhausted: str = _option(
        "repeat",
        "When the recordings of a request are used up: repeat the last, or miss.",
        choices=["repeat", "miss"],
    )
    replay_timing: str = _option(
        "instant",
        "Replay streams instantly, at the recorded pace, or at a speed factor (2 = twice as fast).",
        check=replay_speed,
    )
    max_body_size: int = _option(
        32 * 1024 * 1024, "Largest request body accepted, in bytes (larger gets 413).", low=1
    )
    connect_timeout: float = _option(
        10.0, "Seconds to wait for a connection to the upstream.", above=0
    )
    read_timeout: float = _option(
        600.0, "Seconds to wait for the upstream's next byte (headers or stream data).", above=0
    )
    log_level: str = _option(
        "info",
        "debug | info | warning | error",
        choices=["debug", "info", "warning", "error"],
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))
        # (a space after the URL, in a file or LLMTAP_UPSTREAM, went into every path: `/v1%20`)
        object.__setattr__(self, "upstream", self.upstream.strip().rstrip("/"))
        if self.registered_model_name == "":  # an empty name in a file or the environment
            object.__setattr__(self, "registered_model_name", None)
        for f in fields(self):  # fail at start, not at the first request that needs it
            check_setting(f.name, getattr(self, f.name))

    @property
    def ignored_fields(self) -> tuple[str, ...]:
        return tuple(f.strip() for f in self.replay_ignore_fields.split(",") if f.strip())

    @property
    def allowed_host_names(self) -> tuple[str, ...]:
        return tuple(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())


def check_setting(name: str, value: Any) -> None:
    """ValueError when `value` is not one the field `name` takes: its choices, its bounds
    (`low`, `high` inclusive, `above` exclusive) or its own `check`. `llmtap serve` runs it
    on each option too, so that the message names the option."""
    meta = _FIELDS[name].metadata
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ValueError(f"{name} must be one of {', '.join(meta['choices'])}, not {value!r}")
    low, high, above = meta.get("low"), meta.get("high"), meta.get("above")
    bounded = low is not None or high is not None or above is not None
    if (
        (bounded and value != value)  # NaN: no comparison says it is out of bounds
        or (low is not None and value < low)
        or (high is not None and value > high)
        or (above is not None and value <= above)
    ):
        named = (("at least", low), ("at most", high), ("above", above))
        wanted = " and ".join(f"{text} {bound}" for text, bound in named if bound is not None)
        raise ValueError(f"{name} must be {wanted}, not {value}")
    if "check" in meta:
        meta["check"](value)


_CLICK_TYPES: dict[type, click.ParamType] = {int: click.INT, float: click.FLOAT}


def environment_settings(names: Iterable[str]) -> dict[str, Any]:
    """The settings among `names` that an `LLMTAP_<NAME>` environment variable gives, read as
    `llmtap serve` reads them (a switch takes true/false, 1/0, yes/no, on/off; an empty value
    is unset); ValueError naming the variable for one it does not take."""
    found: dict[str, Any] = {}
    for name in names:
        raw = os.environ.get(f"LLMTAP_{name.upper()}")
        if raw is None or raw == "":
            continue
        default = _FIELDS[name].default
        # click's own types, as `llmtap serve`'s options read the same variables
        kind = click.BOOL if isinstance(default, bool) else _CLICK_TYPES.get(type(default))
        try:
            value = (kind or click.STRING).convert(raw, None, None)
            check_setting(name, value)
        except (ValueError, click.BadParameter) as exc:
            message = exc.format_message() if isinstance(exc, click.BadParameter) else exc
            raise ValueError(f"LLMTAP_{name.upper()}: {message}") from None
        found[name] = value
    return found


def setting_fields() -> list[Any]:
    """The dataclass fields of `Settings`, in declaration order."""
    return list(fields(Settings))


_FIELDS = {f.name: f for f in fields(Settings)}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a config file; unknown keys are an error so that typos do not pass silently."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    for name in ("replay_ignore_fields", "allowed_hosts"):  # a TOML list reads naturally too
        if isinstance(data.get(name), list):
            data[name] = ",".join(map(str, data[name]))
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ValueError(
            f"{path}: unknown option(s) {', '.join(unknown)}; known: {sorted(_FIELDS)}"
        )
    for name, value in data.items():  # click would cast 9009.5 to 9009, and trip on 0 as a flag
        kind = _toml_kind(_FIELDS[name].default)
        # bool is an int to Python, not to TOML: `port = true` is no port
        if not isinstance(value, _TOML_KINDS[kind]) or (
            kind != _BOOLEAN and isinstance(value, bool)
        ):
            raise ValueError(f"{path}: {name} must be {kind}, not {value!r}")
    return data


_BOOLEAN = "true or false"
_TOML_KINDS: dict[str, tuple[type, ...]] = {
    _BOOLEAN: (bool,),
    "an integer": (int,),
    "a number": (int, float),
    "a string": (str,),
}


def _toml_kind(default: Any) -> str:
    """What a TOML value of a field with this default must be."""
    if isinstance(default, bool):
        return _BOOLEAN
    if isinstance(default, int):
        return "an integer"
    return "a number" if isinstance(default, float) else "a string"  # None: an optional string
