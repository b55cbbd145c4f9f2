"""Random requests never crash llmtap, and nothing in a request sends it anywhere but the
configured upstream."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Proxy

# what HTTP lets a header value be: visible ASCII, no space at either end
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(
    str.strip
)


@pytest.fixture
def fuzz_client(proxy: Proxy) -> Any:
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        yield client


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    path=st.text(max_size=40),
    headers=st.dictionaries(
        st.sampled_from(
            [
                "llmtap-mode",
                "llmtap-session",
                "llmtap-trace-id",
                "traceparent",
                "llmtap-tag-x",
                "llmtap-experiment",
                "content-type",
                "accept-encoding",
                "x-anything",
            ]
        ),
        header_text,
        max_size=4,
    ),
    body=st.one_of(
        st.binary(max_size=300),
        st.builds(lambda s: s.encode(), st.text(max_size=100)),
        st.just(b'{"model": "m", "stream": true, "messages": []}'),
    ),
    prefix=st.sampled_from(["/v1/", "/experiments/e/v1/", "/api/", "/"]),
)
def test_random_requests_never_get_a_500_from_llmtap(
    fuzz_client: httpx.Client,
    proxy: Proxy,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    prefix: str,
) -> None:
    url = prefix + quote(path, safe="/")
    response = fuzz_client.request(
        method, url, headers=headers, content=body if method not in ("GET", "HEAD") else None
    )
    crashed = response.status_code == 500 and response.text == "Internal Server Error"
    assert not crashed, (method, url, headers, body)
    if response.status_code in (502, 504) and method != "HEAD":
        # only ever the configured upstream: llmtap's own upstream errors name no other host
        assert proxy.app.settings.upstream in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "target",
    [
        "/v1//evil.example/chat/completions",
        "/v1/@evil.example/x",
        "/v1/../../etc/passwd",
        "/v1/%2e%2e/%2e%2e/x",
        "/v1/http://evil.example/x",
        "/v1/%5c%5cevil.example/x",
        "/v1/x?url=http://evil.example",
        "/v1/;@evil.example:80/x",
        "http://evil.example/v1/x",
    ],
)
def test_nothing_in_a_request_reaches_another_host(
    proxy: Proxy, simulator: Any, target: str
) -> None:
    """Request targets sent byte for byte (a client library would normalise some of them)."""
    httpx.delete(f"{simulator.url}/_simulator/requests")
    host, port = proxy.url.removeprefix("http://").split(":")
    body = b'{"model": "m"}'
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"X-Forwarded-Host: evil.example\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    assert status not in (500, 502, 504), reply[:300]
    seen = httpx.get(f"{simulator.url}/_simulator/requests").json()
    # whatever reached an upstream reached the configured one; nothing else was contacted
    assert len(seen) <= 1 and (seen or status in (400, 404))
