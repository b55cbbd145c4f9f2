"""Predict's upstream calls: retried on a rate limit or a passing failure as the OpenAI SDK
retries, embeddings sent in requests OpenAI takes, a version marked used by its predictions,
and trace ids only for traces that exist. A real llmtap in front of the simulator, or of an
upstream answering exact bytes (tests/raw_upstream.py) where a failure must come on cue."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner

from llmtap.proxy.cli_models import predict as predict_command
from tests.conftest import TEST_KEY, Proxy
from tests.raw_upstream import RawUpstream, Received, chat_completion_body, json_reply, raw_upstream

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def completion(text: str) -> bytes:
    return orjson.dumps(chat_completion_body(text))


def refusal(status: str, extra: bytes = b"") -> bytes:
    body = orjson.dumps({"error": {"message": f"upstream says {status}", "type": "x"}})
    return json_reply(body, status, extra)


@contextmanager
def scripted(*replies: bytes) -> Iterator[RawUpstream]:
    """An upstream that answers its requests with `replies` in turn, then with the last."""

    def answer(request: Received) -> bytes:
        return replies[min(len(upstream.received), len(replies)) - 1]

    with raw_upstream(answer) as upstream:
        yield upstream


def recorded_version(start_proxy: Callable[..., Proxy], upstream: str, **settings: Any) -> Proxy:
    """A llmtap in front of `upstream` with version models:/bot/1 recorded from one call."""
    proxy = start_proxy(upstream=upstream, log_models=True, registered_model_name="bot", **settings)
    sent = httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT, headers=AUTH)
    assert sent.status_code == 200, sent.text
    proxy.flush()
    return proxy


def predict(proxy: Proxy, inputs: Any, name: str = "bot") -> httpx.Response:
    url = f"{proxy.url}/api/models/{name}/versions/1/predict"
    return httpx.post(url, json={"inputs": inputs}, headers=AUTH, timeout=60)


def api(proxy: Proxy, path: str) -> Any:
    proxy.flush()
    response = httpx.get(f"{proxy.url}{path}")
    assert response.status_code == 200, response.text
    return response.json()


def traces_of_predict(proxy: Proxy) -> list[dict[str, Any]]:
    """Every trace predict's calls made, oldest first (each is tagged with the model URI)."""
    listed = api(proxy, "/api/traces?limit=100")["traces"]
    return [t for t in reversed(listed) if t["tags"].get("model_uri") == "models:/bot/1"]


# --- retries ---------------------------------------------------------------------------------


def test_a_rate_limit_and_a_passing_failure_are_retried(
    start_proxy: Callable[..., Proxy],
) -> None:
    """MLflow's pyfunc and the OpenAI SDK send such a call again; predict gave up the whole
    batch on the first 429. The retry waits what `retry-after-ms` asks, else backs off."""
    with scripted(
        json_reply(completion("recorded")),
        refusal("429 Too Many Requests", b"retry-after-ms: 20\r\n"),
        refusal("503 Service Unavailable"),
        json_reply(completion("at last")),
    ) as upstream:
        proxy = recorded_version(start_proxy, f"{upstream.url}/v1")
        answer = predict(proxy, "hi")
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == ["at last"]
        assert len(upstream.received) == 4  # the recording's call and three attempts
    # each attempt is a call of its own, kept; the answer names the one that answered, and
    # only that one ran the version (its lineage and trace_count)
    attempts = traces_of_predict(proxy)
    assert [t["status"] for t in attempts] == ["ERROR", "ERROR", "OK"]
    assert answer.json()["trace_ids"] == [attempts[-1]["trace_id"]]
    version = api(proxy, "/api/models/bot/versions/1")
    assert version["trace_count"] == 2  # the recorded call's and the prediction's
    assert attempts[-1]["trace_id"] in [t["trace_id"] for t in version["traces"]]


def test_a_call_still_failing_after_two_retries_fails_the_prediction(
    start_proxy: Callable[..., Proxy],
) -> None:
    with scripted(json_reply(completion("recorded")), refusal("502 Bad Gateway")) as upstream:
        proxy = recorded_version(start_proxy, f"{upstream.url}/v1")
        answer = predict(proxy, "hi")
        assert len(upstream.received) == 1 + 3  # the first attempt and 2 retries, as the SDK
    assert answer.status_code == 502
    assert answer.json()["error"]["message"] == "upstream says 502 Bad Gateway"
    assert api(proxy, "/api/models/bot/versions/1")["trace_count"] == 1  # none ran it


