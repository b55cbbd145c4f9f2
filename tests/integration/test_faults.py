"""Fault injection (`llmtap-fault`, proxy/faults.py and proxy/stream_cut.py) with the real
SDK, a real llmtap over the simulator, real SQLite: record, then replay offline."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from llmtap.proxy.faults import parse_fault
from tests.conftest import TEST_KEY, Proxy

DEAD_UPSTREAM = "http://127.0.0.1:9/v1"
"""Nothing listens there: a fault answered without the upstream is the only way to succeed."""
HELLO = [{"role": "user", "content": "hello"}]
MODES = ["record", "replay", "auto", "off"]


def sdk(proxy: Proxy, **options: Any) -> OpenAI:
    return OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, **{"max_retries": 0, **options})


def fault(kind: str) -> dict[str, Any]:
    return {"extra_headers": {"llmtap-fault": kind}}


def chat(client: OpenAI, kind: str | None = None, **params: Any) -> Any:
    extra = fault(kind) if kind else {}
    return client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, **extra, **params)


def fault_rows(proxy: Proxy) -> list[Any]:
    return proxy.query(
        "SELECT x.status, x.error, s.status_code, s.status_message, s.attributes "
        "FROM exchanges x LEFT JOIN spans s ON s.exchange_id = x.exchange_id "
        "WHERE x.error LIKE 'injected by llmtap%' ORDER BY x.rowid"
    )


# --------------------------------------------------------------------- status faults


@pytest.mark.parametrize("mode", MODES)
def test_429_in_openai_shape_without_the_upstream_in_every_mode(
    start_proxy: Callable[..., Proxy], mode: str
) -> None:
    proxy = start_proxy(upstream=DEAD_UPSTREAM, mode=mode)
    with sdk(proxy) as client, pytest.raises(openai.RateLimitError) as caught:
        chat(client, "429")
    response = caught.value.response
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.json() == {
        "error": {
            "message": "Rate limit reached for requests (injected by llmtap)",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    if mode == "off":  # forward only: nothing is written
        return
    [(status, error, code, message, attributes)] = fault_rows(proxy)
    assert (status, error, code) == (429, "injected by llmtap: 429; retry-after=1", "ERROR")
    assert json.loads(attributes)["llmtap.fault"] == "429"


@pytest.mark.parametrize(
    ("kind", "raised", "status", "type_"),
    [
        ("500", openai.InternalServerError, 500, "server_error"),
        ("503", openai.InternalServerError, 503, "server_error"),
        ("404", openai.NotFoundError, 404, "invalid_request_error"),
        ("418", openai.APIStatusError, 418, "invalid_request_error"),
        ("529; retry-after=0.2", openai.InternalServerError, 529, "server_error"),
    ],
)
def test_any_status(
    start_proxy: Callable[..., Proxy], kind: str, raised: type, status: int, type_: str
) -> None:
    proxy = start_proxy(upstream=DEAD_UPSTREAM)
    with sdk(proxy) as client, pytest.raises(raised) as caught:
        chat(client, kind)
    assert caught.value.status_code == status
    body = caught.value.response.json()["error"]
    assert body["type"] == type_ and body["message"].endswith("(injected by llmtap)")
    assert caught.value.response.headers.get("retry-after") == ("0.2" if "retry" in kind else None)


def test_disconnect_is_a_connection_error(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(upstream=DEAD_UPSTREAM)
    with sdk(proxy) as client:
        with pytest.raises(openai.APIConnectionError):
            chat(client, "disconnect")
        with pytest.raises(openai.APIConnectionError):  # streamed alike
            chat(client, "disconnect", stream=True)
    rows = fault_rows(proxy)
    assert [(r["status"], r["status_code"]) for r in rows] == [(None, "ERROR")] * 2
    assert json.loads(rows[0]["attributes"])["llmtap.fault"] == "disconnect"


def test_timeout_lets_the_sdk_time_out_first(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(upstream=DEAD_UPSTREAM)
    started = time.monotonic()
    with sdk(proxy, timeout=0.3) as client, pytest.raises(openai.APITimeoutError):
        chat(client, "timeout=30")
    assert time.monotonic() - started < 5
    with sdk(proxy) as client, pytest.raises(openai.InternalServerError) as caught:
        chat(client, "timeout=0.2")  # held, then llmtap's own 504
    assert caught.value.status_code == 504
    assert caught.value.response.json()["error"]["type"] == "llmtap_upstream_error"
    rows = fault_rows(proxy)
    assert [r["error"] for r in rows] == [
        "injected by llmtap: timeout=30; the client left first",
        "injected by llmtap: timeout=0.2",
    ]


def test_an_unknown_fault_is_a_400_naming_the_kinds(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(upstream=DEAD_UPSTREAM)
    with sdk(proxy) as client:
        for kind in ("teapot", "200", "timeout", "disconnect=2", "500; retry=1"):
            with pytest.raises(openai.BadRequestError) as caught:
                chat(client, kind)
            assert f"llmtap-fault {kind!r}" in caught.value.message, kind
        with pytest.raises(openai.BadRequestError) as caught:
            chat(client, "stream-error")  # not streamed
        assert "cuts a stream" in caught.value.message
    assert "the kinds: STATUS" in str(pytest.raises(ValueError, parse_fault, "x").value)


# --------------------------------------------------------------------- stream faults


def streamed(client: OpenAI, kind: str | None, got: list[str]) -> None:
    """Read a streamed answer into `got` (the content of each chunk) until it ends or raises."""
    for chunk in chat(client, kind, stream=True):
        if chunk.choices:
            got.append(chunk.choices[0].delta.content or "")


def record_then_replay(
    start_proxy: Callable[..., Proxy], tmp_path: Path, calls: Callable[[Proxy], Any]
) -> tuple[Any, Any, Proxy]:
    db = str(tmp_path / "shared.db")
    recording = start_proxy(db=db)
    recorded = calls(recording)
    recording.flush()
    recording.server.stop()
    replaying = start_proxy(db=db, mode="replay", upstream=DEAD_UPSTREAM)
    return recorded, calls(replaying), replaying


def test_stream_error_after_the_first_events_recorded_and_replayed(
    start_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    def calls(proxy: Proxy) -> tuple[list[str], str, list[str], list[str]]:
        cut: list[str] = []
        with sdk(proxy) as client:
            with pytest.raises(openai.APIError) as caught:
                streamed(client, "stream-error", cut)
            two: list[str] = []
            with pytest.raises(openai.APIError):
                streamed(client, "stream-error=2", two)
            whole: list[str] = []
            streamed(client, None, whole)
        return cut, caught.value.message, two, whole

    recorded, replayed, replaying = record_then_replay(start_proxy, tmp_path, calls)
    assert recorded == replayed
    cut, message, two, whole = recorded
    assert cut == whole[:1] and two == whole[:2] and len(whole) > 3
    assert message.endswith("(injected by llmtap)")
    # the upstream's answers are kept whole (they replay, cut again), their spans say the fault
    spans = replaying.query(
        "SELECT s.status_code, s.status_message, s.attributes, x.error FROM spans s "
        "JOIN exchanges x USING (exchange_id) ORDER BY s.start_time_ns"
    )
    cut_in_replay = "injected by llmtap: stream-error={} (a replayed answer cut)"
    assert [(s["status_code"], s["error"]) for s in spans] == [
        ("ERROR", None),
        ("ERROR", None),
        ("OK", None),
        ("ERROR", cut_in_replay.format(1)),  # (the replaying llmtap records on the same file)
        ("ERROR", cut_in_replay.format(2)),
    ]
    assert json.loads(spans[0]["attributes"])["llmtap.fault"] == "stream-error"
    assert "stream-error" in spans[0]["status_message"]
    assert "llmtap.fault" not in json.loads(spans[2]["attributes"])


def test_stream_error_ends_a_responses_stream_with_its_error_event(
    start_proxy: Callable[..., Proxy],
) -> None:
    """The Responses API ends a failing stream with an `error` event the SDK yields as one
    (before: its `type` was the error's own, server_error: an unknown event to the SDK)."""
    proxy = start_proxy()
    with sdk(proxy) as client:
        events = list(
            client.responses.create(
                model="gpt-4o-mini", input="hello", stream=True, **fault("stream-error=2")
            )
        )
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    last = events[-1]
    assert len(events) == 3 and last.type == "error"
    assert last.code == "server_error" and "injected by llmtap" in last.message
    assert last.sequence_number == 2


def test_stream_cut_closes_the_connection_after_the_first_events(
    start_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    def calls(proxy: Proxy) -> tuple[list[str], list[str]]:
        cut: list[str] = []
        with sdk(proxy) as client:
            with pytest.raises(openai.APIConnectionError):
                streamed(client, "stream-cut=3", cut)
            whole: list[str] = []
            streamed(client, None, whole)
        return cut, whole

    recorded, replayed, _ = record_then_replay(start_proxy, tmp_path, calls)
    assert recorded == replayed
    cut, whole = recorded
    assert cut == whole[:3]


def test_stream_faults_stop_before_done_and_at_zero(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy()
    with httpx.Client(base_url=proxy.base_url) as http:
        body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
        whole = http.post("/chat/completions", json=body).text
        events = [e for e in whole.split("\n\n") if e]
        late = http.post(
            "/chat/completions", json=body, headers={"llmtap-fault": "stream-error=999"}
        )
        first = http.post(
            "/chat/completions", json=body, headers={"llmtap-fault": "stream-error=0"}
        )
    assert events[-1] == "data: [DONE]"
    got = [e for e in late.text.split("\n\n") if e]
    assert len(got) == len(events) and '"finish_reason":"stop"' in got[-2]  # all but [DONE]
    assert got[-1].startswith('data: {"error":')
    assert (
        first.text.startswith('data: {"error":') and first.headers["llmtap-fault"] == "stream-error"
    )


def test_a_replayed_stream_cut_is_recorded_as_a_failure(
    start_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    db = str(tmp_path / "shared.db")
    with sdk(start_proxy(db=db)) as client:
        streamed(client, None, [])
    replaying = start_proxy(db=db, mode="replay", upstream=DEAD_UPSTREAM)
    with sdk(replaying) as client, pytest.raises(openai.APIError):
        streamed(client, "stream-error", [])
    [row] = fault_rows(replaying)
    assert row["error"] == "injected by llmtap: stream-error=1 (a replayed answer cut)"
    assert json.loads(row["attributes"])["llmtap.fault"] == "stream-error"


# ------------------------------------------------------------ armed, and no fault at all


def test_armed_faults_answer_the_next_requests(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy()
    proxy.app.faults.arm(parse_fault("500"), times=2)
    with sdk(proxy) as client:
        for _ in range(2):
            with pytest.raises(openai.InternalServerError):
                chat(client)
        assert chat(client).choices[0].message.content
    with sdk(proxy, max_retries=2) as client:  # the SDK's own retries get past them
        proxy.app.faults.arm(parse_fault("429; retry-after=0.01"), times=2)
        assert chat(client).choices[0].message.content
    assert not proxy.app.faults.queue


def test_requests_without_a_fault_are_unchanged(
    start_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    """Byte for byte through the same server, before and after faults were answered."""
    db = tmp_path / "shared.db"
    with sdk(start_proxy(db=str(db))) as client:
        chat(client)
        streamed(client, None, [])
    proxy = start_proxy(db=str(db), mode="replay", replay_exhausted="repeat")
    body = {"model": "gpt-4o-mini", "messages": HELLO}

    def answers() -> list[tuple[int, list[tuple[str, str]], bytes]]:
        with httpx.Client(base_url=proxy.base_url) as http:
            got = []
            for stream in (False, True):
                r = http.post("/chat/completions", json={**body, "stream": stream})
                got.append((r.status_code, r.headers.multi_items(), r.content))
            return got

    before = answers()
    with sdk(proxy) as client:
        for kind in ("429", "stream-error", "stream-cut"):
            with pytest.raises(openai.APIError):
                if kind.startswith("stream"):
                    streamed(client, kind, [])
                else:
                    chat(client, kind)
    assert answers() == before
    assert all(status == 200 for status, _, _ in before)
    assert not any(name == "llmtap-fault" for _, headers, _ in before for name, _ in headers)


def test_a_timeout_held_when_llmtap_stops_is_recorded(
    start_proxy: Callable[..., Proxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping past its grace cancels a `timeout` held: the fault is still recorded, as a
    request the upstream had not answered is (before: nothing, though the log said so)."""
    import contextlib
    import sqlite3
    import threading

    from llmtap.proxy import app as app_module

    monkeypatch.setattr(app_module, "SHUTDOWN_GRACE_S", 0.5)
    proxy = start_proxy()

    def hold() -> None:
        with contextlib.suppress(httpx.HTTPError):  # (the server closes on it when it stops)
            httpx.post(
                f"{proxy.base_url}/chat/completions",
                json={"model": "gpt-4o-mini", "messages": HELLO},
                headers={"llmtap-fault": "timeout=30"},
                timeout=60,
            )

    held = threading.Thread(target=hold, daemon=True)
    held.start()
    time.sleep(0.5)
    proxy.server.stop()  # (the app's shutdown drains its writer first)
    conn = sqlite3.connect(proxy.db)
    errors = [row[0] for row in conn.execute("SELECT error FROM exchanges")]
    conn.close()
    assert errors == ["injected by llmtap: timeout=30; llmtap stopped first"]
