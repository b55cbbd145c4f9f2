"""Upstream faults, each while other requests are in flight: the client gets what the upstream
sent or a clear OpenAI-style error, the proxy stays up, and the trace says what happened."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Proxy

BODY = {
    "model": "gpt-4o-mini",
    "stream": True,
    "messages": [{"role": "user", "content": "tell me a long story about faults"}],
}


@pytest.fixture
def fast_timeouts(start_proxy: Any) -> Proxy:
    return start_proxy(read_timeout=0.5)


@pytest.fixture
def background(fast_timeouts: Proxy) -> Iterator[list[int]]:
    """Ordinary requests in flight all along; each must be served in full."""
    statuses: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                r = client.post(
                    f"{fast_timeouts.base_url}/chat/completions", json={**BODY, "stream": False}
                )
                statuses.append(r.status_code)

    worker = threading.Thread(target=loop)
    worker.start()
    yield statuses
    stop.set()
    worker.join(15)
    assert statuses and set(statuses) == {200}, statuses


def last_span(proxy: Proxy) -> dict[str, Any]:
    proxy.flush()
    rows = proxy.query(
        "SELECT span_id FROM spans WHERE inputs LIKE '%\"stream\":true%' "
        "ORDER BY start_time_ns DESC LIMIT 1"
    )
    trace_id = proxy.query("SELECT trace_id FROM spans WHERE span_id = ?", rows[0][0])[0][0]
    spans = httpx.get(f"{proxy.url}/api/traces/{trace_id}").json()["spans"]
    return spans[-1]


def fetch(proxy: Proxy, fault: str) -> tuple[int | None, bytes, Exception | None]:
    try:
        with httpx.stream(
            "POST",
            f"{proxy.base_url}/chat/completions",
            json=BODY,
            headers={"x-simulator-fault": fault},
            timeout=10,
        ) as r:
            data = b""
            try:
                for piece in r.iter_raw():
                    data += piece
            except httpx.HTTPError as exc:
                return r.status_code, data, exc
            return r.status_code, data, None
    except httpx.HTTPError as exc:
        return None, b"", exc


CASES = [
    # fault, status the client sees, the stream breaks, span status, span message contains
    # it had the request: "could not reach" would send the user to look at their network
    ("reset-before-headers", 502, False, "ERROR", "took the request and closed the connection"),
    ("reset-mid-stream", 200, True, "ERROR", "upstream broke mid-response"),
    # every choice finished, only [DONE] missing (some providers never send it): whole
    ("no-done", 200, False, "OK", ""),
    # an event the SDK cannot parse (it raises there): the call failed for the client
    ("malformed-chunk", 200, False, "ERROR", "not JSON"),
    ("error-event", 200, False, "ERROR", "error"),
    ("status-429", 429, False, "ERROR", "Rate limit"),
    ("status-500", 500, False, "ERROR", "server had an error"),
    ("slow-first-byte-ms=2000", 504, False, "ERROR", "did not answer in time"),
    ("stall-mid-stream-ms=2000", 200, True, "ERROR", "mid-response: timeout (no data for"),
    ("garbage", 200, False, "ERROR", "not a JSON object"),
]


@pytest.mark.parametrize(
    ("fault", "status", "breaks", "code", "message"), CASES, ids=[c[0] for c in CASES]
)
def test_upstream_fault(
    fast_timeouts: Proxy,
    background: list[int],
    fault: str,
    status: int,
    breaks: bool,
    code: str,
    message: str,
) -> None:
    got_status, data, error = fetch(fast_timeouts, fault)
    assert got_status == status
    assert (error is not None) == breaks, error
    if status in (502, 504):
        body = httpx.Response(status, content=data).json()
        assert body["error"]["type"] == "llmtap_upstream_error"
    span = last_span(fast_timeouts)
    assert span["status"]["code"] == code
    assert message.lower() in span["status"]["message"].lower()
    if fault == "no-done":  # all of it
        content = span["outputs"]["choices"][0]["message"]["content"]
        assert content == "Hello! You said: tell me a long story about faults"
    if breaks or fault == "error-event":
        # an ERROR span keeps the partial output that had arrived
        content = span["outputs"]["choices"][0]["message"]["content"]
        assert content and content in "Hello! You said: tell me a long story about faults"
    if fault == "malformed-chunk":
        assert span["attributes"]["llmtap.reassembly_problems"]
    if fault == "status-429":
        assert span["attributes"]["http_status"] == 429
    health = httpx.get(f"{fast_timeouts.url}/api/health").json()
    assert health["status"] == "ok" and health["store"]["ok"]
