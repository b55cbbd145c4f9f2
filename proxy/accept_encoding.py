"""Whether a client takes a body in a Content-Encoding, by its Accept-Encoding (RFC 9110 12.5.3).

Live, the upstream chooses a coding from the client's own Accept-Encoding, which llmtap
forwards. A replayed answer was chosen for the client that recorded it: the Python SDK accepts
br and zstd, Go's net/http only gzip, Java's HttpClient and curl without `--compressed`
nothing. Replay asks this before it sends a recording as it was kept.
"""

from __future__ import annotations

_ALIASES = {"x-gzip": "gzip", "x-compress": "compress"}


def accepts(accept_encoding: str | None, content_encoding: str) -> bool:
    """Whether a client that sent `accept_encoding` (None: no such header) reads a body in
    `content_encoding` (stacked codings: each of them). A client that sends no Accept-Encoding
    is taken to read none: RFC 9110 allows any coding then, but servers (OpenAI's among them)
    answer such a client uncompressed, and Java's and curl's clients do not decode."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    codings = [_ALIASES.get(c, c) for c in codings if c != "identity"]
    if not codings:
        return True
    if accept_encoding is None:
        return False
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        weights[_ALIASES.get(name, name)] = _weight(params)
    return all(_accepted(weights, coding) for coding in codings)


def _accepted(weights: dict[str, float], coding: str) -> bool:
    weight = weights.get(coding, weights.get("*", 0.0))
    return weight > 0


def _weight(params: str) -> float:
    """The q value of one Accept-Encoding item (1 when it has none; 0 when it is unreadable,
    which takes nothing for granted)."""
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 0.0
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0
