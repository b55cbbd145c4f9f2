"""The pytest plugin, run the way users run it: pytest in a subprocess, through its entry point."""

from __future__ import annotations

import pytest

from llmtap.proxy.server import ServerThread

TEST_FILE = """
import pytest
from openai import OpenAI

def ask(text):
    with OpenAI(max_retries=0) as client:
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
        ).choices[0].message.content

def test_answer(llmtap):
    assert llmtap.base_url.endswith("/v1")
    assert "PROMPT" in ask("PROMPT")

@pytest.mark.llmtap
def test_marked():
    with OpenAI(max_retries=0) as client:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "stream"}])
        assert "stream" in "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        client.embeddings.create(model="text-embedding-3-small", input="EXTRA")
"""


def test_record_then_replay_offline(
    pytester: pytest.Pytester, upstream_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_llm=TEST_FILE.replace("PROMPT", "hello"))
    recorded = pytester.runpytest_subprocess(
        "--llmtap-mode=record",
        f"--llmtap-upstream={upstream_server.url}/v1",
        "-p",
        "no:cacheprovider",
    )
    recorded.assert_outcomes(passed=2)
    cassettes = sorted((pytester.path / "cassettes" / "test_llm").glob("*.yaml"))
    assert [c.name for c in cassettes] == ["test_answer.yaml", "test_marked.yaml"]
    text = cassettes[0].read_text()
    assert "Hello! You said: hello" in text and "authorization" not in text.lower()
    assert "sk-test-recording-key" not in text
    upstream_server.stop()  # replay must need neither the upstream nor a key
    monkeypatch.delenv("OPENAI_API_KEY")
    # nor a network: a machine's HTTP proxy (a dead one here) does not get the SDK's calls
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    replayed = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    replayed.assert_outcomes(passed=2)
    assert "recordings no test used" not in replayed.stdout.str()


def test_a_changed_prompt_fails_with_the_diff_and_unused_are_reported(
    pytester: pytest.Pytester, upstream_server: ServerThread
) -> None:
    pytester.makepyfile(test_llm=TEST_FILE.replace("PROMPT", "hello"))
    pytester.runpytest_subprocess(
        "--llmtap-mode=record", f"--llmtap-upstream={upstream_server.url}/v1"
    ).assert_outcomes(passed=2)
    changed = TEST_FILE.replace("PROMPT", "goodbye").replace(
        '        client.embeddings.create(model="text-embedding-3-small", input="EXTRA")\n', ""
    )
    pytester.makepyfile(test_llm=changed)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "messages[0].content: 'hello' -> 'goodbye'" in out
    assert "recordings no test used" in out and "test_marked: 1 unused" in out


def test_auto_records_only_what_is_missing(
    pytester: pytest.Pytester, upstream_server: ServerThread
) -> None:
    pytester.makepyfile(test_llm=TEST_FILE.replace("PROMPT", "auto"))
    args = ["--llmtap-mode=auto", f"--llmtap-upstream={upstream_server.url}/v1"]
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=2)
    first = (pytester.path / "cassettes" / "test_llm" / "test_answer.yaml").read_text()
    upstream_server.stop()
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=2)
    assert (pytester.path / "cassettes" / "test_llm" / "test_answer.yaml").read_text() == first


ASK = """
import pytest
from openai import OpenAI

def ask(text):
    with OpenAI(max_retries=0) as client:
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
        ).choices[0].message.content
"""

SAME_NAMES_IN_TWO_CLASSES = (
    ASK
    + """
class TestAlpha:
    def test_x(self, llmtap):
        assert "alpha" in ask("alpha")

class TestBeta:
    def test_x(self, llmtap):
        assert "beta" in ask("beta")
"""
)

IDS_THAT_CLEAN_ALIKE = (
    ASK
    + """
@pytest.mark.parametrize("text", ["a b", "a_b", "plain"])
def test_x(llmtap, text):
    assert text in ask(text)
"""
)


def record_then_replay(
    pytester: pytest.Pytester,
    upstream: ServerThread,
    monkeypatch: pytest.MonkeyPatch,
    passed: int,
    *args: str,
    replay: tuple[str, ...] = (),
    folder: str = "cassettes/test_llm",
) -> list[str]:
    """Record, then replay (with `replay`'s options) with neither upstream nor key, both runs
    with `args`; the cassettes below `folder`."""
    record = pytester.runpytest_subprocess(
        "--llmtap-mode=record",
        f"--llmtap-upstream={upstream.url}/v1",
        "-p",
        "no:cacheprovider",
        *args,
    )
    record.assert_outcomes(passed=passed)
    upstream.stop()
    monkeypatch.delenv("OPENAI_API_KEY")
    replayed = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, *replay)
    replayed.assert_outcomes(passed=passed)
    assert "recordings no test used" not in replayed.stdout.str()
    below = pytester.path / folder
    return sorted(p.relative_to(below).as_posix() for p in below.rglob("*.yaml"))


