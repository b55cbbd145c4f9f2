"""Header handling: the only code that sees `Authorization` and the other secrets.

One pass over the client's headers yields what goes upstream, what may be stored, the
`llmtap-*` controls (consumed, never forwarded) and a short fingerprint of the key, so that
no later code ever holds a secret it could write down.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from llmtap.recorder.secret_headers import (
    SECRET_VALUE,
    VALUE_STARTS,
    is_secret_name,
    is_secret_value,
)

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

KEY_HEADERS = (b"authorization", b"api-key", b"x-api-key", b"x-goog-api-key")

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
    content_length: bytes | None = None
    """As sent: the body's length the client declared (None: chunked, or no body)."""


def client_key(headers: list[tuple[str, str]]) -> bytes | None:
    """The key the client sent (`Authorization: Bearer ...`, `api-key`...), for taking it out
    of what is recorded; None without one (or one too short to be told from other text)."""
    for name, value in headers:
        if name.encode("latin-1") in KEY_HEADERS:
            token = _token(value).encode("latin-1")
            if len(token) >= 12:
                return token
    return None


def masked_key(key: bytes) -> bytes:
    """A key as OpenAI's own error messages show one: its start and its last 4 characters."""
    return key[:3] + b"***" + key[-4:]


def fingerprint(secret: str, salt: bytes = b"") -> str:
    """A short non-reversible tag that tells keys apart without revealing them: keyed by the
    database's own salt (`schema.key_salt`), so that it matches no list of known keys."""
    token = _token(secret)
    return "fp-" + hashlib.blake2b(token.encode(), digest_size=6, key=salt[:64]).hexdigest()


def _token(value: str) -> str:
    """A credential header's token: its value without the scheme (`Bearer `)."""
    return value.split(" ", 1)[-1].strip()


_VALUE_START_BYTES = frozenset(start[0] for start in VALUE_STARTS)
_secret_names: dict[bytes, bool] = {}
"""`is_secret_name` of the names seen: a client sends the same dozen on every request."""


def _learn_name(name: bytes) -> bool:
    if len(_secret_names) >= 4096:  # a client inventing names costs no memory
        _secret_names.clear()
    secret = _secret_names[name] = is_secret_name(name)
    return secret


def connection_options(value: bytes) -> set[bytes]:
    """The header names a `Connection` header lists as hop-by-hop (RFC 9110 section 7.6.1);
    `close` and `keep-alive` name no other header."""
    names = {token.strip().lower() for token in value.split(b",")}
    return names - CONNECTION_TOKENS


def without(headers: list[tuple[str, str]], names: set[bytes]) -> list[tuple[str, str]]:
    """The headers whose (lower-cased) names are not among `names`."""
    text = {n.decode("latin-1") for n in names}
    return [h for h in headers if h[0] not in text]


def split_request_headers(raw: RawHeaders, salt: bytes = b"") -> SplitHeaders:
    """The request's headers split: to forward, to store, llmtap's controls, and the key's
    fingerprint (keyed by `salt`, the database's)."""
    forward: list[tuple[str, str]] = []
    stored: list[tuple[str, str]] = []
    controls: dict[str, str] = {}
    key_fp: str | None = None
    listed: set[bytes] = set()
    content_length = None
    known = _secret_names  # (the hot path of every request: the checks inlined)
    for name, value in raw:
        lname = name.lower()
        if lname.startswith(LLMTAP_PREFIX):
            controls[lname[7:].decode("latin-1")] = _text(value)
            continue
        if lname in HOP_BY_HOP:
            if lname == b"connection" and value.lower() not in CONNECTION_TOKENS:
                listed |= connection_options(value)
            elif lname == b"content-length":
                content_length = value
            continue
        header = (lname.decode("latin-1"), value.decode("latin-1"))
        forward.append(header)
        secret = known.get(lname)
        if secret is None:
            secret = _learn_name(lname)
        # (the first byte checked here: a call per header costs ~0.05 us, 17 headers a request)
        if secret or (value[:1] in VALUE_STARTS and is_secret_value(value)):
            if key_fp is None and lname in KEY_HEADERS:
                key_fp = fingerprint(header[1], salt)
            continue
        if lname == b"traceparent":
            controls["traceparent"] = header[1]
        stored.append(header)
    if listed:  # rare: almost every client sends no more than `Connection: keep-alive`
        forward, stored = without(forward, listed), without(stored, listed)
    return SplitHeaders(forward, stored, controls, key_fp, content_length)


def split_response_headers(
    raw: tuple[tuple[bytes, bytes], ...],
) -> tuple[list[tuple[bytes, bytes]], list[tuple[str, str]]]:
    """(headers for the client, headers safe to store)."""
    relay: list[tuple[bytes, bytes]] = []
    stored: list[tuple[str, str]] = []
    listed: set[bytes] = set()
    # relayed, never stored: what identifies the account or sets cookies (set-cookie,
    # openai-organization, openai-project, anthropic-organization-id...) or is a credential, by
    # the request side's rules and cache; locals, as every response runs this
    known, credential, starts = _secret_names, SECRET_VALUE.match, _VALUE_START_BYTES
    for name, value in raw:
        lname = name.lower()
        if lname in RESPONSE_DROP:
            if lname == b"connection" and value.lower() not in CONNECTION_TOKENS:
                listed |= connection_options(value)
            continue
        relay.append((lname, value))
        # by name (a list, then the request side's rule: an account id like
        # anthropic-organization-id) or by value (an upstream echoing the client's key)
        secret = known.get(lname)
        if secret is None:
            secret = _learn_name(lname)
        # is_secret_value, inlined: a credential is longer than 10 bytes and starts with one of
        # a few bytes; most values are not or do not, and skip the regex
        if not secret and (len(value) <= 10 or value[0] not in starts or credential(value) is None):
            stored.append((lname.decode("latin-1"), value.decode("latin-1")))
    if listed:  # the upstream's hop-by-hop headers end at llmtap, as the RFC wants
        relay = [h for h in relay if h[0] not in listed]
        stored = without(stored, listed)
    return relay, stored


def _text(value: bytes) -> str:
    """A control header's value: UTF-8 as curl and most clients send it, else latin-1 (what
    HTTP allows), so that a session or tag named in any language reads back as sent."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("latin-1")
