"""The pytest plugin: each test that asks for `llmtap` runs against its own llmtap.

    def test_answer(llmtap):                 # or @pytest.mark.llmtap on the test
        client = OpenAI()                    # OPENAI_BASE_URL points at llmtap
        ...

`--llmtap-mode` replay (default: offline, from the cassette, with a dummy key), record
(against `--llmtap-upstream`, the cassette rewritten) or auto (replay what the cassette has,
record the rest, a call repeated past its recordings too; the dummy key too when
OPENAI_API_KEY is unset). Other settings come from LLMTAP_<NAME> (`_FROM_ENVIRONMENT`).
Each test's cassette is `cassettes/<module>/<test>.yaml` beside the test module, or with
`--llmtap-cassettes DIR` `DIR/<module's path below the rootdir>/<test>.yaml`
(`DIR/tests/unit/test_api/test_x.yaml`, so that same-named modules of two packages stay
apart); a test in a class gets
a folder per class (`<module>/TestChat/test_x.yaml`), as its node id has a `::` per class.
`<test>` is the test's name with a parametrize id joined by `_` (`test_x[gpt-4o]` becomes
`test_x_gpt-4o`); a name that loses anything to that (spaces, `/`, non-ASCII...) also gets
`-` and 8 hex of a hash of the name as written, so that `[a b]` and `[a_b]` stay apart.
A name longer than `MAX_STEM` is cut and given its hash too. Two tests that would still share
a file stop the run at collection. A replay miss fails its test, also when the code under test
caught the 404. Recording a test that made no request removes its cassette (the summary says
so: its client may have been made before the fixture); an upstream's 401 to the dummy key
(auto with no key) is not kept. After the run (pytest-xdist's workers included), the terminal
summary lists recordings that no test used (replay and auto).

Imports are lazy: installing llmtap must cost other test suites nothing.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from llmtap.proxy.faults import ArmedFaults
    from llmtap.recorder.call_usage import CallUsage
    from llmtap.recorder.replay import ReplayIndex

DUMMY_KEY = "sk-llmtap-replay-no-key-needed"
_REMOVED_PROPERTY = "llmtap_removed_cassette"
_UNUSED_PROPERTY = "llmtap_unused_recordings"
"""A test's unused recordings travel in its report's user properties: from a pytest-xdist
worker to the controller, which prints the summary."""
_CALL_PASSED = pytest.StashKey[bool]()
_FOLDER = pytest.StashKey["Path | None"]()
_FROM_ENVIRONMENT = (
    "log_traces",
    "log_models",
    "log_model_signatures",
    "log_input_examples",
    "registered_model_name",
    "stream_usage",
    "prices_file",
    "replay_ignore_fields",
    "replay_exhausted",
    "replay_timing",
    "max_body_size",
    "connect_timeout",
    "read_timeout",
)
"""The settings a test's llmtap takes from LLMTAP_<NAME> (mode, upstream and the cassettes
have pytest options of their own; where it listens and its database are the plugin's)."""
MAX_STEM = 250
"""Characters of a cassette's file name before `.yaml` (a file system allows 255 bytes): a
longer test name is cut and told apart by its hash (every name that fitted keeps its file)."""


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
        "llmtap_cassettes",
        "default --llmtap-cassettes (a relative folder is below the rootdir)",
        default="",
    )
    parser.addini(
        "llmtap_upstream", "default --llmtap-upstream", default="https://api.openai.com/v1"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "llmtap: run this test against its own llmtap (record or replay)"
    )
    config.stash[_FOLDER] = _cassette_folder(config)
    _unused_counts.clear()  # (a second session in one process: pytester's inline runs)
    _removed.clear()


