"""`llmtap.fault()` of the pytest fixture, run the way users run it: pytest in a subprocess,
recorded against the simulator, then replayed offline with no key."""

from __future__ import annotations

import pytest

from llmtap.proxy.server import ServerThread
from llmtap.recorder.cassettes import load_cassette

TEST_FILE = """
import openai
import pytest
from openai import OpenAI

HELLO = [{"role": "user", "content": "hello"}]


def test_retries_get_past_rate_limits(llmtap):
    llmtap.fault("429; retry-after=0.01", times=2)
    with OpenAI() as client:  # the SDK's default retries: 2
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert "hello" in answer.choices[0].message.content
    assert llmtap.usage().calls == 1  # the faults were no calls


def test_too_many_server_errors_raise(llmtap):
    llmtap.fault("500", times=3)
    with OpenAI(max_retries=2) as client:
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert llmtap.usage().calls == 0


def test_a_broken_stream_is_tried_again(llmtap):
    llmtap.fault("stream-error")
    with OpenAI(max_retries=0) as client:
        def ask():
            stream = client.chat.completions.create(
                model="gpt-4o-mini", messages=HELLO, stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        with pytest.raises(openai.APIError, match="injected by llmtap"):
            ask()
        assert "hello" in ask()


def test_a_dropped_connection_is_tried_again(llmtap):
    llmtap.fault("disconnect")
    with OpenAI(max_retries=1) as client:
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert "hello" in answer.choices[0].message.content


def test_an_unknown_fault_fails_at_once(llmtap):
    with pytest.raises(ValueError, match="the kinds"):
        llmtap.fault("teapot")
"""


def test_faults_record_then_replay_offline(
    pytester: pytest.Pytester, upstream_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_retries=TEST_FILE)
    recorded = pytester.runpytest_subprocess(
        "--llmtap-mode=record",
        f"--llmtap-upstream={upstream_server.url}/v1",
        "-p",
        "no:cacheprovider",
    )
    recorded.assert_outcomes(passed=5)
    folder = pytester.path / "cassettes" / "test_retries"
    cassettes = {c.name: c.read_text() for c in folder.glob("*.yaml")}
    # the faults are not in them: one answer each, two for the stream tried twice
    assert sorted(cassettes) == [
        "test_a_broken_stream_is_tried_again.yaml",
        "test_a_dropped_connection_is_tried_again.yaml",
        "test_retries_get_past_rate_limits.yaml",
    ]
    assert all("injected by llmtap" not in text for text in cassettes.values())
    exchanges = {name: len(load_cassette(folder / name)) for name in cassettes}
    assert exchanges == {
        "test_a_broken_stream_is_tried_again.yaml": 2,  # the cut one is replayed cut again
        "test_a_dropped_connection_is_tried_again.yaml": 1,
        "test_retries_get_past_rate_limits.yaml": 1,
    }
    upstream_server.stop()  # replay needs neither the upstream nor a key
    monkeypatch.delenv("OPENAI_API_KEY")
    replayed = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    replayed.assert_outcomes(passed=5)
    assert "recordings no test used" not in replayed.stdout.str()
