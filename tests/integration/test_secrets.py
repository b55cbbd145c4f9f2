"""SPEC section 6: keys, account ids and cookies never reach the database files or a cassette;
SPEC section 2: hop-by-hop headers end at llmtap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from openai import OpenAI

from llmtap.proxy.cli import main
from llmtap.proxy.server import ServerThread
from tests.conftest import TEST_KEY, Proxy

ORG = "org-secretorg1234567890"
PROJECT = "proj_secretproject0987"


def database_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def test_no_secret_reaches_the_database_files(proxy: Proxy) -> None:
    with OpenAI(
        base_url=proxy.base_url, api_key=TEST_KEY, organization=ORG, project=PROJECT, max_retries=0
    ) as client:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        for _ in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "y"}], stream=True
        ):
            pass
        client.embeddings.create(model="text-embedding-3-small", input="z")
    proxy.flush()
    blob = database_bytes(proxy.db)
    assert len(blob) > 10_000  # the files are really there and hold the recordings
    assert b"text-embedding-3-small" in blob
    for secret in (TEST_KEY, TEST_KEY[-12:], ORG, PROJECT, "Bearer"):
        assert secret.encode() not in blob, secret
    # a fingerprint tells keys apart without revealing them
    (row,) = proxy.query("SELECT DISTINCT key_fingerprint FROM exchanges")
    assert row[0].startswith("fp-") and len(row[0]) == 15


def test_response_cookies_and_account_headers_are_relayed_but_not_stored(proxy: Proxy) -> None:
    response = httpx.post(
        f"{proxy.base_url}/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "x"}]},
        headers={"authorization": f"Bearer {TEST_KEY}"},
    )
    assert "set-cookie" in response.headers and "openai-organization" in response.headers
    cookie = response.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    org = response.headers["openai-organization"]
    proxy.flush()
    blob = database_bytes(proxy.db)
    assert cookie.encode() not in blob and org.encode() not in blob


# credentials under names no list would hold, and one under a harmless name
ODD_CREDENTIALS = {
    "x-auth-token": "SECRETTOKEN7",
    "ocp-apim-subscription-key": "APIMSUBSCRIPTION42",
    "x-upstream-note": "Bearer OPAQUECREDENTIAL99",
}


def last_forwarded_headers(simulator: ServerThread) -> dict[str, str]:
    """The headers of the last request the upstream received, lower-cased names."""
    seen = httpx.get(f"{simulator.url}/_simulator/requests").json()
    return {k.lower(): v for k, v in seen[-1]["headers"].items()}


def test_odd_credential_headers_are_forwarded_but_leave_no_trace(
    proxy: Proxy, simulator: ServerThread, tmp_path: Path
) -> None:
    with OpenAI(
        base_url=proxy.base_url, api_key=TEST_KEY, default_headers=ODD_CREDENTIALS, max_retries=0
    ) as client:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert last_forwarded_headers(simulator).items() >= ODD_CREDENTIALS.items()
        for _ in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "y"}], stream=True
        ):
            pass
    proxy.flush()
    cassette = tmp_path / "exported.yaml"
    export = CliRunner().invoke(
        main, ["cassette", "export", "--db", str(proxy.db), "-o", str(cassette)]
    )
    assert export.exit_code == 0, export.output
    blob, text = database_bytes(proxy.db), cassette.read_bytes()
    assert b"x-stainless-lang" in blob and b"x-stainless-lang" in text  # headers are kept...
    for secret in ODD_CREDENTIALS.values():
        assert secret.split()[-1].encode() not in blob + text, secret  # ...but not these
    assert b"x-auth-token" not in blob and b"ocp-apim-subscription-key" not in text


def test_headers_named_in_connection_are_not_forwarded_nor_stored(
    proxy: Proxy, simulator: ServerThread
) -> None:
    response = httpx.post(
        f"{proxy.base_url}/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hop"}]},
        headers={"connection": "keep-alive, X-Drop-Me", "x-drop-me": "HOPVALUE3", "x-kept": "1"},
    )
    assert response.status_code == 200
    forwarded = last_forwarded_headers(simulator)
    assert forwarded["x-kept"] == "1" and "x-drop-me" not in forwarded
    (row,) = proxy.query("SELECT request_headers FROM exchanges")
    assert "x-kept" in row[0] and "HOPVALUE3" not in row[0]


JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXQtand0In0.c2VjcmV0LWp3dC1zaWduYXR1cmU"


def test_account_ids_tokens_and_query_signatures_are_kept_by_no_name(proxy: Proxy) -> None:
    """Codex's `chatgpt-account-id`, a JWT under a name that says nothing (a load balancer's
    `x-amzn-oidc-data`), Azure's `?sig=` and `?code=`: stored before (a review of secrets)."""
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    with httpx.Client(base_url=proxy.base_url, timeout=20) as client:
        client.post("/chat/completions", json=body, headers={"chatgpt-account-id": "acct-0028"})
        client.post("/chat/completions", json=body, headers={"x-amzn-oidc-data": JWT})
        client.post("/chat/completions?sv=2024&sig=sig-0027&code=code-0026", json=body)
    proxy.flush()
    blob = database_bytes(proxy.db)
    assert b"2024" in blob  # the query is kept, but for the signatures
    for secret in ("acct-0028", JWT[-20:], "sig-0027", "code-0026"):
        assert secret.encode() not in blob, secret


