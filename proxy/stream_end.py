"""Where a stream is whole for its client: the piece the relay holds back until the commit.

SPEC section 6: a response a client has received in full is already recorded. An SDK has a
stream in full at its last event, and may stop reading and close the connection there: at
`data: [DONE]` for chat and legacy completions (and the Assistants streams), at the terminal
event of a Responses stream (`response.completed`, `response.failed`, `response.incomplete`:
no `[DONE]` follows). The relay asks `EndFinder.ends_in(piece)` of every piece and commits
the recording before it sends a piece that completes such an event.

The finder reads the bytes as the client's SDK does: a compressed stream (`Content-Encoding`)
is decoded here too, a copy at a time, or its end would never be seen (and a client that
closes at `[DONE]` would leave a complete answer recorded as broken). A marker that turns up
inside an earlier event (a model writing "[DONE]") costs one early commit, never the real
one: every completed marker event commits again, and the last copy wins.
"""

from __future__ import annotations

import logging
import re

from llmtap.recorder.decoding import Decoder, decoder_for

log = logging.getLogger("llmtap.proxy")

_DONE = (b"[DONE]",)
_RESPONSES_END = (b"response.completed", b"response.failed", b"response.incomplete", b"[DONE]")
_EVENT_END = re.compile(rb"\n\n|\r\r|\n\r")  # a blank line, whatever the line ends (CRLF too)
_KEEP = 32  # bytes of the pieces before, for a marker or a blank line cut in two


class EndFinder:
    """Feed it every piece of one stream, in order; it says which pieces complete the
    stream's last event (or an event that looks like it)."""

    __slots__ = ("_markers", "_decoder", "_tail", "_armed")

    def __init__(self, api_path: str, content_encoding: bytes) -> None:
        self._markers = _RESPONSES_END if api_path.startswith("/responses") else _DONE
        self._decoder: Decoder | None = None
        if content_encoding != b"identity":
            try:
                self._decoder = decoder_for(content_encoding.decode("latin-1"))
            except ValueError:  # an encoding we cannot read: the end of the body commits
                self._markers = ()
        self._tail = b""  # the last bytes before this piece (decoded)
        self._armed = False  # a marker was seen; the blank line that ends its event was not

    def ends_in(self, piece: bytes) -> bool:
        if not self._markers:
            return False
        if self._decoder is not None:
            try:
                piece = self._decoder.decompress(piece)
            except Exception as exc:  # the client cannot read it either: the body's end commits
                log.warning("a compressed stream could not be decoded: %s", exc)
                self._markers = ()
                return False
        if not piece:
            return False
        tail = self._tail
        self._tail = piece[-_KEEP:] if len(piece) >= _KEEP else (tail + piece)[-_KEEP:]
        ended = False
        if self._armed and (
            _EVENT_END.match(tail[-1:] + piece[:1]) or _EVENT_END.search(piece) is not None
        ):
            ended, self._armed = True, False
        # only the last marker matters: the stream's real end is its last event. (rfind, from
        # the end, in C: in a whole stream read at once it is found at once)
        at, size = _last_marker(piece, self._markers)
        end = at + size if at >= 0 else -1  # where it ends in the piece
        if at < 0 and tail:  # one cut in two by the pieces?
            at, size = _last_marker(tail + piece[:_KEEP], self._markers)
            if at >= 0 and at + size > len(tail):  # (else it was seen with the piece before)
                end = at + size - len(tail)
        if end > 0:
            if _EVENT_END.search(piece, end) is None:
                self._armed = True
            else:
                ended, self._armed = True, False
        return ended


def _last_marker(data: bytes, markers: tuple[bytes, ...]) -> tuple[int, int]:
    """(where the last of the markers in `data` starts, its length); (-1, 0) for none."""
    best, size = -1, 0
    for marker in markers:
        at = data.rfind(marker)
        if at > best:
            best, size = at, len(marker)
    return best, size
