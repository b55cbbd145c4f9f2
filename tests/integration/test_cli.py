"""The reading commands on a real database, and what `llmtap serve` says as it runs."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
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


def _one_line_error(result: Any) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error:"), result.output


def test_common_slips_are_one_line_errors(tmp_path: Path) -> None:
    """Each gave a traceback (found by a docs review): an export to a folder that is not there
    or to a path that takes no file, and a folder given as the database."""
    db = tmp_path / "rec.db"
    from llmtap.recorder.sqlite import connect_for_writing

    connect_for_writing(db).close()  # an llmtap database with nothing in it
    for args in (
        ["export", "-o", str(tmp_path / "no-such-dir" / "x.jsonl")],
        ["export", "-o", "/proc/llmtap-export.jsonl"],
        ["cassette", "export", "-o", "/proc/nope/x.yaml"],
    ):
        result = cli(*args, "--db", str(db))
        _one_line_error(result)
        assert "cannot write" in result.output
    for args in (["traces"], ["trace", "abcd"], ["export"], ["models"]):
        result = cli(*args, "--db", str(tmp_path))
        _one_line_error(result)
        assert "is a folder" in result.output


def test_a_piped_trace_keeps_each_value_on_its_line(proxy: Proxy, client: OpenAI) -> None:
    """Piped to grep or a file, `llmtap trace` cut recorded text at 80 columns, mid-word."""
    question = "What is the weather in Paris today, and in Lyon, and in Nice, please? " * 3
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
    )
    proxy.flush()
    (info,) = httpx.get(f"{proxy.url}/api/traces").json()["traces"]
    result = cli("trace", info["trace_id"], "--db", str(proxy.db))
    assert result.exit_code == 0, result.output
    assert f"  user: {question}\n" in result.output


def test_the_demo_on_a_file_that_is_no_database_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "notes.db"
    bad.write_text("not a database\n")
    run = subprocess.run(
        [str(Path(sys.executable).with_name("llmtap")), "demo", "--db", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-1500:]
    assert "cannot open its database" in run.stderr and "Error: " in run.stderr


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


def test_the_request_log_cannot_be_given_forged_lines(tmp_path: Path, upstream: str) -> None:
    """`%0a` in a path or `\\n` in `model` started a new line in the request log, one that
    read as llmtap's own; control characters are shown escaped."""
    db = tmp_path / "forged.db"
    forged = "2026-01-01 00:00:00,000 llmtap.requests FORGED POST /v1/chat/completions 200"
    proc, url = start_serve(db, upstream, "--log-level", "info")
    try:
        httpx.get(f"{url}/v1/models%0a" + forged.replace(" ", "%20"))
        chat = {"model": "gpt-4o-mini\r\n" + forged, "messages": [{"role": "user", "content": "x"}]}
        httpx.post(f"{url}/v1/chat/completions", json=chat)
        log = next(db.parent.glob("forged.*.log"))
        for _ in range(100):
            if log.read_text().count("FORGED") == 2:
                break
            time.sleep(0.05)
        lines = log.read_text().splitlines()
    finally:
        proc.terminate()
        proc.wait(10)
    assert not [line for line in lines if line.startswith("2026-01-01")]
    shown = [line for line in lines if "FORGED" in line]
    assert len(shown) == 2 and "/v1/models\\n2026" in shown[0], shown
    assert "gpt-4o-mini\\r\\n2026" in shown[1], shown


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