def _cassette_folder(config: pytest.Config) -> Path | None:
    """`--llmtap-cassettes` (or the ini's `llmtap_cassettes`) as an absolute folder. A
    relative one typed on the command line is below where pytest runs, as pytest reads paths
    there; one from the ini file (its key, or `addopts`) is below the rootdir, so that
    `cd tests && pytest` finds the same cassettes."""
    folder = config.getoption("--llmtap-cassettes") or config.getini("llmtap_cassettes")
    if not folder:
        return None
    path = Path(folder).expanduser()
    if path.is_absolute():
        return path
    typed = any(str(a).startswith("--llmtap-cassettes") for a in config.invocation_params.args)
    return (config.invocation_params.dir if typed else config.rootpath) / path


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Unused recordings and removed cassettes from each test's teardown report, here or
    from an xdist worker."""
    if report.when == "teardown":
        for name, value in report.user_properties:
            if name == _UNUSED_PROPERTY:
                _unused_counts[report.nodeid] = int(value)
            elif name == _REMOVED_PROPERTY:
                _removed[report.nodeid] = str(value)


_unused_counts: dict[str, int] = {}
"""(The logreport hook is given no config: the counts of this pytest process.)"""
_removed: dict[str, str] = {}
"""Cassettes removed because their test made no request through llmtap while recording."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and (
            "llmtap" in item.fixturenames or item.get_closest_marker("llmtap")
        ):
            _request_first(item, "llmtap")
    _refuse_shared_cassettes(items, config.stash[_FOLDER])


_XUNIT_SETUP = ("_xunit_setup_method_fixture", "_xunit_setup_function_fixture")
"""How pytest names the autouse fixtures that run a class's `setup_method` and a module's
`setup_function`: llmtap is set up before them, so that a client they make sees it."""


def _request_first(item: pytest.Function, name: str) -> None:
    """Set `name` up as if it were the test's first argument, whether the test asked for it
    (anywhere in its arguments: `def test_x(client, llmtap)`) or carries the marker: after
    the autouse fixtures but before `setup_method`/`setup_function`, and before the test's
    own fixtures, so that one that makes `OpenAI()` sees OPENAI_BASE_URL (a client made
    before went to the real API, and in record mode the test's cassette was then removed).
    pytest sets fixtures up in the order of `item.fixturenames`."""
    names = item.fixturenames
    if name in names:
        names.remove(name)
    own = set(item._fixtureinfo.argnames) - {name}
    first = next(
        (i for i, n in enumerate(names) if n in own or n.startswith(_XUNIT_SETUP)), len(names)
    )
    names.insert(first, name)


@dataclass
class LlmtapSession:
    """What a test gets: where llmtap listens, and what it records into."""

    base_url: str
    url: str
    mode: str
    cassette: Path
    db: Path
    replay_index: ReplayIndex | None = field(default=None, repr=False)
    """What replay served so far (replay and auto)."""
    first_rowid: int = field(default=0, repr=False)
    """Exchanges in `db` before the test (its cassette's): those after it recorded."""
    faults: ArmedFaults | None = field(default=None, repr=False)
    """The faults armed in this test's llmtap (its server runs in this process)."""

    def fault(self, kind: str, times: int = 1) -> None:
        """Answer the next `times` requests through this test's llmtap with the fault `kind`,
        as a `llmtap-fault: KIND` header would (`"429"`, `"500"`, `"disconnect"`,
        `"timeout=5"`, `"stream-error"`...), so that the code's retries are tested offline:
        `llmtap.fault("429", times=2)`, and the SDK's third try is answered from the cassette.
        Faults are never recorded as answers, so record and replay run alike."""
        from llmtap.proxy.faults import parse_fault

        if self.faults is None:
            raise RuntimeError("llmtap.fault() needs the fixture's own llmtap")
        self.faults.arm(parse_fault(kind), times)

    def usage(self) -> CallUsage:
        """The calls this test made so far, recorded or replayed: how many, their tokens and
        their cost in USD (None when no model's price is known), for a budget:
        `assert llmtap.usage().total_tokens < 2_000`."""
        from llmtap.recorder.call_usage import CallUsage, recorded_since, usage_of

        ids = recorded_since(str(self.db), self.first_rowid) if self.db.exists() else []
        if self.replay_index is not None:
            ids += self.replay_index.served()
        return usage_of(str(self.db), ids) if ids else CallUsage()


def cassette_path(item: pytest.Item, folder: str | Path | None) -> Path:
    """The test's own cassette: one file per test, stable across runs and selections."""
    classes = [file_stem(node.name) for node in item.listchain() if isinstance(node, pytest.Class)]
    leaf = [*classes, f"{file_stem(item.name)}.yaml"]
    if folder:  # one folder for all modules: tests/unit/test_api.py and tests/e2e/test_api.py
        path = Path(folder).joinpath(*_module_parts(item), *leaf)  # must not meet in it
        earlier = Path(folder).joinpath(item.path.stem, *leaf)  # the layout before 0.1's
        return earlier if not path.exists() and earlier.exists() else path
    return item.path.parent.joinpath("cassettes", item.path.stem, *leaf)


