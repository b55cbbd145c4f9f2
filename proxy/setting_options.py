"""Click options made from `Settings` fields, for `serve` and for `predict`: each also read
from LLMTAP_<NAME> and from the TOML file given by --config (command line > environment >
file > default), and checked by the field's own check as a usage error naming the option."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import click

from llmtap.proxy.config import check_setting, load_toml, setting_fields

F = Callable[..., Any]


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Eager --config: the file fills click's default_map, below env and command line."""
    if value:
        try:
            ctx.default_map = {**(ctx.default_map or {}), **load_toml(value)}
        except (OSError, ValueError) as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc
    return value


def _checked(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """The Settings field's own check, from the command line, environment or file alike, as
    a usage error that names the option (not a traceback from Settings or from bind())."""
    try:
        check_setting(str(param.name), value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc
    return value


def settings_options(
    only: Collection[str] | None = None, config_help: str = "TOML file with any of these options."
) -> Callable[[F], F]:
    """One click option per Settings field (or per field named in `only`), and --config."""

    def decorate(func: F) -> F:
        for f in reversed(setting_fields()):
            if only is not None and f.name not in only:
                continue
            name = f.name.replace("_", "-")
            kwargs: dict[str, Any] = {
                "envvar": f"LLMTAP_{f.name.upper()}",
                "show_default": True,
                "help": f.metadata["help"],
                "default": f.default,
                "callback": _checked,
            }
            if "choices" in f.metadata:
                kwargs["type"] = click.Choice(f.metadata["choices"])
                kwargs["default"] = str(f.default)
            if isinstance(f.default, bool):
                func = click.option(f"--{name}/--no-{name}", f.name, **kwargs)(func)
            else:
                if not isinstance(f.default, str) and f.default is not None:
                    kwargs["type"] = kwargs.get("type", type(f.default))
                func = click.option(f"--{name}", f.name, **kwargs)(func)
        return click.option(
            "--config",
            type=click.Path(dir_okay=False),
            is_eager=True,
            expose_value=False,
            callback=_load_config,
            envvar="LLMTAP_CONFIG",
            help=config_help,
        )(func)

    return decorate
