"""A request asking to upgrade its connection is served as the HTTP/1.1 request it also is.

`curl --http2` to an `http://` URL sends `Connection: Upgrade, HTTP2-Settings` and
`Upgrade: h2c` with its POST. RFC 9113 3.1 (and RFC 9110 7.8) let a server ignore the offer and
answer in HTTP/1.1, which is what llmtap means to do (it serves no other protocol). But the
request parser (llhttp, through httptools) takes any such head for an upgrade: it reads no body
and ends the request at its head, so the upstream got an empty body, or the body was read as the
next request's head (a 400), or an answer was cut off when the connection closed.

So the `Upgrade` header is renamed before the parser sees it, to an `llmtap-` header (consumed,
never forwarded, as `Upgrade` would have been): without it the parser reads the request as
any other. Only a head that holds the word is rewritten; every other read is passed on as it
came, after one search of its head.
"""

from __future__ import annotations

import re

_HEADER = re.compile(rb"\r\nupgrade[ \t]*:", re.IGNORECASE)
IGNORED_NAME = b"llmtap-ignored-upgrade"


def without_upgrade(data: bytes) -> bytes:
    """`data`, a read that begins with a request head (or its start), with the head's
    `Upgrade` header renamed; `data` itself when it has none (the common case)."""
    end = data.find(b"\r\n\r\n")
    head_end = len(data) if end < 0 else end + 2  # (through the last header's CRLF)
    # (two bounded searches, ~0.2 us for an SDK's head; any other casing of the name is rare
    # enough to be left to the parser)
    if data.find(b"pgrade", 0, head_end) < 0 and data.find(b"PGRADE", 0, head_end) < 0:
        return data
    head = _HEADER.sub(b"\r\n" + IGNORED_NAME + b":", data[:head_end])
    return head + data[head_end:]