def _module_parts(item: pytest.Item) -> tuple[str, ...]:
    """The module's path below its project (`tests/unit/test_api`), without its suffix; just
    its name for a module outside it. The project is the rootdir when an ini file fixes it,
    else the nearest folder above the module with a pyproject.toml, setup.py, setup.cfg or
    .git: pytest's rootdir without an ini file follows the folder it is run from, and a
    cassette must not move with that."""
    try:
        relative = item.path.relative_to(_project(item))
    except ValueError:
        return (item.path.stem,)
    return relative.with_suffix("").parts


_PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")


def _project(item: pytest.Item) -> Path:
    if item.config.inipath is not None:
        return item.config.rootpath
    return _marked_folder(item.path.parent) or item.config.rootpath


@functools.lru_cache(maxsize=256)
def _marked_folder(folder: Path) -> Path | None:
    for candidate in (folder, *folder.parents):
        if any((candidate / marker).exists() for marker in _PROJECT_MARKERS):
            return candidate
    return None


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_PARAMETRIZED = re.compile(r"(?P<function>[^\[]+)\[(?P<id>.+)\]")


def file_stem(name: str) -> str:
    """`name` as a file name: as before for plain names, made unique where cleaning loses text.

    `test_x` and `test_x[gpt-4o]` keep the names cassettes have always had (`test_x`,
    `test_x_gpt-4o`); any other name gets a hash of itself, since cleaning maps many to one.
    """
    cleaned = _UNSAFE.sub("_", name).strip("_")
    digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
    if cleaned == _expected_when_lossless(name):
        stem = cleaned
    else:
        stem = f"{cleaned}-{digest}" if cleaned else digest
    if len(stem) > MAX_STEM:  # a long parametrize id: "File name too long", the recording lost
        stem = f"{cleaned[: MAX_STEM - 9]}-{digest}"
    return stem


def _expected_when_lossless(name: str) -> str | None:
    """What cleaning gives when the only change is the parametrize brackets, else None."""
    match = _PARAMETRIZED.fullmatch(name)
    function, id_ = match.group("function", "id") if match else (name, None)
    if _UNSAFE.search(function) or (id_ is not None and _UNSAFE.search(id_)):
        return None
    return function if id_ is None else f"{function}_{id_}"


def _refuse_shared_cassettes(items: list[pytest.Item], folder: Path | None) -> None:
    """Stop before running when two tests would write one file: the second would erase the
    first's recordings. `test_x[a]` and a `test_x_a` are the one such pair names allow."""
    owners: dict[Path, str] = {}
    for item in items:
        if "llmtap" not in getattr(item, "fixturenames", ()):
            continue
        path = cassette_path(item, folder)
        if path in owners:
            raise pytest.UsageError(
                f"llmtap: {owners[path]} and {item.nodeid} would share the cassette {path}; "
                "rename one of them (or its parametrize id)"
            )
        owners[path] = item.nodeid


