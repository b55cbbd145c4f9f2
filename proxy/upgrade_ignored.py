"""A request asking to upgrade its connection is served as the HTTP/1.1 request it also is.

`curl --http2` to an `http://` URL sends `Connection: Upgrade, HTTP2-Settings` and
`Upgrade: h2c` with its POST. RFC 9113 3.1 (and RFC 9110 7.8) let a server ignore the offer and
answer in HTTP/1.1, which is what llmtap means to do (it serves no other protocol). But the
request parser (llhttp, through httptools) takes any such head for an upgrade: it reads no body
and ends the request at its head, so the upstream got an empty body, or the body was read as the
next request's head (a 400), or an answer was cut off when the connection closed.

So the `Upgrade` header is renamed before the parser sees it, to an `llmtap-` header (consumed,
never forwarded, as `Upgrade` would have been): without it the parser reads the request as
any other. A WebSocket handshake keeps its header and is refused as before (llmtap serves no
WebSocket: the Realtime API is not proxied).

What is searched is a read that begins a head, up to its end, or one that goes on with a head
(from its first byte, as a header line when the read before ended one). Not searched, and still
taken for an upgrade: a header name cut in two by the reads, and a head that begins in the
middle of a read (a request pipelined behind another's body), where only the parser knows the
body's end.
"""

from __future__ import annotations

import re

_HEADER = re.compile(rb"\r\nupgrade[ \t]*:(?![ \t]*websocket)", re.IGNORECASE)
_FIRST_LINE = re.compile(rb"upgrade[ \t]*:(?![ \t]*websocket)", re.IGNORECASE)
IGNORED_NAME = b"llmtap-ignored-upgrade"


def without_upgrade(data: bytes, at_line_start: bool = False) -> bytes:
    """`data`, a read that begins a request head or goes on with one, with the head's `Upgrade`
    header renamed; `data` itself when it has none (the common case). `at_line_start`: the
    read goes on with a head whose last read ended a header line, so it may begin with one."""
    end = data.find(b"\r\n\r\n")
    head_end = len(data) if end < 0 else end + 2  # (through the last header's CRLF)
    # (two bounded searches, ~0.2 us for an SDK's head; any other casing of the name is rare
    # enough to be left to the parser)
    if data.find(b"pgrade", 0, head_end) < 0 and data.find(b"PGRADE", 0, head_end) < 0:
        return data
    head = _HEADER.sub(b"\r\n" + IGNORED_NAME + b":", data[:head_end])
    if at_line_start:
        head = (
            _FIRST_LINE.sub(IGNORED_NAME + b":", head, count=1) if _FIRST_LINE.match(head) else head
        )
    return head + data[head_end:]