def test_same_named_tests_in_two_classes_keep_their_own_cassettes(
    pytester: pytest.Pytester, upstream_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_llm=SAME_NAMES_IN_TWO_CLASSES)
    cassettes = record_then_replay(pytester, upstream_server, monkeypatch, passed=2)
    assert cassettes == ["TestAlpha/test_x.yaml", "TestBeta/test_x.yaml"]


def test_parametrize_ids_that_clean_alike_keep_their_own_cassettes(
    pytester: pytest.Pytester, upstream_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_llm=IDS_THAT_CLEAN_ALIKE)
    cassettes = record_then_replay(pytester, upstream_server, monkeypatch, passed=3)
    hashed = [name for name in cassettes if name.startswith("test_x_a_b-")]
    # the simple ids keep the names they always had; "a b" loses its space, so gets a hash
    assert sorted(set(cassettes) - set(hashed)) == ["test_x_a_b.yaml", "test_x_plain.yaml"]
    assert len(hashed) == 1 and len(hashed[0]) == len("test_x_a_b-12345678.yaml")


def test_tests_that_would_still_share_a_cassette_stop_the_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_llm=ASK
        + """
@pytest.mark.parametrize("text", ["stream"])
def test_chat(llmtap, text):
    pass

def test_chat_stream(llmtap):
    pass
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*test_llm.py::test_chat?stream? and test_llm.py::test_chat_stream would share*"]
    )


CLIENT_FIXTURE = """
import pytest
from openai import OpenAI

@pytest.fixture
def client():
    # made before the test runs: it reads OPENAI_BASE_URL and OPENAI_API_KEY now
    with OpenAI(max_retries=0) as c:
        yield c

def ask(client, text):
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
    ).choices[0].message.content
"""

MARKED_WITH_A_CLIENT_FIXTURE = (
    CLIENT_FIXTURE
    + """
pytestmark = pytest.mark.llmtap

def test_module_marked(client):
    assert "module" in ask(client, "module")

@pytest.mark.llmtap
def test_function_marked(client):
    assert "function" in ask(client, "function")
"""
)


def test_marked_tests_fixtures_see_the_proxy(
    pytester: pytest.Pytester, upstream_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The marker sets llmtap up before the test's own fixtures, as a first argument would:
    a `client` fixture builds its OpenAI() against llmtap, and with the dummy key on replay."""
    pytester.makepyfile(test_llm=MARKED_WITH_A_CLIENT_FIXTURE)
    cassettes = record_then_replay(pytester, upstream_server, monkeypatch, passed=2)
    assert cassettes == ["test_function_marked.yaml", "test_module_marked.yaml"]


