"""`llmtap serve`: the proxy in the foreground, with a banner that says where everything is."""

from __future__ import annotations

import contextlib
import ipaddress

import click

from llmtap.proxy.app import create_app, install_log_filters, uvicorn_kwargs
from llmtap.proxy.config import Settings
from llmtap.proxy.server import bind_socket, make_server, url_of
from llmtap.proxy.upstream_client import Origin, UpstreamError, shown_url


def run_server(settings: Settings) -> None:
    try:  # what the upstream client makes of the URL and the environment's proxy, said now
        Origin.parse(settings.upstream)
    except UpstreamError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        sock = bind_socket(settings.host, settings.port)
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {settings.host}:{settings.port}: {exc}"
        ) from exc
    url = url_of(sock)
    exposed = not ipaddress.ip_address(sock.getsockname()[0]).is_loopback
    if sock.getsockname()[0] in ("0.0.0.0", "::"):  # every interface: connect on loopback here
        url = url.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]")
    app = create_app(settings)
    install_log_filters()

    def announce() -> None:  # once the app has started: its database is open
        click.echo(f"llmtap listening on {url}", err=False)
        if exposed:
            click.echo(
                f"  warning   listening beyond loopback ({settings.host}): whoever reaches this "
                "port reads every recorded prompt and answer (the UI, /api) and can send "
                "requests upstream; the default is 127.0.0.1",
                err=True,
            )
        click.echo(f"  OPENAI_BASE_URL={url}/v1")
        click.echo(f"  upstream  {shown_url(settings.upstream)}")
        click.echo(f"  database  {settings.db}")
        click.echo(f"  mode      {settings.mode}")
        click.echo(f"  UI        {url}/")

    server = make_server(app, log_level=settings.log_level, announce=announce, **uvicorn_kwargs())
    # uvicorn stops cleanly on Ctrl-C, then raises it again: a clean stop, not click's
    # "Aborted!" and exit code 1
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