def chat_body(text: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


def test_export_reads_one_snapshot_while_a_server_records(proxy: Proxy) -> None:
    """Offset paging in new connections repeated traces (or skipped some) when a server
    recorded between two pages: more than a page of traces, and ten more recorded while
    the export is stalled on a full pipe, must still export each trace of the start once."""
    with httpx.Client(base_url=proxy.base_url) as http:
        for i in range(505):
            http.post("/chat/completions", json=chat_body(f"before {i}")).raise_for_status()
        proxy.flush()
        listed = orjson.loads(
            cli("traces", "--db", str(proxy.db), "--limit", "1000", "--json").output
        )
        before = [t["trace_id"] for t in listed["traces"]]
        export = subprocess.Popen(
            [sys.executable, "-m", "llmtap.proxy.cli", "export", "--db", str(proxy.db)],
            stdout=subprocess.PIPE,
        )
        assert export.stdout is not None
        first = export.stdout.readline()  # it has begun, and stalls once the pipe is full
        for i in range(10):
            http.post("/chat/completions", json=chat_body(f"during {i}")).raise_for_status()
        proxy.flush()
        rest, _ = export.communicate(timeout=60)
    exported = [orjson.loads(line)["info"]["trace_id"] for line in [first, *rest.splitlines()]]
    assert export.returncode == 0
    assert exported == before


def test_export_to_a_file_always_writes_it(proxy: Proxy, client: OpenAI, tmp_path: Path) -> None:
    """-o FILE was opened at the first write: an export of no traces left an old FILE as it
    was, and created no new one. A missing database still leaves FILE alone."""
    record(proxy, client)
    stale = tmp_path / "stale.jsonl"
    stale.write_text('{"stale": "an earlier export"}\n')
    nothing = cli("export", "--db", str(proxy.db), "--experiment", "nowhere", "-o", str(stale))
    assert nothing.exit_code == 0 and stale.read_text() == ""
    new = tmp_path / "new.jsonl"
    assert (
        cli("export", "--db", str(proxy.db), "--experiment", "none", "-o", str(new)).exit_code == 0
    )
    assert new.read_text() == ""
    stale.write_text("kept\n")
    missing = cli("export", "--db", str(tmp_path / "none.db"), "-o", str(stale))
    assert missing.exit_code == 1 and stale.read_text() == "kept\n"
    nightly = cli("export", "--db", str(proxy.db), "--experiment", "nightly", "-o", str(stale))
    assert nightly.exit_code == 0 and len(stale.read_text().splitlines()) == 1


@pytest.mark.parametrize("command", [["traces"], ["trace", "abcd"], ["export"], ["models"]])
@pytest.mark.parametrize(
    "content", [b"", b"not sqlite at all, some notes\n"], ids=["empty", "text"]
)
def test_reading_commands_refuse_a_file_that_is_no_llmtap_database(
    tmp_path: Path, command: list[str], content: bytes
) -> None:
    """A zero-byte file (`touch llmtap.db`) or a text file: a clear error, no traceback, and
    not "no models recorded yet"."""
    db = tmp_path / "other.db"
    db.write_bytes(content)
    result = cli(*command, "--db", str(db))
    assert result.exit_code == 1, result.output
    assert f"{db} is not an llmtap database" in result.output
    assert not isinstance(result.exception, sqlite3.Error) and "Traceback" not in result.output


def test_traces_of_an_empty_experiment_say_so(proxy: Proxy, client: OpenAI) -> None:
    record(proxy, client)
    result = cli("traces", "--db", str(proxy.db), "--experiment", "nope")
    assert result.exit_code == 0 and result.output.strip() == "no traces in experiment nope"


def test_read_api_without_a_database(start_proxy: Callable[..., Proxy]) -> None:
    """--mode off records nothing, so there is no database: the read API answers as for an
    empty one (and a JSON 404 for a trace), not a 500."""
    proxy = start_proxy(mode="off")
    assert not proxy.db.exists()
    listed = httpx.get(f"{proxy.url}/api/traces")
    assert listed.status_code == 200 and listed.json() == {
        "traces": [],
        "next_offset": None,
        "next_page_token": None,
    }
    one = httpx.get(f"{proxy.url}/api/traces/0123456789abcdef0123456789abcdef")
    assert one.status_code == 404 and "no trace with id" in one.json()["error"]["message"]


def test_read_api_and_ui_on_a_file_that_is_no_llmtap_database(
    start_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    """--mode off only reads the database: a --db that names some other file gets a JSON 503
    that says so from the read API and the UI, not a bare 500 (and health stays up)."""
    foreign = tmp_path / "foreign.db"
    foreign.write_bytes(b"not a database at all\n")
    proxy = start_proxy(mode="off", db=str(foreign))
    for path in ("/", "/api/traces", "/api/traces/0123456789abcdef0123456789abcdef", "/api/models"):
        answer = httpx.get(f"{proxy.url}{path}")
        assert answer.status_code == 503, path
        assert "cannot read the database" in answer.json()["error"]["message"], path
    assert httpx.get(f"{proxy.url}/api/health").json()["status"] == "ok"


@pytest.mark.parametrize(
    ("name", "content"),
    [("missing.toml", None), ("bad.json", b'{"gpt-4o": {"input": 1}}'), ("bad.toml", b"x = [")],
)
def test_serve_explains_a_prices_file_it_cannot_use(
    tmp_path: Path, name: str, content: bytes | None
) -> None:
    """A bad --prices-file was reported as 'llmtap cannot open its database ... pass --db'."""
    prices = tmp_path / name
    if content is not None:
        prices.write_bytes(content)
    command = serve_command(tmp_path / "x.db", "--prices-file", str(prices))
    run = subprocess.run(command, capture_output=True, text=True, timeout=30)
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert f"llmtap cannot use its prices file {prices}" in out
    assert "cannot open its database" not in out


def test_serve_beyond_loopback_warns_and_shows_a_connectable_address(
    tmp_path: Path, upstream: str
) -> None:
    """`--host 0.0.0.0` (a container's setting) opens every recorded prompt to the network: the
    banner says so, and its addresses are ones a client here can use (not 0.0.0.0)."""
    proc, url = start_serve(tmp_path / "open.db", upstream, "--host", "0.0.0.0", "--mode", "off")
    try:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/api/health").json()["status"] == "ok"
    finally:
        proc.terminate()
        proc.wait(30)
    log = next(tmp_path.glob("open.*.log")).read_text()
    assert (
        "listening beyond loopback (0.0.0.0)" in log and "OPENAI_BASE_URL=http://127.0.0.1:" in log
    )
    quiet, _ = start_serve(tmp_path / "local.db", upstream, "--mode", "off")
    quiet.terminate()
    quiet.wait(30)
    assert "beyond loopback" not in next(tmp_path.glob("local.*.log")).read_text()
