"""Which headers hold credentials: never stored, never written to a cassette.

One rule for the proxy (`llmtap.proxy.headers`, as a request comes in) and for cassettes
(`llmtap.recorder.cassettes`, at export and import, whatever a database or a file from
elsewhere holds).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

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
    # account ids: openai-organization, anthropic-organization-id, chatgpt-account-id
    rb"|organi[sz]ation|account[-_.]?id"
)
SECRET_REQUEST = frozenset({b"openai-organization", b"openai-project"})
"""Account ids: secret by name (openai-project: the rule above does not see it)."""
SECRET_QUERY = frozenset({"sig", "code"})
"""Query parameters that are credentials by a name the rule above does not take: Azure's SAS
signature (`sig`) and Functions key (`code`)."""
NOT_SECRET = frozenset({b"idempotency-key"})
"""Names the rule would catch that are no credential (a retry id the SDKs send)."""
# a value that is a credential whatever the header is called: an HTTP auth scheme, an OpenAI
# key, a JSON Web Token (its header and payload are base64 of JSON objects: `eyJ`)
SECRET_VALUE = re.compile(
    rb"\s*(?:bearer|basic|digest|token)\s|\s*sk-[A-Za-z0-9_-]{16}"
    rb"|\s*eyJ[A-Za-z0-9_-]{8,}\.eyJ",
    re.IGNORECASE,
)
VALUE_STARTS = frozenset(b"bBdDsStTeE \t"[i : i + 1] for i in range(12))
"""The first bytes a SECRET_VALUE can have."""


def is_secret_name(name: bytes) -> bool:
    """Whether a lower-cased request header name says the header holds a credential."""
    if name in NOT_SECRET:
        return False
    return name in SECRET_REQUEST or SECRET_NAME.search(name) is not None


def is_secret_header(name: str, value: str) -> bool:
    """Whether a header (any case) must never be kept: its name says credential, or its
    value is one whatever the name."""
    return is_secret_name(name.lower().encode("latin-1", "replace")) or is_secret_value(
        value.encode("latin-1", "replace")
    )


def is_secret_value(value: bytes) -> bool:
    """A value that is a credential whatever its header is called."""
    # the first byte rules out nearly every value before the regex runs
    return value[:1] in VALUE_STARTS and SECRET_VALUE.match(value) is not None


def redacted_query(query: str) -> str:
    """A query string as it may be kept: the value of a parameter named like a credential
    (`?api-key=...`, `?access_token=...`) or holding one replaced by `***`, the rest as sent.
    Replay matches on this form on both sides, so a recording still answers its request."""
    if not query:
        return query
    pairs = query.split("&")
    for i, pair in enumerate(pairs):
        name, eq, value = pair.partition("=")
        lower = unquote_plus(name).lower()
        if (
            eq
            and value
            and (
                lower in SECRET_QUERY
                or is_secret_name(lower.encode("utf-8", "replace"))
                or is_secret_value(unquote_plus(value).encode("utf-8", "replace"))
            )
        ):
            pairs[i] = f"{name}=***"
    return "&".join(pairs)
