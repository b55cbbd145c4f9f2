"""Server-sent events, decoded incrementally from raw bytes.

`SseDecoder` follows the WHATWG event-stream rules: lines end with CR, LF or CRLF (and a CRLF
split across two pieces is one line end), each complete line is decoded as UTF-8 on its own (so
a character split across pieces is whole again), and an empty line dispatches the event.
It never raises: invalid UTF-8 is replaced, unknown fields are ignored.

The work per piece is a handful of bytes methods (`splitlines` only splits on CR, LF and CRLF
for bytes), so there is no Python loop over bytes.
"""

from __future__ import annotations

from llmtap.recorder.records import SseEvent

_BOM = "\ufeff"
_LINE_ENDS = (b"\n", b"\r")


_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")
SSE_START_BYTES = 8
"""Bytes enough for `begins_as_sse` to tell."""


def begins_as_sse(body: bytes) -> bool:
    """Whether a body begins as an SSE stream does: a field or a comment, after a BOM or line
    ends. No JSON, text or HTML answer begins so."""
    start = body.removeprefix(_BOM.encode()).lstrip(b"\r\n")
    return start.startswith(_FIELDS)


class SplitStream:
    """A whole stream split by `split_simple`: each event's `data` as bytes (`payloads`),
    its `event:` name (`names`, None when no event has one), and where it was dispatched."""

    __slots__ = ("payloads", "names", "_blocks")

    def __init__(
        self, payloads: list[bytes], names: list[str | None] | None, blocks: list[bytes] | None
    ) -> None:
        self.payloads = payloads
        self.names = names
        self._blocks = blocks  # None: every block is `data: ` and its payload

    def dispatch_offset(self, index: int) -> int:
        """The offset in the body of the byte that dispatched event `index`: the second LF
        of its blank line (for an unterminated last event, the body's end or past it)."""
        if self._blocks is None:
            size = sum(len(payload) for payload in self.payloads[: index + 1]) + 6 * (index + 1)
        else:
            size = sum(len(block) for block in self._blocks[: index + 1])
        return size + 2 * index + 1


_DATA = b"data: "
_NEXT_DATA = b"\n\ndata: "


def split_simple(body: bytes) -> SplitStream | None:
    """A whole stream of the common shape, split at once: each event one `data: ` line (after
    an `event: ` line, maybe), LF line ends, no BOM, no comments, no `id:` or `retry:`.

    None when anything in `body` needs the full rules of `SseDecoder`: then that decoder's
    events are the ones to use. For a body it accepts, the payloads are, as bytes, the `data`
    of exactly the events `SseDecoder` dispatches (the caller decodes them, with errors
    replaced, where it needs text).
    """
    if b"\r" in body or body[:6] != _DATA and body[:7] != b"event: ":
        return None  # (a BOM or anything else first: the decoder's rules)
    terminated = body[-2:] == b"\n\n"
    if body[:6] == _DATA:  # data lines only, the usual shape: split without a loop
        payloads = body[6 : -2 if terminated else None].split(_NEXT_DATA)
        # no LF but the blank lines between events: no payload holds a line end, and every
        # block starts with `data: ` (each `\n\n` is followed by the next one's prefix)
        if body.count(b"\n") == 2 * (len(payloads) - 1) + 2 * terminated:
            return SplitStream(payloads, None, None)
    blocks = body.split(b"\n\n")
    if not blocks[-1]:
        blocks.pop()  # the usual end: the last event's blank line
    payloads = []
    names: list[str | None] | None = None
    for block in blocks:
        if block[:6] == _DATA and b"\n" not in block:
            payloads.append(block[6:])
            if names is not None:
                names.append(None)
            continue
        name, newline, rest = block.partition(b"\n")
        if not (newline and name[:7] == b"event: " and rest[:6] == _DATA and b"\n" not in rest):
            return None
        if names is None:
            names = [None] * len(payloads)
        names.append(name[7:].decode("utf-8", "replace") or None)
        payloads.append(rest[6:])
    return SplitStream(payloads, names, blocks)