def test_auto_replays_what_is_recorded_without_a_key(
    pytester: pytest.Pytester, upstream_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SPEC 5, replay needs no key: in auto mode too, when everything is in the cassettes."""
    pytester.makepyfile(test_llm=TEST_FILE.replace("PROMPT", "keyless"))
    record_then_replay(pytester, upstream_server, monkeypatch, 2, replay=("--llmtap-mode=auto",))


def test_one_cassette_folder_keeps_same_named_modules_apart(
    pytester: pytest.Pytester, upstream_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tests/unit/test_api.py and tests/integration/test_api.py under --llmtap-cassettes DIR:
    each module's cassettes under its path below the rootdir, not both under DIR/test_api."""
    for package in ("unit", "integration"):
        (pytester.path / "tests" / package).mkdir(parents=True)
        for module, text in (("__init__", ""), ("test_api", TEST_FILE.replace("PROMPT", package))):
            (pytester.path / "tests" / package / f"{module}.py").write_text(text)
    (pytester.path / "tests" / "__init__.py").write_text("")
    one_folder = ("--llmtap-cassettes", "recorded")
    written = record_then_replay(
        pytester, upstream_server, monkeypatch, 4, *one_folder, folder="recorded"
    )
    assert written == [
        f"tests/{package}/test_api/{test}.yaml"
        for package in ("integration", "unit")
        for test in ("test_answer", "test_marked")
    ]
    assert "unit" in (pytester.path / "recorded" / written[2]).read_text()


def test_a_replay_miss_names_the_cassette_and_how_to_record(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_llm=TEST_FILE.replace("PROMPT", "unrecorded"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "test_answer")
    result.assert_outcomes(failed=1)
    cassette = pytester.path / "cassettes" / "test_llm" / "test_answer.yaml"
    result.stdout.fnmatch_lines(
        [
            "*llmtap replay miss*",
            f"the request was not in the cassette {cassette} (no such file yet); record it "
            "with `pytest --llmtap-mode record`*",
        ]
    )


def test_one_cassette_folder_is_the_same_from_any_folder_pytest_runs_in(
    pytester: pytest.Pytester, upstream_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an ini file, pytest's rootdir is the folder it runs from: a cassette under it
    moved with that (`DIR/tests/unit/test_api/...` from the project, `DIR/test_api/...` from
    tests/unit), and a replay from the other folder missed. The project (here the folder with
    `.git`) anchors it; a cassette in the layout before (`DIR/<module>/`) is still read."""
    (pytester.path / ".git").mkdir()
    unit = pytester.path / "tests" / "unit"
    unit.mkdir(parents=True)
    (unit / "test_api.py").write_text(TEST_FILE.replace("PROMPT", "anchored"))
    folder = pytester.path / "recorded"
    args = ("-p", "no:cacheprovider", f"--llmtap-cassettes={folder}", "tests/unit/test_api.py")
    recorded = pytester.runpytest_subprocess(
        "--llmtap-mode=record", f"--llmtap-upstream={upstream_server.url}/v1", *args
    )
    recorded.assert_outcomes(passed=2)
    assert (folder / "tests" / "unit" / "test_api" / "test_answer.yaml").exists()
    upstream_server.stop()
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.chdir(unit)
    inside = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", f"--llmtap-cassettes={folder}", "test_api.py"
    )
    inside.assert_outcomes(passed=2)
    # the layout before: the module's name alone under DIR
    (folder / "tests" / "unit" / "test_api").rename(folder / "test_api")
    monkeypatch.chdir(pytester.path)
    earlier = pytester.runpytest_subprocess(*args)
    earlier.assert_outcomes(passed=2)


def test_a_long_parametrize_id_gets_a_cassette_a_file_system_takes(
    pytester: pytest.Pytester, upstream_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 300-character id (a prompt as its own id): "File name too long" lost the recording."""
    prompt = "Summarise " + "the quarterly report " * 15
    pytester.makepyfile(
        test_llm=TEST_FILE.split("def test_answer")[0]
        + f"""
@pytest.mark.parametrize("text", [{prompt!r}], ids=lambda text: text)
def test_long(llmtap, text):
    assert ask(text)
"""
    )
    (written,) = record_then_replay(pytester, upstream_server, monkeypatch, 1)
    assert len(written.rsplit("/", 1)[-1].encode()) <= 255


def test_a_swallowed_replay_miss_fails_the_test(pytester: pytest.Pytester) -> None:
    """Code that catches the miss's 404 (a fallback) passed, with a stale cassette."""
    pytester.makepyfile(
        test_llm=TEST_FILE.split("def test_answer")[0]
        + """
import openai

def test_falls_back(llmtap):
    try:
        ask("not recorded")
    except openai.NotFoundError:
        pass  # the code under test has a fallback
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*1 request(s) were not in the cassette*no recording matches*"])


def test_the_unused_summary_and_stale_cassettes_under_xdist(
    pytester: pytest.Pytester, upstream_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The summary of unused recordings came from each worker's memory: under pytest-xdist it
    was never printed. A test that no longer calls the API has its cassette removed when
    recorded again (it stayed, unused, in git)."""
    pytester.makepyfile(test_llm=TEST_FILE.replace("PROMPT", "hello"))
    record = ("--llmtap-mode=record", f"--llmtap-upstream={upstream_server.url}/v1")
    pytester.runpytest_subprocess(*record, "-p", "no:cacheprovider").assert_outcomes(passed=2)
    fewer = TEST_FILE.replace("PROMPT", "hello").replace(
        '        client.embeddings.create(model="text-embedding-3-small", input="EXTRA")\n', ""
    )
    pytester.makepyfile(test_llm=fewer)
    parallel = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    parallel.assert_outcomes(passed=2)
    parallel.stdout.fnmatch_lines(["*recordings no test used*", "*test_marked: 1 unused*"])
    answer = pytester.path / "cassettes" / "test_llm" / "test_answer.yaml"
    assert answer.exists()
    broken = fewer.replace('    assert "hello" in ask("hello")', '    raise RuntimeError("x")')
    pytester.makepyfile(test_llm=broken)
    pytester.runpytest_subprocess(*record, "-p", "no:cacheprovider").assert_outcomes(
        passed=1, failed=1
    )
    assert answer.exists()  # a test that failed before its call keeps its recordings
    pytester.makepyfile(test_llm=fewer.replace('    assert "hello" in ask("hello")', "    pass"))
    pytester.runpytest_subprocess(*record, "-p", "no:cacheprovider").assert_outcomes(passed=2)
    assert not answer.exists()


def test_auto_without_a_key_keeps_no_refusal_of_the_dummy_key(
    pytester: pytest.Pytester, upstream_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Auto with no key forwards with the dummy key; the upstream's 401 to it went into the
    cassette and was replayed from then on, a real key or not."""
    monkeypatch.delenv("OPENAI_API_KEY")
    pytester.makepyfile(
        test_llm="""
import openai
from openai import OpenAI

def test_refused(llmtap):
    # the simulator takes any key: it says 401 here as OpenAI does to the dummy one
    with OpenAI(max_retries=0, default_headers={"x-simulator-fault": "status-401"}) as client:
        try:
            client.models.list()
        except openai.AuthenticationError:
            pass
"""
    )
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--llmtap-mode=auto",
        f"--llmtap-upstream={upstream_server.url}/v1",
    )
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "cassettes" / "test_llm" / "test_refused.yaml").exists()


def test_a_relative_cassettes_folder_in_the_ini_file_is_below_the_rootdir(
    pytester: pytest.Pytester, upstream_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`llmtap_cassettes = recorded` (or `--llmtap-cassettes recorded` in addopts) followed the
    folder pytest ran from: `cd tests && pytest` missed every recording."""
    pytester.makeini("[pytest]\nllmtap_cassettes = recorded\n")
    tests = pytester.path / "tests"
    tests.mkdir()
    (tests / "test_api.py").write_text(TEST_FILE.replace("PROMPT", "anchored"))
    pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "--llmtap-mode=record",
        f"--llmtap-upstream={upstream_server.url}/v1",
    ).assert_outcomes(passed=2)
    assert (pytester.path / "recorded" / "tests" / "test_api" / "test_answer.yaml").exists()
    upstream_server.stop()
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.chdir(tests)
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_api.py").assert_outcomes(passed=2)


BUDGET_TEST = """
import json, os
from openai import OpenAI

def test_budget(llmtap):
    assert llmtap.usage().calls == 0
    with OpenAI(max_retries=0) as client:
        for _ in range(2):  # the same request twice: replayed twice
            client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "budget"}])
        chats = llmtap.usage()
        assert chats.calls == 2 and chats.output_tokens > 0
        stream = client.chat.completions.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "streamed"}])
        for _ in stream:
            pass
        streamed = llmtap.usage()  # usage llmtap asked for, though the client did not
        assert streamed.output_tokens > chats.output_tokens
        client.embeddings.create(model="text-embedding-3-small", input="tokens")
        embedded = llmtap.usage()
        assert embedded.input_tokens > streamed.input_tokens
        assert embedded.output_tokens == streamed.output_tokens
        client.models.list()  # not a call with tokens
    used = llmtap.usage()
    assert used.total_tokens < 10_000  # the budget a user would write
    with open(os.environ["USAGE_OUT"], "a") as out:
        out.write(json.dumps([used.calls, used.input_tokens, used.output_tokens,
                              used.total_tokens, used.cost]) + "\\n")
"""


def test_a_tests_usage_and_cost_are_the_same_recorded_and_replayed(
    pytester: pytest.Pytester, upstream_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    out = pytester.path / "usage.jsonl"
    monkeypatch.setenv("USAGE_OUT", str(out))
    pytester.makepyfile(test_budget=BUDGET_TEST)
    pytester.runpytest_subprocess(
        "--llmtap-mode=record", f"--llmtap-upstream={upstream_server.url}/v1"
    ).assert_outcomes(passed=1)
    upstream_server.stop()
    pytester.runpytest_subprocess().assert_outcomes(passed=1)  # replayed, offline
    recorded, replayed = (json.loads(line) for line in out.read_text().splitlines())
    calls, tokens_in, tokens_out, total, cost = recorded
    assert calls == 5  # 2 chats, the stream, the embedding, the model list
    assert tokens_in > 0 and tokens_out > 0 and total == tokens_in + tokens_out
    assert cost is not None and cost > 0  # gpt-4o-mini's price is known
    assert replayed == recorded


CLIENT_BEFORE_LLMTAP = (
    CLIENT_FIXTURE
    + """
def test_client_listed_first(client, llmtap):
    assert "first" in ask(client, "first")

@pytest.mark.llmtap
class TestSetUp:
    def setup_method(self, method):
        self.client = OpenAI(max_retries=0)

    def teardown_method(self, method):
        self.client.close()

    def test_setup_method(self):
        assert "setup" in ask(self.client, "setup")
"""
)


def test_a_client_made_before_the_llmtap_argument_or_in_setup_method_sees_it(
    pytester: pytest.Pytester, upstream_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`def test_x(client, llmtap)` set the client up first, and a class's `setup_method` ran
    before the marker's llmtap: their OpenAI() went to the real API (a connection error here,
    "Missing credentials" in replay), and a passing recording run removed the cassette."""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # the "real API": dead
    pytester.makepyfile(test_llm=CLIENT_BEFORE_LLMTAP)
    cassettes = record_then_replay(pytester, upstream_server, monkeypatch, passed=2)
    assert cassettes == ["TestSetUp/test_setup_method.yaml", "test_client_listed_first.yaml"]


NO_CALL_THROUGH_LLMTAP = """
def test_no_call(llmtap):
    pass
"""


def test_recording_a_test_that_made_no_call_through_llmtap_says_so(
    pytester: pytest.Pytester, upstream_server: ServerThread
) -> None:
    """Its cassette is removed (the test calls the API no more), and the summary says so: a
    client made before the fixture, at import or in a wider fixture, goes to the API directly."""
    folder = pytester.path / "cassettes" / "test_llm"
    folder.mkdir(parents=True)
    (folder / "test_no_call.yaml").write_text("exchanges: []\n")
    pytester.makepyfile(test_llm=NO_CALL_THROUGH_LLMTAP)
    result = pytester.runpytest_subprocess(
        "--llmtap-mode=record",
        f"--llmtap-upstream={upstream_server.url}/v1",
        "-W",
        "error",  # a warning in the fixture's teardown was an error then
    )
    result.assert_outcomes(passed=1)
    assert not (folder / "test_no_call.yaml").exists()
    out = result.stdout.str()
    assert "llmtap: cassettes removed" in out and "test_no_call.yaml" in out
    assert "made no request through llmtap while recording" in out


TWICE = (
    ASK
    + """
def test_twice(llmtap):
    first, second = ask("twice"), ask("twice")
    assert "twice" in first and "twice" in second
"""
)
ONCE = TWICE.replace('first, second = ask("twice"), ask("twice")', 'first = second = ask("twice")')


def test_auto_records_a_repeated_call_once_its_recordings_are_used_up(
    pytester: pytest.Pytester, upstream_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto replays what is recorded and records the rest: the second of two identical calls
    repeated the first's recording instead, and was never recorded, so a replay run with
    `replay_exhausted = miss` failed."""
    pytester.makepyfile(test_llm=ONCE)
    args = ["--llmtap-mode=auto", f"--llmtap-upstream={upstream_server.url}/v1"]
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)  # one call recorded
    pytester.makepyfile(test_llm=TWICE)  # the test now makes it twice
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)
    cassette = (pytester.path / "cassettes" / "test_llm" / "test_twice.yaml").read_text()
    assert cassette.count("method: POST") == 2
    upstream_server.stop()
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("LLMTAP_REPLAY_EXHAUSTED", "miss")  # read by each test's llmtap
    replayed = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    replayed.assert_outcomes(passed=1)
    monkeypatch.setenv("LLMTAP_REPLAY_EXHAUSTED", "never")
    refused = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert "LLMTAP_REPLAY_EXHAUSTED: replay_exhausted must be one of repeat, miss" in (
        refused.stdout.str() + refused.stderr.str()
    )


def test_an_extra_identical_call_is_a_miss_with_replay_exhausted_miss(
    pytester: pytest.Pytester, upstream_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LLMTAP_REPLAY_EXHAUSTED reaches a test's llmtap (the plugin read no setting but its
    own options): with `miss`, a call more than the cassette holds fails the test."""
    pytester.makepyfile(test_llm=ONCE)
    pytester.runpytest_subprocess(
        "--llmtap-mode=record", f"--llmtap-upstream={upstream_server.url}/v1"
    ).assert_outcomes(passed=1)
    pytester.makepyfile(test_llm=TWICE)
    monkeypatch.delenv("OPENAI_API_KEY")
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)  # repeat
    monkeypatch.setenv("LLMTAP_REPLAY_EXHAUSTED", "miss")
    missed = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    missed.assert_outcomes(failed=1)
    assert "already used" in missed.stdout.str()