def test_credentials_and_account_ids_in_response_headers_are_relayed_not_stored(
    start_proxy: Any,
) -> None:
    """Only four response header names were dropped: an upstream echoing the key, or an
    account id named otherwise (`anthropic-organization-id`), reached the database."""
    from tests.raw_upstream import json_reply, raw_upstream

    answer = b'{"id": "c", "object": "chat.completion", "choices": []}'
    extra = (
        b"x-api-key: sk-echoed-secret-0123456789\r\n"
        b"anthropic-organization-id: org-anthropic-secret-0042\r\n"
        b"x-request-id: req_kept_0042\r\n"
    )
    with raw_upstream(lambda _request: json_reply(answer, extra=extra)) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        relayed = httpx.post(f"{proxy.base_url}/chat/completions", json={"model": "m"})
    assert relayed.headers["anthropic-organization-id"] == "org-anthropic-secret-0042"
    proxy.flush()
    blob = database_bytes(proxy.db)
    assert b"req_kept_0042" in blob
    assert b"sk-echoed-secret" not in blob and b"org-anthropic-secret" not in blob


def test_a_credential_in_a_request_body_makes_no_model_setting(start_proxy: Any) -> None:
    """A gateway's `"api_key"` in the body went into the version's params (and made a version
    per key); the input example already hid it."""
    proxy = start_proxy(log_models=True)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0.5}
    for key in ("sk-body-key-one-000000000000", "sk-body-key-two-000000000000"):
        httpx.post(f"{proxy.base_url}/chat/completions", json={**body, "api_key": key})
    proxy.flush()
    (version,) = httpx.get(f"{proxy.url}/api/models/Default/m").json()["versions"]
    assert version["params"] == {"temperature": 0.5}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://me:pa#ss@host:8000/v1", "http://***@host:8000/v1"),  # unencoded: no parser
        ("http://me:pa/ss@host/v1", "http://***@host/v1"),  # sees credentials in these
        ("http://me:pa?ss@host/v1", "http://***@host/v1"),
        ("https://me:secret@host/v1", "https://***@host/v1"),
        (
            "https://gw/v1?api-key=k-secret&api-version=2024",
            "https://gw/v1?api-key=***&api-version=2024",
        ),
        ("https://gw/v1?sig=s-secret", "https://gw/v1?sig=***"),
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("http://token@host/v1", "http://***@host/v1"),
        # an `@` in a path or a query is no credentials
        ("https://gw.example.com/team@acme/v1", "https://gw.example.com/team@acme/v1"),
        ("https://gw/v1?user=me@example.com", "https://gw/v1?user=me@example.com"),
    ],
)
def test_an_upstream_url_is_shown_without_its_credentials(url: str, shown: str) -> None:
    from llmtap.proxy.upstream_client import shown_url

    assert shown_url(url) == shown


def test_the_key_fingerprint_is_keyed_by_the_databases_own_salt(start_proxy: Any) -> None:
    """An unkeyed hash of the key could be matched against a list of known keys by anyone
    holding the file, and linked two databases that saw one key."""
    import hashlib

    fingerprints = []
    for _ in range(2):
        proxy = start_proxy()
        with OpenAI(base_url=proxy.base_url, api_key=TEST_KEY, max_retries=0) as client:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "y"}])
        (row,) = proxy.query("SELECT DISTINCT key_fingerprint FROM exchanges")
        fingerprints.append(row[0])
    unkeyed = "fp-" + hashlib.blake2b(TEST_KEY.encode(), digest_size=6).hexdigest()
    assert unkeyed not in fingerprints
    assert fingerprints[0] != fingerprints[1]  # two databases, one key: nothing links them


ECHOED_KEY = "sk-test-Echoed0123456789abcdefWXYZ"


def _echoing(coding: str) -> Any:
    """A server that answers a bad key with the whole key in its message: in one piece, gzipped
    or brotli'd (the SDK asks for gzip), or cut short of its declared length."""
    import gzip

    import brotli

    from tests.raw_upstream import Received

    def answer(request: Received) -> bytes:
        sent = (request.header("authorization") or "").removeprefix("Bearer ")
        body = b'{"error": {"message": "Incorrect API key provided: ' + sent.encode()
        body += b'. Check it.", "code": "invalid_api_key"}}'
        extra, length = b"", len(body)
        if coding == "gzip":
            body = gzip.compress(body)
            extra, length = b"content-encoding: gzip\r\n", len(body)
        elif coding == "br":
            body = brotli.compress(body)
            extra, length = b"content-encoding: br\r\n", len(body)
        elif coding == "cut":
            length = len(body) + 50  # the rest never comes: llmtap's read times out
        head = b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n" + extra
        return head + f"content-length: {length}\r\n\r\n".encode() + body

    return answer


@pytest.mark.parametrize("coding", ["identity", "gzip", "br", "cut"])
def test_an_error_echoing_the_key_is_recorded_with_the_key_masked(
    start_proxy: Any, coding: str
) -> None:
    """Some OpenAI-compatible servers answer a bad key with the whole key in the message
    (OpenAI itself masks it): the client gets the answer as sent, the record the key masked,
    whether the answer is compressed or cut short."""
    import openai

    from tests.raw_upstream import raw_upstream

    with raw_upstream(_echoing(coding)) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1", read_timeout=1)
        with (
            OpenAI(base_url=proxy.base_url, api_key=ECHOED_KEY, max_retries=0) as client,
            pytest.raises(openai.APIError) as caught,
        ):
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    if coding != "cut":
        assert isinstance(caught.value, openai.AuthenticationError)
        assert ECHOED_KEY in str(caught.value)  # as the server sent it
    proxy.flush()
    (span,) = proxy.query("SELECT status_code, status_message, outputs FROM spans")
    assert span["status_code"] == "ERROR"
    shown = span["status_message"] + (span["outputs"] or "")
    assert "Incorrect API key provided: sk-***WXYZ. Check it." in shown, shown
    blob = database_bytes(proxy.db)
    assert ECHOED_KEY[3:20].encode() not in blob
