"""Shared fixtures: a real simulator and real llmtap servers on free ports, real SQLite files."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llmtap.proxy.app import LlmtapApp, create_app, install_log_filters, uvicorn_kwargs
from llmtap.proxy.config import Settings
from llmtap.proxy.server import ServerThread
from llmtap.proxy.simulator import create_simulator

pytest_plugins = ["pytester"]

TEST_KEY = "sk-test-llmtap-9f8e7d6c5b4a39281706"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's OpenAI or llmtap settings."""
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "LLMTAP_")):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def simulator() -> Iterator[ServerThread]:
    with ServerThread(create_simulator()) as server:
        yield server


@pytest.fixture(scope="session")
def upstream(simulator: ServerThread) -> str:
    return f"{simulator.url}/v1"


@pytest.fixture
def upstream_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerThread]:
    """The simulator as the API to record from; recording needs a key, as against OpenAI."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-recording-key-000000000000")
    with ServerThread(create_simulator()) as server:
        yield server


@dataclass
class Proxy:
    server: ServerThread
    app: LlmtapApp
    db: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def base_url(self) -> str:
        return f"{self.server.url}/v1"

    def flush(self) -> None:
        """Wait until every recording handed to the writer is in the database."""
        if self.app.writer is not None:
            self.app.writer.flush()

    def query(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        self.flush()
        conn = sqlite3.connect(self.db)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


@pytest.fixture
def start_proxy(tmp_path: Path, upstream: str) -> Iterator[Callable[..., Proxy]]:
    started: list[Proxy] = []
    install_log_filters()

    def start(write_ahead: bool = True, **overrides: Any) -> Proxy:
        """`write_ahead` False: answers wait for their commit in record mode too (the path
        of auto mode, the pytest plugin, and a recording the in-flight log cannot take)."""
        db = tmp_path / f"llmtap-{len(started)}.db"
        settings = Settings(**{"upstream": upstream, "db": str(db), "port": 0, **overrides})
        app = create_app(settings, write_ahead=write_ahead)
        proxy = Proxy(ServerThread(app, **uvicorn_kwargs()).start(), app, Path(settings.db))
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.server.stop()


@pytest.fixture
def proxy(start_proxy: Callable[..., Proxy]) -> Proxy:
    return start_proxy()


@pytest.fixture
def client(proxy: Proxy) -> Any:
    from openai import OpenAI

    with OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0) as c:
        yield c
