"""The reading commands on a real database, and what `llmtap serve` says as it runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from click.testing import CliRunner
from openai import OpenAI

from llmtap.proxy.cli import main
from tests.conftest import Proxy
from tests.crash.test_kill9 import serve_command, start_serve


def record(proxy: Proxy, client: OpenAI) -> None:
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "cli one"}]
    )
    with OpenAI(
        base_url=f"{proxy.url}/experiments/nightly/v1", api_key="sk-x", max_retries=0
    ) as other:
        other.embeddings.create(model="text-embedding-3-small", input="cli two")
    proxy.flush()


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_traces_trace_and_export(proxy: Proxy, client: OpenAI, tmp_path: Path) -> None:
    record(proxy, client)
    db = str(proxy.db)
    listed = cli("traces", "--db", db, "--json")
    assert listed.exit_code == 0
    traces = orjson.loads(listed.output)["traces"]
    assert [t["name"] for t in traces] == ["embeddings", "chat.completions"]  # newest first
    plain = cli("traces", "--db", db, "--experiment", "nightly")
    assert plain.exit_code == 0 and "embeddings" in plain.output
    assert "chat.completions" not in plain.output and "\t" in plain.output  # piped: plain
    one = cli("trace", traces[1]["trace_id"][:8], "--db", db)  # a unique prefix is enough
    assert one.exit_code == 0 and "cli one" in one.output and "gpt-4o-mini" in one.output
    full = orjson.loads(cli("trace", traces[1]["trace_id"], "--db", db, "--json").output)
    assert full["info"]["trace_id"] == traces[1]["trace_id"] and full["spans"]
    wrong = cli("trace", traces[1]["trace_id"][:-1] + "x", "--db", db)
    assert wrong.exit_code == 1 and "did you mean" in wrong.output
    out = tmp_path / "traces.jsonl"
    assert cli("export", "--db", db, "-o", str(out)).exit_code == 0
    lines = [orjson.loads(line) for line in out.read_text().splitlines()]
    assert [line["info"]["trace_id"] for line in lines] == [t["trace_id"] for t in traces]
    assert lines[0]["spans"][0]["span_type"] == "EMBEDDING"


def test_reading_commands_explain_a_missing_database(tmp_path: Path) -> None:
    result = cli("traces", "--db", str(tmp_path / "none.db"))
    assert result.exit_code == 1 and "no llmtap database" in result.output


def test_serve_says_where_it_listens_and_logs_each_request(tmp_path: Path, upstream: str) -> None:
    import httpx

    db = tmp_path / "serve.db"
    proc, url = start_serve(db, upstream, "--log-level", "info")
    try:
        httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        )
        log = next(db.parent.glob("serve.*.log"))
        for _ in range(100):
            if "POST /v1/chat/completions 200" in log.read_text():
                break
            time.sleep(0.05)
        text = log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)
    for shown in (
        f"listening on {url}",
        f"OPENAI_BASE_URL={url}/v1",
        upstream,
        str(db),
        f"UI        {url}/",
    ):
        assert shown in text, shown
    line = next(line for line in text.splitlines() if "POST /v1/chat/completions 200" in line)
    assert " ms gpt-4o-mini " in line and "tokens" in line


def test_serve_explains_a_database_it_cannot_open(tmp_path: Path) -> None:
    import subprocess

    missing = tmp_path / "no" / "such" / "dir" / "x.db"
    run = subprocess.run(serve_command(missing), capture_output=True, text=True, timeout=30)
    assert run.returncode != 0
    assert "llmtap cannot open its database" in run.stdout + run.stderr


def test_listing_pages_and_filters_by_cli_and_api(proxy: Proxy, client: OpenAI) -> None:
    """`llmtap traces --limit` and `GET /api/traces?experiment=&session=&limit=&offset=`."""
    for i in range(5):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"page {i}"}],
            extra_headers={"llmtap-session": "odd" if i % 2 else "even"},
        )
    proxy.flush()
    newest_first = [f"page {i}" for i in reversed(range(5))]

    def prompts(traces: list[dict[str, Any]]) -> list[str]:
        return [
            httpx.get(f"{proxy.url}/api/traces/{t['trace_id']}").json()["spans"][0]["inputs"][
                "messages"
            ][0]["content"]
            for t in traces
        ]

    listed = orjson.loads(cli("traces", "--db", str(proxy.db), "--limit", "2", "--json").output)
    assert prompts(listed["traces"]) == newest_first[:2]
    api = f"{proxy.url}/api/traces"
    assert (
        prompts(httpx.get(api, params={"limit": 2, "offset": 2}).json()["traces"])
        == (newest_first[2:4])
    )
    odd = httpx.get(api, params={"session": "odd"}).json()["traces"]
    assert prompts(odd) == ["page 3", "page 1"] and {t["session"] for t in odd} == {"odd"}
    none = httpx.get(api, params={"experiment": "nowhere"}).json()["traces"]
    assert none == []