@pytest.mark.parametrize(
    "reply",
    [
        refusal("429 Too Many Requests", b"retry-after: 60\r\n"),  # longer than predict waits
        refusal("400 Bad Request"),  # a refusal that would come again
        refusal("503 Service Unavailable", b"x-should-retry: false\r\n"),  # the server says so
    ],
    ids=["long-retry-after", "400", "x-should-retry-false"],
)
def test_what_a_retry_would_not_mend_is_not_retried(
    start_proxy: Callable[..., Proxy], reply: bytes
) -> None:
    with scripted(json_reply(completion("recorded")), reply) as upstream:
        proxy = recorded_version(start_proxy, f"{upstream.url}/v1")
        started = time.monotonic()
        answer = predict(proxy, "hi")
        assert len(upstream.received) == 2
    assert answer.status_code in (429, 400, 503) and time.monotonic() - started < 5


def test_a_conflict_and_a_timeout_are_retried_as_the_sdk_retries_them(
    start_proxy: Callable[..., Proxy],
) -> None:
    """408 and 409 besides 429 and 5xx, as the OpenAI SDK's `_should_retry`."""
    with scripted(
        json_reply(completion("recorded")),
        refusal("409 Conflict", b"retry-after-ms: 10\r\n"),
        refusal("408 Request Timeout", b"retry-after-ms: 10\r\n"),
        json_reply(completion("third time")),
    ) as upstream:
        proxy = recorded_version(start_proxy, f"{upstream.url}/v1")
        answer = predict(proxy, "hi")
    assert answer.status_code == 200 and answer.json()["predictions"] == ["third time"]


def closed_port_url() -> str:
    """The URL of a port nothing listens on: each call to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_a_connection_error_is_retried_then_fails_as_before(
    start_proxy: Callable[..., Proxy], upstream: str
) -> None:
    """The CLI in front of an upstream that refuses connections: three attempts (a 502 from
    llmtap for each), each kept as a trace, then the error as before."""
    proxy = recorded_version(start_proxy, upstream)
    proxy.server.stop()
    given = ["models:/bot/1", "hi", "--db", str(proxy.db), "--upstream", closed_port_url()]
    result = CliRunner().invoke(predict_command, given, env={"OPENAI_API_KEY": TEST_KEY})
    assert result.exit_code == 1 and "models:/bot/1:" in result.output, result.output
    attempts = [t for t in all_traces(proxy.db) if t["tags"].get("model_uri") == "models:/bot/1"]
    assert [t["status"] for t in attempts] == ["ERROR"] * 3


def all_traces(db: Path) -> list[dict[str, Any]]:
    from llmtap.recorder.reader import TraceQuery, TraceReader

    return TraceReader(db).list_traces(TraceQuery(limit=100))


# --- embeddings in requests OpenAI takes ---------------------------------------------------


def test_embeddings_go_in_requests_of_at_most_2048_inputs(
    start_proxy: Callable[..., Proxy],
) -> None:
    """OpenAI refuses more than 2,048 inputs in one embeddings request; predict sent every
    row in one. The rows' vectors come back in order all the same."""
    proxy = start_proxy(log_models=True, registered_model_name="vectors")
    body = {"model": "text-embedding-3-small", "input": "seed", "dimensions": 2}
    assert httpx.post(f"{proxy.base_url}/embeddings", json=body, headers=AUTH).status_code == 200
    proxy.flush()
    texts = [f"text {i}" for i in range(2100)]
    answer = predict(proxy, texts, name="vectors")
    assert answer.status_code == 200, answer.text
    vectors, trace_ids = answer.json()["predictions"], answer.json()["trace_ids"]
    sent = [api(proxy, f"/api/traces/{t}")["spans"][0]["inputs"]["input"] for t in trace_ids]
    assert [len(inputs) for inputs in sent] == [2048, 52]
    assert [text for inputs in sent for text in inputs] == texts
    assert len(vectors) == 2100
    for i in (0, 2047, 2048, 2099):  # each row's own vector, wherever its request was
        [alone] = predict(proxy, texts[i], name="vectors").json()["predictions"]
        assert vectors[i] == alone


