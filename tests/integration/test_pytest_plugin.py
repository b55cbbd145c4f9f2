"""The pytest plugin, run the way users run it: pytest in a subprocess, through its entry point."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmtap.proxy.server import ServerThread
from llmtap.proxy.simulator import create_simulator

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


@pytest.fixture
def upstream_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerThread]:
    """The simulator as the API to record from; recording needs a key, as against OpenAI."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-recording-key-000000000000")
    with ServerThread(create_simulator()) as server:
        yield server


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
