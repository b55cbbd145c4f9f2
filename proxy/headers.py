"""Header handling: the only code that sees `Authorization` and the other secrets.

One pass over the client's headers yields what goes upstream, what may be stored, the
`llmtap-*` controls (consumed, never forwarded) and a short fingerprint of the key, so that
no later code ever holds a secret it could write down.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

RawHeaders = list[tuple[bytes, bytes]]

# RFC 9110 section 7.6.1 hop-by-hop headers, plus those the client library recomputes
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
    }
)

# request headers that carry credentials or account ids: forwarded, never stored
SECRET_REQUEST = frozenset(
    {
        b"authorization",
        b"api-key",
        b"x-api-key",
        b"cookie",
        b"openai-organization",
        b"openai-project",
        b"x-goog-api-key",
    }
)
KEY_HEADERS = (b"authorization", b"api-key", b"x-api-key", b"x-goog-api-key")

# response headers that identify the account or set cookies: relayed, never stored
SECRET_RESPONSE = frozenset(
    {b"set-cookie", b"set-cookie2", b"openai-organization", b"openai-project"}
)
# response headers the ASGI server must not see twice or that no longer hold after relaying
RESPONSE_DROP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"proxy-connection", b"upgrade"}
)

LLMTAP_PREFIX = b"llmtap-"


@dataclass(slots=True)
class SplitHeaders:
    forward: list[tuple[str, str]]
    stored: list[tuple[str, str]]
    controls: dict[str, str]
    """`llmtap-*` headers without the prefix, plus `traceparent`; lower-cased names."""
    key_fingerprint: str | None


def fingerprint(secret: str) -> str:
    """A short non-reversible tag that tells keys apart without revealing them."""
    token = secret.split(" ", 1)[-1].strip()
    return "fp-" + hashlib.blake2b(token.encode(), digest_size=6).hexdigest()


def split_request_headers(raw: RawHeaders) -> SplitHeaders:
    forward: list[tuple[str, str]] = []
    stored: list[tuple[str, str]] = []
    controls: dict[str, str] = {}
    key_fp: str | None = None
    for name, value in raw:
        lname = name.lower()
        if lname.startswith(LLMTAP_PREFIX):
            controls[lname[7:].decode("latin-1")] = value.decode("latin-1")
            continue
        if lname in HOP_BY_HOP:
            continue
        text = value.decode("latin-1")
        forward.append((lname.decode("latin-1"), text))
        if lname in SECRET_REQUEST:
            if key_fp is None and lname in KEY_HEADERS:
                key_fp = fingerprint(text)
            continue
        if lname == b"traceparent":
            controls["traceparent"] = text
        stored.append((lname.decode("latin-1"), text))
    return SplitHeaders(forward, stored, controls, key_fp)


def split_response_headers(
    raw: tuple[tuple[bytes, bytes], ...],
) -> tuple[list[tuple[bytes, bytes]], list[tuple[str, str]]]:
    """(headers for the client, headers safe to store)."""
    relay: list[tuple[bytes, bytes]] = []
    stored: list[tuple[str, str]] = []
    for name, value in raw:
        lname = name.lower()
        if lname in RESPONSE_DROP:
            continue
        relay.append((lname, value))
        if lname not in SECRET_RESPONSE:
            stored.append((lname.decode("latin-1"), value.decode("latin-1")))
    return relay, stored
