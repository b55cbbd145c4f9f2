"""SPEC section 6: keys, account ids and cookies never reach the database files."""

from __future__ import annotations

from pathlib import Path

from openai import OpenAI

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
    import httpx

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
