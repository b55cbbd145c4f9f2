"""A web page in the user's browser against llmtap (SPEC 6: loopback only by default, which is
meant to keep the recordings and the upstream to the user): a page whose name was rebound to
127.0.0.1 (DNS rebinding), and a page on another origin sending requests that need no preflight."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import Proxy

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "my private prompt"}]}


def port_of(proxy: Proxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


def upstream_saw(simulator: Any) -> list[Any]:
    return httpx.get(f"{simulator.url}/_simulator/requests").json()


def refused(response: httpx.Response, code: str) -> bool:
    error = response.json()["error"]
    return response.status_code == 403 and error["code"] == code and "llmtap" in error["message"]


@pytest.mark.parametrize(
    "path", ["/api/traces", "/v1/chat/completions", "/experiments/e/v1/models", "/", "/api/health"]
)
def test_a_page_rebound_to_loopback_is_refused(proxy: Proxy, simulator: Any, path: str) -> None:
    """The browser of a page on evil.example, whose name now points at 127.0.0.1, sends
    `Host: evil.example:PORT`: same-origin for it, and every recorded prompt readable."""
    httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT).raise_for_status()
    httpx.delete(f"{simulator.url}/_simulator/requests")
    evil = {"host": f"evil.example:{port_of(proxy)}"}
    method = "POST" if path.startswith("/v1") else "GET"
    response = httpx.request(method, proxy.url + path, headers=evil, json=CHAT)
    assert refused(response, "host_not_allowed"), response.text[:300]
    assert "allowed_hosts" in response.json()["error"]["message"]
    assert not upstream_saw(simulator)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LocalHost", "[::1]"])
@pytest.mark.parametrize("with_port", [True, False])
def test_the_loopback_names_are_answered_on_any_port(
    proxy: Proxy, host: str, with_port: bool
) -> None:
    headers = {"host": f"{host}:{port_of(proxy) + 1}" if with_port else host}
    assert httpx.get(f"{proxy.url}/api/health", headers=headers).status_code == 200
    assert httpx.post(f"{proxy.base_url}/chat/completions", headers=headers, json=CHAT).is_success


def test_an_http10_request_without_host_is_served(proxy: Proxy) -> None:
    with socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=10) as sock:
        sock.sendall(b"GET /api/health HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_allowed_hosts_lets_a_name_in_front_of_llmtap_through(
    start_proxy: Callable[..., Proxy],
) -> None:
    proxy = start_proxy(allowed_hosts="llm.example.com, Other.Example")
    for host in ("llm.example.com", "llm.example.com:443", "other.example"):
        assert httpx.get(f"{proxy.url}/api/traces", headers={"host": host}).status_code == 200
    assert refused(
        httpx.get(f"{proxy.url}/api/traces", headers={"host": "evil.example"}), "host_not_allowed"
    )
    anything = start_proxy(allowed_hosts="*")
    assert httpx.get(f"{anything.url}/api/traces", headers={"host": "evil.example"}).is_success


def test_beyond_loopback_any_host_is_answered_unless_allowed_hosts_is_set(
    start_proxy: Callable[..., Proxy],
) -> None:
    """Listening on every interface (a container), the machine is reached by addresses and
    names llmtap cannot know: no Host check unless the user lists the names."""
    open_to_all = start_proxy(host="0.0.0.0")
    for host in ("192.168.1.20:8787", "llmtap:8787", "mybox.local"):
        response = httpx.get(f"{open_to_all.url}/api/traces", headers={"host": host})
        assert response.status_code == 200
    listed = start_proxy(host="0.0.0.0", allowed_hosts="llmtap")
    assert httpx.get(f"{listed.url}/api/traces", headers={"host": "llmtap:8787"}).is_success
    assert httpx.get(f"{listed.url}/api/traces", headers={"host": "localhost"}).is_success
    assert refused(
        httpx.get(f"{listed.url}/api/traces", headers={"host": "evil.example"}),
        "host_not_allowed",
    )


def test_a_named_host_to_listen_on_is_answered(start_proxy: Callable[..., Proxy]) -> None:
    proxy = start_proxy(host="localhost")
    assert httpx.get(f"{proxy.url}/api/traces", headers={"host": "localhost:1"}).is_success
    assert httpx.get(f"{proxy.url}/api/traces", headers={"host": "evil.example"}).status_code == 403


def test_predict_calls_its_own_llmtap_by_a_name_it_answers_to(
    start_proxy: Callable[..., Proxy],
) -> None:
    proxy = start_proxy(log_models=True)
    httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT).raise_for_status()
    proxy.flush()
    response = httpx.post(
        f"{proxy.url}/api/models/Default%2Fgpt-4o-mini/versions/1/predict",
        content=orjson.dumps({"inputs": ["a"]}),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200, response.text[:300]
