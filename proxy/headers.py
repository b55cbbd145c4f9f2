"""Header handling: the only code that sees `Authorization` and the other secrets.

One pass over the client's headers yields what goes upstream, what may be stored, the
`llmtap-*` controls (consumed, never forwarded) and a short fingerprint of the key, so that
no later code ever holds a secret it could write down.
"""

from __future__ import annotations

import hashlib
import re
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

# Request headers that carry credentials or account ids: forwarded, never stored. Names are
# matched by rule, not by list, because every gateway invents its own (x-auth-token,
# x-portkey-api-key, ocp-apim-subscription-key, helicone-auth, x-vault-token...): a name is a
# secret when it contains auth, secret, passw, passphrase, credential, cookie, session,
# signature, jwt or bearer anywhere, or has a word (between -, _ or .) ending in `key`, `keys`
# or `token`. Wrongly dropping a header only makes a record less complete, while wrongly keeping
# one leaks a key, so the rule is broad. It leaves what replay and debugging need:
# content-type, accept*, user-agent, x-stainless-*, openai-beta, traceparent, x-request-id,
# idempotency-key, and plural `tokens` (a count, not a credential).
SECRET_NAME = re.compile(
    rb"auth|secret|passw|passphrase|credential|cookie|session|signature|jwt|bearer"
    rb"|(?:keys?|token)(?:$|[-_.])"
)
SECRET_REQUEST = frozenset({b"openai-organization", b"openai-project"})
"""Account ids: secret by name, though the rule above does not see them."""
NOT_SECRET = frozenset({b"idempotency-key"})
"""Names the rule would catch that are no credential (a retry id the SDKs send)."""
# a value that is a credential whatever the header is called: an HTTP auth scheme, an OpenAI key
SECRET_VALUE = re.compile(rb"\s*(?:bearer|basic|digest)\s|\s*sk-[A-Za-z0-9_-]{16}", re.IGNORECASE)
VALUE_STARTS = frozenset(b"bBdDsS \t"[i : i + 1] for i in range(8))
"""The first bytes a SECRET_VALUE can have."""
KEY_HEADERS = (b"authorization", b"api-key", b"x-api-key", b"x-goog-api-key")

# response headers that identify the account or set cookies: relayed, never stored
SECRET_RESPONSE = frozenset(
    {b"set-cookie", b"set-cookie2", b"openai-organization", b"openai-project"}
)
# response headers the ASGI server must not see twice or that no longer hold after relaying
RESPONSE_DROP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"proxy-connection", b"upgrade"}
)

CONNECTION_TOKENS = frozenset({b"", b"close", b"keep-alive"})
"""`Connection` options that are no header name."""

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


def is_secret_name(name: bytes) -> bool:
    """Whether a lower-cased request header name says the header holds a credential."""
    if name in NOT_SECRET:
        return False
    return name in SECRET_REQUEST or SECRET_NAME.search(name) is not None


_secret_names: dict[bytes, bool] = {}
"""`is_secret_name` of the names seen: a client sends the same dozen on every request."""


def is_secret(name: bytes, value: bytes) -> bool:
    """Whether a request header (lower-cased name) must never be stored."""
    secret = _secret_names.get(name)
    if secret is None:
        if len(_secret_names) >= 4096:  # a client inventing names costs no memory
            _secret_names.clear()
        secret = _secret_names[name] = is_secret_name(name)
    # the first byte rules out nearly every value before the regex runs
    return secret or (value[:1] in VALUE_STARTS and SECRET_VALUE.match(value) is not None)


def connection_options(value: bytes) -> set[bytes]:
    """The header names a `Connection` header lists as hop-by-hop (RFC 9110 section 7.6.1);
    `close` and `keep-alive` name no other header."""
    names = {token.strip().lower() for token in value.split(b",")}
    return names - CONNECTION_TOKENS


def without(headers: list[tuple[str, str]], names: set[bytes]) -> list[tuple[str, str]]:
    """The headers whose (lower-cased) names are not among `names`."""
    text = {n.decode("latin-1") for n in names}
    return [h for h in headers if h[0] not in text]


def split_request_headers(raw: RawHeaders) -> SplitHeaders:
    forward: list[tuple[str, str]] = []
    stored: list[tuple[str, str]] = []
    controls: dict[str, str] = {}
    key_fp: str | None = None
    listed: set[bytes] = set()
    for name, value in raw:
        lname = name.lower()
        if lname.startswith(LLMTAP_PREFIX):
            controls[lname[7:].decode("latin-1")] = value.decode("latin-1")
            continue
        if lname in HOP_BY_HOP:
            if lname == b"connection" and value.lower() not in CONNECTION_TOKENS:
                listed |= connection_options(value)
            continue
        text = value.decode("latin-1")
        forward.append((lname.decode("latin-1"), text))
        if is_secret(lname, value):
            if key_fp is None and lname in KEY_HEADERS:
                key_fp = fingerprint(text)
            continue
        if lname == b"traceparent":
            controls["traceparent"] = text
        stored.append((lname.decode("latin-1"), text))
    if listed:  # rare: almost every client sends no more than `Connection: keep-alive`
        forward, stored = without(forward, listed), without(stored, listed)
    return SplitHeaders(forward, stored, controls, key_fp)


def split_response_headers(
    raw: tuple[tuple[bytes, bytes], ...],
) -> tuple[list[tuple[bytes, bytes]], list[tuple[str, str]]]:
    """(headers for the client, headers safe to store)."""
    relay: list[tuple[bytes, bytes]] = []
    stored: list[tuple[str, str]] = []
    listed: set[bytes] = set()
    for name, value in raw:
        lname = name.lower()
        if lname in RESPONSE_DROP:
            if lname == b"connection" and value.lower() not in CONNECTION_TOKENS:
                listed |= connection_options(value)
            continue
        relay.append((lname, value))
        if lname not in SECRET_RESPONSE:
            stored.append((lname.decode("latin-1"), value.decode("latin-1")))
    if listed:  # the upstream's hop-by-hop headers end at llmtap, as the RFC wants
        relay = [h for h in relay if h[0] not in listed]
        stored = without(stored, listed)
    return relay, stored
