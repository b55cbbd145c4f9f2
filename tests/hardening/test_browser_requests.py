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


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "LocalHost",
        "[::1]",
        "0.0.0.0",
        # written otherwise (refused by a first version of the check: a review of the change)
        "localhost.",
        "[0:0:0:0:0:0:0:1]",
        "[::ffff:127.0.0.1]",
        "127.1",
    ],
)
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


def no_cors_post(url: str, origin: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    """What `fetch(url, {method: "POST", mode: "no-cors", body})` sends from a page on
    `origin`: text/plain needs no preflight, so the browser sends it as it is."""
    return httpx.post(
        url,
        content=orjson.dumps(body),
        headers={"origin": origin, "content-type": "text/plain", **headers},
    )


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "http://evil.localhost:1", "http://127.0.0.2:1", "null"]
)
def test_a_page_on_another_origin_cannot_spend_the_configured_credential(
    start_proxy: Callable[..., Proxy], simulator: Any, origin: str
) -> None:
    """The upstream URL's credentials (`http://user:key@host/v1`) go with every forwarded
    request; a page on another site (a name other than this machine's loopback names) must not
    have them spent."""
    proxy = start_proxy(upstream=simulator.url.replace("://", "://user:sk-configured@") + "/v1")
    httpx.delete(f"{simulator.url}/_simulator/requests")
    response = no_cors_post(f"{proxy.base_url}/chat/completions", origin, CHAT)
    assert refused(response, "cross_origin_request"), response.text[:300]
    assert not upstream_saw(simulator)
    assert proxy.query("SELECT count(*) FROM exchanges")[0][0] == 0


@pytest.mark.parametrize("origin", ["http://localhost:5173", "http://127.0.0.1:3000"])
def test_a_page_this_machine_serves_is_served(proxy: Proxy, origin: str) -> None:
    """A web app in development on another local port (Vite, Next) using llmtap: served, as
    Ollama serves loopback origins by default."""
    response = no_cors_post(f"{proxy.base_url}/chat/completions", origin, CHAT)
    assert response.status_code == 200, response.text[:300]


def test_the_ui_s_own_origin_is_served(proxy: Proxy) -> None:
    for name in ("127.0.0.1", "localhost"):
        own = f"{name}:{port_of(proxy)}"
        response = no_cors_post(
            f"{proxy.base_url}/chat/completions", f"http://{own}", CHAT, host=own
        )
        assert response.status_code == 200, response.text[:300]


def test_an_origin_in_allowed_hosts_is_served_behind_a_proxy_that_rewrites_host(
    start_proxy: Callable[..., Proxy],
) -> None:
    proxy = start_proxy(allowed_hosts="llm.example.com")
    url = f"{proxy.base_url}/chat/completions"
    assert no_cors_post(url, "https://llm.example.com", CHAT).status_code == 200
    assert refused(no_cors_post(url, "https://evil.example", CHAT), "cross_origin_request")


def test_beyond_loopback_another_origin_is_still_refused(
    start_proxy: Callable[..., Proxy],
) -> None:
    proxy = start_proxy(host="0.0.0.0")
    url, host = f"{proxy.base_url}/chat/completions", "192.168.1.20:8787"
    assert no_cors_post(url, f"http://{host}", CHAT, host=host).status_code == 200
    assert refused(
        no_cors_post(url, "https://evil.example", CHAT, host=host), "cross_origin_request"
    )


def test_predict_takes_json_only(start_proxy: Callable[..., Proxy], simulator: Any) -> None:
    """predict runs upstream calls: a body a page may send without a preflight (text/plain, a
    form) is refused before any, with or without an Origin."""
    proxy = start_proxy(log_models=True)
    httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT).raise_for_status()
    proxy.flush()
    httpx.delete(f"{simulator.url}/_simulator/requests")
    url = f"{proxy.url}/api/models/Default%2Fgpt-4o-mini/versions/1/predict"
    body = orjson.dumps({"inputs": ["a", "b", "c"]})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"content-type": content_type} if content_type else {}
        response = httpx.post(url, content=body, headers=headers)
        assert response.status_code == 415, response.text[:300]
        assert "application/json" in response.json()["error"]["message"]
    assert refused(
        no_cors_post(url, "https://evil.example", {"inputs": ["a"]}), "cross_origin_request"
    )
    assert not upstream_saw(simulator)
    charset = {"content-type": "application/json; charset=utf-8"}
    assert httpx.post(url, content=body, headers=charset).status_code == 200