# --- a prediction uses its version -----------------------------------------------------------


def test_a_prediction_marks_its_version_and_model_used(
    start_proxy: Callable[..., Proxy],
) -> None:
    """As a recorded call does: `last_seen_time` and the model's `updated_time` move, and
    GET /api/models, most recently used first, puts the model first."""
    proxy = start_proxy(log_models=True)
    chat = {**CHAT, "model": "gpt-4o-mini"}
    embed = {"model": "text-embedding-3-small", "input": "x"}
    assert httpx.post(f"{proxy.base_url}/chat/completions", json=chat, headers=AUTH).is_success
    assert httpx.post(f"{proxy.base_url}/embeddings", json=embed, headers=AUTH).is_success
    names = [m["name"] for m in api(proxy, "/api/models")["models"]]
    assert names == ["Default/text-embedding-3-small", "Default/gpt-4o-mini"]
    before = api(proxy, "/api/models/Default/gpt-4o-mini/versions/1")
    answer = predict(proxy, "later", name="Default/gpt-4o-mini")
    assert answer.status_code == 200, answer.text
    after = api(proxy, "/api/models/Default/gpt-4o-mini/versions/1")
    assert after["last_seen_time"] > before["last_seen_time"]
    assert after["last_seen_time"] == after["traces"][0]["request_time"]  # the prediction's
    [first, *_] = api(proxy, "/api/models")["models"]
    assert first["name"] == "Default/gpt-4o-mini"
    assert first["updated_time"] == after["last_seen_time"]


# --- trace ids that exist --------------------------------------------------------------------


def test_no_trace_ids_when_traces_are_not_logged(start_proxy: Callable[..., Proxy]) -> None:
    """With log_traces off predict answered trace ids that GET /api/traces/{id} did not find."""
    proxy = start_proxy(log_models=True, log_traces=False, registered_model_name="bot")
    assert httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT, headers=AUTH).is_success
    proxy.flush()
    answer = predict(proxy, ["a", "b"])
    assert answer.status_code == 200, answer.text
    assert answer.json()["trace_ids"] == []
    assert len(answer.json()["predictions"]) == 2
    assert api(proxy, "/api/traces")["traces"] == []


def cli_predict(proxy: Proxy, *args: str, env: dict[str, str] | None = None) -> Any:
    given = ["models:/bot/1", *args, "--db", str(proxy.db), "--json"]
    return CliRunner().invoke(
        predict_command, given, env={"OPENAI_API_KEY": TEST_KEY, **(env or {})}
    )


def test_cli_predict_reads_settings_as_serve_does(
    start_proxy: Callable[..., Proxy], upstream: str, tmp_path: Path
) -> None:
    """`llmtap predict` built its settings from the defaults: LLMTAP_LOG_TRACES, LLMTAP_MODE
    and the --config file did nothing to it."""
    proxy = recorded_version(start_proxy, upstream)
    proxy.server.stop()
    traces_before = len(all_traces(proxy.db))
    off = cli_predict(proxy, "hi", "--upstream", upstream, env={"LLMTAP_LOG_TRACES": "0"})
    assert off.exit_code == 0, off.output
    assert orjson.loads(off.output)["trace_ids"] == []
    config = tmp_path / "llmtap.toml"
    config.write_text(f'log_traces = false\nupstream = "{upstream}"\nport = 9999\n')
    from_file = cli_predict(proxy, "hi", "--config", str(config))
    assert from_file.exit_code == 0, from_file.output
    assert orjson.loads(from_file.output)["trace_ids"] == []
    assert len(all_traces(proxy.db)) == traces_before  # neither kept a trace
    # replay mode answers from the recording, with no upstream to call (and no new trace)
    replayed = cli_predict(
        proxy, "hello", "--upstream", closed_port_url(), env={"LLMTAP_MODE": "replay"}
    )
    assert replayed.exit_code == 0, replayed.output
    out = orjson.loads(replayed.output)
    assert out["predictions"] == ["Hello! You said: hello"] and out["trace_ids"] == []
    traced = cli_predict(proxy, "hi", "--upstream", upstream)  # the default: traced
    [trace_id] = orjson.loads(traced.output)["trace_ids"]
    assert trace_id in [t["trace_id"] for t in all_traces(proxy.db)]
