"""The pytest plugin: each test that asks for `llmtap` runs against its own llmtap.

    def test_answer(llmtap):                 # or @pytest.mark.llmtap on the test
        client = OpenAI()                    # OPENAI_BASE_URL points at llmtap
        ...

`--llmtap-mode` replay (default: offline, from the cassette, with a dummy key), record
(against `--llmtap-upstream`, the cassette rewritten) or auto (replay what the cassette has,
record the rest). Each test's cassette is `<cassettes>/<module>/<test>.yaml`, `<cassettes>`
being `--llmtap-cassettes` or `cassettes/` beside the test module. After the run, the
terminal summary lists recordings that no test used.

Imports are lazy: installing llmtap must cost other test suites nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DUMMY_KEY = "sk-llmtap-replay-no-key-needed"
_UNUSED = pytest.StashKey[dict[str, int]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmtap", "llmtap: record and replay OpenAI traffic")
    group.addoption(
        "--llmtap-mode",
        choices=["replay", "record", "auto"],
        default=None,
        help="replay (default): offline from cassettes; record: call the upstream "
        "and rewrite cassettes; auto: replay what is recorded, record the rest",
    )
    group.addoption(
        "--llmtap-upstream",
        default=None,
        help="API to record from (default https://api.openai.com/v1)",
    )
    group.addoption(
        "--llmtap-cassettes",
        default=None,
        help="folder of cassettes (default: cassettes/ beside each test module)",
    )
    parser.addini("llmtap_mode", "default --llmtap-mode", default="replay")
    parser.addini(
        "llmtap_upstream", "default --llmtap-upstream", default="https://api.openai.com/v1"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "llmtap: run this test against its own llmtap (record or replay)"
    )
    config.stash[_UNUSED] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if (
            item.get_closest_marker("llmtap")
            and isinstance(item, pytest.Function)
            and "llmtap" not in item.fixturenames
        ):
            item.fixturenames.append("llmtap")


@dataclass
class LlmtapSession:
    """What a test gets: where llmtap listens, and what it records into."""

    base_url: str
    url: str
    mode: str
    cassette: Path
    db: Path
    recorded: list[str] = field(default_factory=list)


def cassette_path(request: pytest.FixtureRequest, folder: str | None) -> Path:
    base = Path(folder) if folder else request.path.parent / "cassettes"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name).strip("_")
    return base / request.path.stem / f"{name}.yaml"


@pytest.fixture
def llmtap(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LlmtapSession]:
    from llmtap.proxy.app import create_app, uvicorn_kwargs
    from llmtap.proxy.config import Settings
    from llmtap.proxy.server import ServerThread
    from llmtap.recorder.cassettes import export_cassette, import_cassette

    config = request.config
    mode = config.getoption("--llmtap-mode") or config.getini("llmtap_mode")
    upstream = config.getoption("--llmtap-upstream") or config.getini("llmtap_upstream")
    cassette = cassette_path(request, config.getoption("--llmtap-cassettes"))
    db = tmp_path / "llmtap-plugin.db"
    if mode != "record" and cassette.exists():
        import_cassette(cassette, db)
    app = create_app(Settings(mode=mode, upstream=upstream, db=str(db), port=0))
    server = ServerThread(app, **uvicorn_kwargs()).start()
    session = LlmtapSession(f"{server.url}/v1", server.url, mode, cassette, db)
    monkeypatch.setenv("OPENAI_BASE_URL", session.base_url)
    if mode == "replay":
        monkeypatch.setenv("OPENAI_API_KEY", DUMMY_KEY)
    try:
        yield session
    finally:
        server.stop()
        if mode == "replay":
            unused = app.replayer.index.unused()
            if unused:
                config.stash[_UNUSED][request.node.nodeid] = len(unused)
        elif db.exists():
            export_cassette(db, cassette, skip_empty=True)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    unused = config.stash.get(_UNUSED, {})
    if not unused:
        return
    terminalreporter.section("llmtap: recordings no test used")
    for nodeid, count in sorted(unused.items()):
        terminalreporter.write_line(f"{nodeid}: {count} unused recording(s)")
