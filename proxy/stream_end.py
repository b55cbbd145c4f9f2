"""Where a stream is whole for its client: the piece the relay holds back until the commit.

SPEC section 6: a response a client has received in full is already recorded. An SDK has a
stream in full at its last event, and may stop reading and close the connection there: at
`data: [DONE]` for chat and legacy completions (and the Assistants streams), at an error event
(`data: {"error": {...}}`: the SDK raises at it and closes), at the terminal event of a
Responses stream (`response.completed`, `response.failed`, `response.incomplete`: no `[DONE]`
follows) or its `error` event. The relay asks `EndFinder.ends_in(piece)` of every piece and commits
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

from llmtap.recorder.decoding import PIECE_AT_MOST, Decoder, decoder_for

log = logging.getLogger("llmtap.proxy")

# A marker counts only where it opens an event's field: `data: [DONE]`, `event:
# response.completed`, or `data: {"type": "response.completed"` (servers that name no events).
# Inside a JSON string (a prompt that says "[DONE]", repeated in `response.created`) it never
# does: a JSON text has no raw line end, and the field starts a line.
_DATA_LEAD = re.compile(rb"[\r\n]data: ?\Z")
_RESPONSE_LEAD = re.compile(rb'[\r\n](?:event: ?|data: ?\{\s*"type"\s*:\s*")\Z')
# OpenAI's error in a stream, `data: {"error": {...}}`: the SDK raises there and closes. Not
# when the member holds nothing the SDK raises on (`"error": null`, as some gateways send)
_ERROR_LEAD = re.compile(rb"[\r\n]data: ?\{\s*\Z")
_ERROR_VALUE = re.compile(rb"\s*:\s*")
_NO_ERROR = re.compile(rb'(?:null|false|""|0(?![.\deE])|\{\s*\}|\[\s*\])')
_NO_ERROR_YET = re.compile(rb'(?:n(?:u(?:ll?)?)?|f(?:a(?:l(?:se?)?)?)?|"|0|\{\s*|\[\s*)?\Z')
_REACH = 16  # bytes after an error marker that may still decide it (`  :   null`)
_DONE = ((b"[DONE]", _DATA_LEAD), (b'"error"', _ERROR_LEAD))
_RESPONSES_END = (
    (b"response.completed", _RESPONSE_LEAD),
    (b"response.failed", _RESPONSE_LEAD),
    (b"response.incomplete", _RESPONSE_LEAD),
    # the Responses error event (`event: error`, `"type": "error"`): the Node SDK throws there
    # and aborts; the Python SDK raises at `data: {"error": {...}}`
    (b"error", _RESPONSE_LEAD),
    (b'"error"', _ERROR_LEAD),
    (b"[DONE]", _DATA_LEAD),
)
_LEAD = 48  # bytes before a marker its lead may take (`\ndata: {  "type" :  "` and the like)
_EVENT_END = re.compile(rb"\n\n|\r\r|\n\r")  # a blank line, whatever the line ends (CRLF too)
_KEEP = 96  # bytes of the pieces before: a marker, its lead or a blank line cut by the pieces
Marker = tuple[bytes, "re.Pattern[bytes]"]


class EndFinder:
    """Feed it every piece of one stream, in order; it says which pieces complete the
    stream's last event."""

    __slots__ = ("_markers", "_decoder", "_tail", "_armed", "_undecided")

    def __init__(self, api_path: str, content_encoding: bytes) -> None:
        self._markers: tuple[Marker, ...] = (
            _RESPONSES_END if api_path.startswith("/responses") else _DONE
        )
        self._decoder: Decoder | None = None
        if content_encoding != b"identity":
            try:
                self._decoder = decoder_for(content_encoding.decode("latin-1"))
            except ValueError:  # an encoding we cannot read: the end of the body commits
                self._markers = ()
        self._tail = b"\n"  # the last bytes before this piece (decoded); a line starts the stream
        self._armed = False  # a marker was seen; the blank line that ends its event was not
        self._undecided = False  # an error marker ended the last piece before its value did

    def give_up(self) -> None:
        """Look for no more ends (the end of the body commits the stream)."""
        self._markers = ()

    def ends_in(self, piece: bytes) -> bool:
        if not self._markers:
            return False
        if self._decoder is not None:
            try:
                piece = self._decoder.decompress(piece, PIECE_AT_MOST)
            except Exception as exc:  # unreadable, or a bomb: the body's end commits
                log.warning("a compressed stream could not be decoded: %s", exc)
                self._markers = ()
                return False
        if not piece:
            return False
        # (one copy of the piece: a whole stream read at once is ~27 KB, ~1 us)
        window = self._tail + piece
        new = len(self._tail)  # where this piece starts in `window`
        self._tail = window[-_KEEP:]
        ended = False
        if self._armed and _EVENT_END.search(window, new - 1) is not None:
            ended, self._armed = True, False  # (a blank line may straddle the two)
        end, self._undecided = _last_marker_end(
            window, new, self._markers, _REACH if self._undecided else 0
        )
        if end > 0:
            if _EVENT_END.search(window, end) is None:
                self._armed = True
            else:
                ended, self._armed = True, False
        return ended


def _last_marker_end(
    window: bytes, new: int, markers: tuple[Marker, ...], reach: int
) -> tuple[int, bool]:
    """Where the last marker that opens a field and ends in the new bytes (from `new` on)
    ends in `window`, -1 for none; and whether an error marker waits for its value's first
    bytes (then the next piece looks at it again: `reach`). Only the last marker matters: a
    stream's end is its last event. (rfind, from the end, in C: in a whole stream read at
    once it is found at once.)"""
    best, undecided = -1, False
    for marker, lead in markers:
        extra = reach if lead is _ERROR_LEAD else 0
        limit = len(window)
        while (at := window.rfind(marker, 0, limit)) >= 0 and at + len(marker) + extra > new:
            limit = at + len(marker) - 1  # (inside a text, or no error: look further back)
            if lead.search(window, max(0, at - _LEAD), at) is None:
                continue
            if lead is _ERROR_LEAD:
                raised = _error_is_set(window, at + len(marker))
                if raised is None:
                    undecided = True
                    break
                if not raised:
                    continue
            best = max(best, at + len(marker))
            break
    return best, undecided


def _error_is_set(window: bytes, after: int) -> bool | None:
    """Whether the member that starts at `after` (just past `"error"`) holds an error the SDK
    raises on; None while the window ends before that is known."""
    if not window[after:].strip():
        return None
    colon = _ERROR_VALUE.match(window, after)
    if colon is None:
        return False  # `"error"` was no member's name (garbage, or a value)
    value = window[colon.end() :]
    if _NO_ERROR.match(value) is not None:
        return False
    return None if _NO_ERROR_YET.fullmatch(value) is not None else True