@pytest.fixture
def llmtap(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[LlmtapSession]:
    from llmtap.proxy.app import create_app, uvicorn_kwargs
    from llmtap.proxy.config import Settings, environment_settings
    from llmtap.proxy.headers import fingerprint
    from llmtap.proxy.server import ServerThread
    from llmtap.recorder.call_usage import last_rowid
    from llmtap.recorder.cassettes import export_cassette, import_cassette
    from llmtap.recorder.sqlite import key_salt_of

    config = request.config
    mode = config.getoption("--llmtap-mode") or config.getini("llmtap_mode")
    upstream = config.getoption("--llmtap-upstream") or config.getini("llmtap_upstream")
    cassette = cassette_path(request.node, config.stash[_FOLDER])
    db = tmp_path / "llmtap-plugin.db"
    if mode != "record" and cassette.exists():
        import_cassette(cassette, db)
    # replay keeps nothing: no writer process (it cost each test ~0.3 s to start)
    # the settings pytest has no option for (replay_exhausted, replay_ignore_fields,
    # stream_usage...) from LLMTAP_<NAME>, as `llmtap serve` reads them
    try:
        given = environment_settings(_FROM_ENVIRONMENT)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    app = create_app(
        Settings(**given, mode=mode, upstream=upstream, db=str(db), port=0),
        recording=mode != "replay",
        write_ahead=False,  # `llmtap.usage()` reads the database in the middle of a test
        new_episodes=mode == "auto",  # each call a test makes goes in its cassette
    )
    server = ServerThread(app, **uvicorn_kwargs()).start()
    session = LlmtapSession(
        f"{server.url}/v1",
        server.url,
        mode,
        cassette,
        db,
        app.replayer.index if mode != "record" else None,
        last_rowid(str(db)) if db.exists() else 0,
        app.faults,
    )
    monkeypatch.setenv("OPENAI_BASE_URL", session.base_url)
    # an HTTP(S)_PROXY of the machine (CI runners have them) must not take the SDK's calls
    # to the local llmtap elsewhere
    for name in ("NO_PROXY", "no_proxy"):
        current = os.environ.get(name, "")
        monkeypatch.setenv(name, f"{current},127.0.0.1" if current else "127.0.0.1")
    # replay needs no key (SPEC 5), nor does auto for what it replays; a real key is kept,
    # since auto forwards what is not recorded yet
    stand_in = mode == "replay" or (mode == "auto" and not os.environ.get("OPENAI_API_KEY"))
    if stand_in:
        monkeypatch.setenv("OPENAI_API_KEY", DUMMY_KEY)
    try:
        yield session
    finally:
        server.stop()
        if mode != "record":
            unused = app.replayer.index.unused()
            if unused:
                request.node.user_properties.append((_UNUSED_PROPERTY, len(unused)))
        if mode == "replay":
            replayer = app.replayer
            if replayer.miss_count and request.node.stash.get(_CALL_PASSED, False):
                # the code under test swallowed the 404 (a fallback, a retry loop): the
                # cassette is stale all the same
                state = "" if cassette.exists() else " (no such file yet)"
                pytest.fail(
                    f"{replayer.miss_count} request(s) were not in the cassette "
                    f"{cassette}{state}: {replayer.first_miss}; record with "
                    "`pytest --llmtap-mode record` (or auto)",
                    pytrace=False,
                )
        elif db.exists():
            # an answer refusing the stand-in key is no recording (auto without a key)
            refused = fingerprint(DUMMY_KEY, key_salt_of(db)) if stand_in else None
            written = export_cassette(db, cassette, skip_empty=True, refused_key=refused)
            passed = request.node.stash.get(_CALL_PASSED, False)
            removed = not written and mode == "record" and passed and cassette.exists()
            if removed and not _requests_made(db):
                # the test passed without calling the API: it calls it no more (one that
                # failed or skipped before its call keeps its recordings)
                cassette.unlink()
                # said in the summary, not as a warning (`filterwarnings = error` made the
                # test an error in its teardown, the cassette already gone)
                request.node.user_properties.append((_REMOVED_PROPERTY, str(cassette)))


def _requests_made(db: Path) -> bool:
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT 1 FROM exchanges LIMIT 1").fetchone() is not None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A test that failed on a replay miss is told which cassette lacked the request and how
    to record it: the miss itself (a 404 from llmtap) knows neither."""
    report = yield
    if report.when == "call":
        item.stash[_CALL_PASSED] = report.passed and not hasattr(report, "wasxfail")
    session = getattr(item, "funcargs", {}).get("llmtap")
    if (
        report.failed
        and isinstance(session, LlmtapSession)
        and session.mode != "record"
        and "llmtap replay:" in report.longreprtext
    ):
        state = "" if session.cassette.exists() else " (no such file yet)"
        report.sections.append(
            (
                "llmtap replay miss",
                f"the request was not in the cassette {session.cassette}{state}; record it "
                "with `pytest --llmtap-mode record` (or `--llmtap-mode auto` to record only "
                "what is missing) and OPENAI_API_KEY set",
            )
        )
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if _removed:
        terminalreporter.section("llmtap: cassettes removed")
        for nodeid, cassette in sorted(_removed.items()):
            terminalreporter.write_line(f"{nodeid}: {cassette}")
        terminalreporter.write_line(
            "these tests made no request through llmtap while recording. If one does call the "
            "API, its client was made before the llmtap fixture (at import, or in a fixture of "
            "wider scope) and went to the API directly"
        )
    if _unused_counts:
        terminalreporter.section("llmtap: recordings no test used")
        for nodeid, count in sorted(_unused_counts.items()):
            terminalreporter.write_line(f"{nodeid}: {count} unused recording(s)")
