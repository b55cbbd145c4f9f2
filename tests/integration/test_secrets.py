"""SPEC section 6: keys, account ids and cookies never reach the database files or a cassette;
SPEC section 2: hop-by-hop headers end at llmtap."""

from __future__ import annotations

from pathlib import Path

import httpx
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
