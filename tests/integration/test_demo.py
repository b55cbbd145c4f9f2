"""`llmtap demo`: offline, no key, real SDK calls through the proxy, and what it recorded."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from llmtap.proxy.cli import main
from llmtap.recorder.reader import TraceQuery, TraceReader


def test_demo_records_every_kind_of_call_and_says_where_to_look(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    result = CliRunner().invoke(main, ["demo", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "4 traces recorded" in result.output and "UI: http://127.0.0.1:" in result.output
    # the streamed tool call, reassembled; its argument the schema's example, as a model would
    assert 'get_weather({"city":"Paris"})' in result.output
    names = sorted(t["name"] for t in TraceReader(db).list_traces(TraceQuery()))
    assert names == ["chat.completions", "chat.completions", "completions", "embeddings"]
    assert all(t["usage"]["total_tokens"] > 0 for t in TraceReader(db).list_traces(TraceQuery()))


def test_demo_runs_behind_an_unreachable_http_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It needs no network: a machine's HTTP(S)_PROXY (a dead one here) is not in its way."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    result = CliRunner().invoke(main, ["demo", "--db", str(tmp_path / "demo.db")])
    assert result.exit_code == 0, result.output
    assert "4 traces recorded" in result.output