class SseDecoder:
    """Turns a byte stream, cut anywhere, into the `SseEvent`s a client would dispatch.

    Call `feed()` with each piece as it arrives, then `finish()` once at the end of the stream.
    """

    def __init__(self, *, at_start: bool = True) -> None:
        """`at_start=False`: the stream began earlier and this decoder takes it from an event
        boundary on (no BOM to skip there)."""
        self._pending = bytearray()  # an unterminated line, waiting for its line end
        self._skip_lf = False  # the last piece ended with CR: a leading LF belongs to it
        self._at_start = at_start  # a BOM is skipped only at the very start of the stream
        self._data: list[str] = []
        self._event: str | None = None
        self._retry: int | None = None
        self._last_id: str | None = None  # persists across events, as the spec says

    def feed(self, data: bytes) -> list[SseEvent]:
        """Decode one piece of the stream; return the events it completed, in order."""
        if not data:
            return []
        if self._between_events() and b"\r" not in data:
            return self._feed_blocks(data)
        return self._feed_lines(data)

    def _between_events(self) -> bool:
        return not (
            self._pending
            or self._data
            or self._skip_lf
            or self._at_start
            or self._event is not None
            or self._retry is not None
        )

    def _feed_blocks(self, data: bytes) -> list[SseEvent]:
        """The common shape, one `data:` line (after an `event:` line, maybe) per event,
        decoded a whole event at a time; anything else goes through the line rules."""
        blocks = data.split(b"\n\n")
        tail = blocks.pop()  # what follows the last blank line: an event still arriving
        events: list[SseEvent] = []
        for block in blocks:
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append(SseEvent(block[6:].decode("utf-8", "replace"), None, self._last_id))
                continue
            name, newline, rest = block.partition(b"\n")
            if (
                newline
                and name.startswith(b"event: ")
                and rest.startswith(b"data: ")
                and b"\n" not in rest
            ):
                events.append(
                    SseEvent(
                        rest[6:].decode("utf-8", "replace"),
                        name[7:].decode("utf-8", "replace") or None,
                        self._last_id,
                    )
                )
                continue
            events.extend(self._feed_lines(block + b"\n\n"))
        if tail:
            events.extend(self._feed_lines(tail))
        return events

    def _feed_lines(self, data: bytes) -> list[SseEvent]:
        if self._skip_lf and data[:1] == b"\n":
            data = data[1:]
        self._skip_lf = False
        if b"\n" not in data and b"\r" not in data:
            self._pending += data  # a piece inside a long line: no copy of the prefix
            return []
        lines = (bytes(self._pending) + data).splitlines(keepends=True)
        self._pending.clear()
        last = lines[-1]
        if not last.endswith(_LINE_ENDS):
            self._pending += lines.pop()
        elif last.endswith(b"\r"):
            self._skip_lf = True
        events: list[SseEvent] = []
        for line in lines:
            event = self._line(line.rstrip(b"\r\n"))
            if event is not None:
                events.append(event)
        return events

    def finish(self) -> list[SseEvent]:
        """End of stream: dispatch what is left even without its closing blank line.

        The WHATWG rules would drop an unterminated last event; a recorder wants to keep it,
        since an upstream that closes right after its last `data:` line still sent it.
        """
        events: list[SseEvent] = []
        if self._pending:
            line = bytes(self._pending)
            self._pending.clear()
            event = self._line(line)
            if event is not None:
                events.append(event)
        event = self._dispatch()
        if event is not None:
            events.append(event)
        return events

    def _line(self, raw: bytes) -> SseEvent | None:
        line = raw.decode("utf-8", "replace")
        if self._at_start:
            self._at_start = False
            if line.startswith(_BOM):
                line = line[1:]
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None  # a comment, often a keep-alive
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        self._field(name, value)
        return None

    def _field(self, name: str, value: str) -> None:
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)

    def _dispatch(self) -> SseEvent | None:
        data, event, retry = self._data, self._event, self._retry
        self._data, self._event, self._retry = [], None, None
        if not data:
            return None  # the spec dispatches nothing for an event without data
        return SseEvent(data="\n".join(data), event=event or None, id=self._last_id, retry=retry)
