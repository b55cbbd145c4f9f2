"""`llmtap demo`: the proxy in front of the built-in simulator, driven by the real OpenAI SDK.

Needs no network and no key; what it records lands in the database like any other traffic,
so `llmtap traces` and the UI show it afterwards.
"""

from __future__ import annotations

import time
from typing import Any

import click

from llmtap.proxy.app import create_app, install_log_filters, uvicorn_kwargs
from llmtap.proxy.config import Settings
from llmtap.proxy.server import ServerThread
from llmtap.proxy.simulator import create_simulator
from llmtap.proxy.tables import print_traces
from llmtap.recorder.reader import TraceQuery, TraceReader

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "examples": ["Paris"]}},
            "required": ["city"],
        },
    },
}


def make_calls(base_url: str) -> list[str]:
    """A few real SDK calls through the proxy; returns one line per call for the user."""
    import httpx
    from openai import OpenAI

    # straight to the local proxy: an HTTP(S)_PROXY in the environment must not take the
    # demo's calls elsewhere (it needs no network)
    client = OpenAI(
        base_url=base_url,
        api_key="sk-demo-not-a-real-key",
        max_retries=0,
        http_client=httpx.Client(trust_env=False),
    )
    with client:  # (its connections closed when done)
        said: list[str] = []
        chat = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hello to llmtap."},
            ],
            temperature=0.2,
        )
        said.append(f"chat:        {chat.choices[0].message.content}")
        with client.chat.completions.stream(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=[WEATHER_TOOL],
        ) as stream:
            final = stream.get_final_completion()
        calls = final.choices[0].message.tool_calls or []
        said.append(
            "stream+tool: "
            + ", ".join(
                f"{c.function.name}({c.function.arguments})" for c in calls if c.type == "function"
            )
        )
        emb = client.embeddings.create(model="text-embedding-3-small", input="llmtap records this")
        said.append(f"embeddings:  {len(emb.data[0].embedding)} floats")
        legacy = client.completions.create(
            model="gpt-3.5-turbo-instruct", prompt="Once upon a time", max_tokens=16
        )
        said.append(f"completion:  {legacy.choices[0].text.strip()}")
        return said


def run_demo(db: str, keep_serving: bool = False) -> None:
    install_log_filters()
    with ServerThread(create_simulator()) as simulator:
        settings = Settings(upstream=f"{simulator.url}/v1", db=db, port=0)
        try:
            app = create_app(settings)
            proxy = ServerThread(app, **uvicorn_kwargs()).start()
        except RuntimeError as exc:  # its database would not open: the writer said why
            raise click.ClickException(f"the demo's proxy did not start on {db}") from exc
        try:
            click.echo(f"simulator (offline OpenAI) at {simulator.url}/v1")
            click.echo(f"llmtap proxy at {proxy.url}/v1, recording into {db}\n")
            started = time.time_ns()
            for line in make_calls(f"{proxy.url}/v1"):
                click.echo("  " + line)
            click.echo("")
            if app.writer is not None:  # the answers did not wait for their commit
                app.writer.flush()
            recent = [
                t
                for t in TraceReader(db).list_traces(TraceQuery(limit=20))
                if t["start_time_ns"] >= started
            ]
            print_traces(recent)
            click.echo(f"\n{len(recent)} traces recorded into {db}.")
            if keep_serving:
                click.echo(f"UI: {proxy.url}/  (Ctrl-C to stop)")
                _wait_for_interrupt()
            else:
                click.echo(
                    f"UI: {proxy.url}/ closes with the demo; `llmtap demo --serve` keeps "
                    "it open until Ctrl-C."
                )
                if recent:
                    click.echo(
                        f"Next: llmtap traces --db {db}   |   "
                        f"llmtap trace {recent[-1]['trace_id'][:8]} --db {db}"
                    )
        finally:
            proxy.stop()


def _wait_for_interrupt() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("stopped")
