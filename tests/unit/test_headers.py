"""Header splitting: what goes upstream, what may be stored, what llmtap consumes."""

from __future__ import annotations

from llmtap.proxy.headers import fingerprint, split_request_headers, split_response_headers


def test_request_headers_split_in_one_pass() -> None:
    raw = [
        (b"Host", b"127.0.0.1:8787"),
        (b"Authorization", b"Bearer sk-abc"),
        (b"Content-Type", b"application/json"),
        (b"Connection", b"keep-alive"),
        (b"Content-Length", b"12"),
        (b"llmtap-session", b"s1"),
        (b"LLMTAP-Tag-Team", b"core"),
        (b"OpenAI-Organization", b"org-1"),
        (b"traceparent", b"00-ab-cd-01"),
        (b"Cookie", b"a=b"),
        (b"x-stainless-lang", b"python"),
    ]
    split = split_request_headers(raw)
    forward = dict(split.forward)
    assert forward == {
        "authorization": "Bearer sk-abc",
        "content-type": "application/json",
        "openai-organization": "org-1",
        "traceparent": "00-ab-cd-01",
        "cookie": "a=b",
        "x-stainless-lang": "python",
    }
    stored = dict(split.stored)
    assert stored == {
        "content-type": "application/json",
        "traceparent": "00-ab-cd-01",
        "x-stainless-lang": "python",
    }
    assert split.controls == {"session": "s1", "tag-team": "core", "traceparent": "00-ab-cd-01"}
    assert split.key_fingerprint == fingerprint("Bearer sk-abc")


def test_fingerprint_is_short_stable_and_tells_keys_apart() -> None:
    a, b = fingerprint("Bearer sk-one"), fingerprint("Bearer sk-two")
    assert a != b and a == fingerprint("sk-one") and len(a) == 15
    assert "sk-one" not in a


def test_api_key_header_is_fingerprinted_and_not_stored() -> None:
    split = split_request_headers([(b"api-key", b"azure-secret")])
    assert split.stored == [] and split.key_fingerprint == fingerprint("azure-secret")


def test_response_headers_relay_cookies_but_never_store_them() -> None:
    raw = (
        (b"Content-Type", b"application/json"),
        (b"Set-Cookie", b"__cf_bm=x"),
        (b"openai-organization", b"org-1"),
        (b"openai-project", b"proj_1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"x-request-id", b"req_1"),
    )
    relay, stored = split_response_headers(raw)
    assert dict(relay) == {
        b"content-type": b"application/json",
        b"set-cookie": b"__cf_bm=x",
        b"openai-organization": b"org-1",
        b"openai-project": b"proj_1",
        b"x-request-id": b"req_1",
    }
    assert dict(stored) == {"content-type": "application/json", "x-request-id": "req_1"}


CREDENTIAL_NAMES = (
    "authorization",
    "api-key",
    "x-api-key",
    "apikey",
    "x_api_key",
    "x-goog-api-key",
    "ocp-apim-subscription-key",
    "x-functions-key",
    "x-portkey-api-key",
    "x-auth-token",
    "x-access-token",
    "private-token",
    "x-amz-security-token",
    "x-csrf-token",
    "x-session-token",
    "helicone-auth",
    "x-client-secret",
    "x-password",
    "x-credentials",
    "x-hub-signature-256",
    "cookie",
    "openai-organization",
    "openai-project",
)
KEPT_NAMES = (
    "content-type",
    "accept",
    "accept-encoding",
    "user-agent",
    "x-stainless-lang",
    "x-stainless-package-version",
    "x-stainless-retry-count",
    "x-stainless-read-timeout",
    "openai-beta",
    "traceparent",
    "tracestate",
    "x-request-id",
    "idempotency-key",
    "x-ratelimit-remaining-tokens",
    "x-simulator-fault",
)


def test_credential_header_names_are_forwarded_but_never_stored() -> None:
    raw = [(name.encode(), b"SECRETVALUE7") for name in CREDENTIAL_NAMES]
    split = split_request_headers(raw)
    assert [name for name, _ in split.forward] == list(CREDENTIAL_NAMES)
    assert split.stored == []


def test_headers_needed_for_replay_and_debugging_are_stored() -> None:
    raw = [(name.encode(), b"plain-value") for name in KEPT_NAMES]
    split = split_request_headers(raw)
    assert [name for name, _ in split.stored] == list(KEPT_NAMES)


def test_a_credential_value_is_not_stored_whatever_its_header_is_called() -> None:
    raw = [
        (b"x-custom", b"Bearer abc.def"),
        (b"x-other", b"basic dXNlcjpwYXNz"),
        (b"x-openai", b"sk-proj-0123456789abcdefXYZ"),
        (b"x-note", b"sketch"),
    ]
    split = split_request_headers(raw)
    assert len(split.forward) == 4 and split.stored == [("x-note", "sketch")]


def test_headers_named_in_connection_are_neither_forwarded_nor_stored() -> None:
    raw = [
        (b"Connection", b"keep-alive, X-Drop-Me ,x-also"),
        (b"X-Drop-Me", b"1"),
        (b"x-also", b"2"),
        (b"x-kept", b"3"),
        (b"Connection", b"close, x-late"),
        (b"x-late", b"4"),
    ]
    split = split_request_headers(raw)
    assert split.forward == split.stored == [("x-kept", "3")]


def test_response_headers_named_in_connection_are_neither_relayed_nor_stored() -> None:
    raw = ((b"Connection", b"x-hop"), (b"x-hop", b"1"), (b"x-request-id", b"req_1"))
    relay, stored = split_response_headers(raw)
    assert relay == [(b"x-request-id", b"req_1")] and stored == [("x-request-id", "req_1")]


def test_control_values_read_as_utf8_as_curl_sends_them() -> None:
    split = split_request_headers(
        [(b"llmtap-session", "café-7".encode()), (b"llmtap-tag-team", b"\xe9quipe")]
    )
    assert split.controls["session"] == "café-7"  # UTF-8
    assert split.controls["tag-team"] == "équipe"  # not UTF-8: latin-1, as HTTP allows
