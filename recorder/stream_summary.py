"""What an SSE stream said, reassembled as its pieces arrive: `StreamSummariser`.

The writer process feeds a stream's pieces while the stream is still running (the proxy sends
them along every few milliseconds), so that when the stream ends (`[DONE]`, which the client
gets only once the recording is committed) little is left to do but `finish()`.

Two ways through the bytes, with the same events either way (tests/unit/test_stream_fast_paths):
- split: the common shape (`data:` lines, LF only) is cut into events a run of complete events
  at a time by `split_simple`, without a look at each line; the bytes after the last complete
  event wait for the next pieces;
- decoder: anything else (CR line ends, comments, ids, a BOM, compressed bytes) goes through
  `SseDecoder`, piece by piece. A stream switches from split to decoder, never back, at an
  event boundary, where the decoder would be between events too.
Each event keeps the arrival time of the piece that held the byte that dispatched it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import orjson

from llmtap.recorder.assemble import Assembler
from llmtap.recorder.decoding import PIECE_AT_MOST, Decoder, decoder_for, is_identity
from llmtap.recorder.endpoints import Endpoint, usage_of
from llmtap.recorder.sse import SplitStream, SseDecoder, split_simple


@dataclass(slots=True)
class StreamSummary:
    """What a replayed or recorded SSE stream said, event by event."""

    output: dict[str, Any] | None = None
    terminal_seen: bool = False
    error: Any = None
    first_output_ns: int | None = None
    usage_payload: Mapping[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


_OBJECT_START = (b"{", "{")


class StreamSummariser:
    """`feed(pieces, times)` any number of times, then `finish()` once."""

    __slots__ = (
        "summary",
        "_endpoint",
        "_assembler",
        "_decoder",
        "_decompressor",
        "_broken",
        "_carry",
        "_started",
        "_last_at",
        "_at_end",
        "_stopped",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        content_encoding: str | None,
        started_ns: int,
        *,
        split: bool = True,
    ) -> None:
        """`split=False`: the decoder from the first byte (the reference the split way is
        tested against)."""
        self.summary = StreamSummary()
        self._endpoint = endpoint
        self._assembler: Assembler = endpoint.new_assembler()
        self._decoder: SseDecoder | None = None
        self._decompressor: Decoder | None = None
        self._broken = False  # the bytes could not be decompressed: nothing more decodes
        self._at_end = False  # `finish`: what is read now is an unterminated last event
        self._stopped = False  # `[DONE]` or an error event came: the client read nothing after
        self._carry: list[tuple[bytes, int]] = []  # split: pieces after the last whole event
        self._started = True  # split: nothing was taken from the stream yet
        self._last_at = started_ns
        if not split or not is_identity(content_encoding):
            try:
                self._decompressor = decoder_for(content_encoding)
            except ValueError as exc:
                self.summary.problems.append(str(exc))
                self._broken = True
            self._decoder = SseDecoder()

    def feed(self, pieces: Sequence[bytes], times: Sequence[int]) -> None:
        """The next pieces of the stream as they arrived, and when each did."""
        if self._broken or not pieces:
            return
        if self._decoder is not None:
            self._decode(pieces, times)
            return
        self._last_at = times[-1]
        carry = self._carry
        new = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if b"\r" in new:  # CR line ends: the decoder's rules, from here on
            self._switch(pieces, times)
            return
        # the held bytes have no CR and no blank line (they are what followed the last one):
        # only the new bytes, and the held bytes' last one, need a look (an event arriving in
        # a thousand pieces is not searched a thousand times)
        tail = _last_byte(carry)
        end = (tail + new).rfind(b"\n\n") - len(tail) + 2  # in `new`, after the blank line
        if end < 2 - len(tail):  # no event ends in these bytes yet
            carry.extend(zip(pieces, times, strict=True))
            return
        buffer = b"".join([*(piece for piece, _ in carry), new]) if carry else new
        cut = len(buffer) - len(new) + end
        split = split_simple(buffer[:cut])
        if split is None:
            self._switch(pieces, times)
            return
        self._take_split(split, self._times_by_offset(pieces, times))
        self._started = False
        # what follows the last whole event: the pieces it came in, for their times
        self._carry = (
            [] if cut == len(buffer) else _after([*carry, *zip(pieces, times, strict=True)], cut)
        )

    def finish(self) -> StreamSummary:
        """The end of the stream: what it said."""
        summary = self.summary
        if self._decoder is None and self._carry:
            self._at_end = True  # (the carry holds no blank line: no event it holds ended)
            rest = b"".join(piece for piece, _ in self._carry)
            split = split_simple(rest)
            if split is None:
                last = self._last_at  # (the pieces held may not be the last ones: empty ones)
                self._switch([], [])
                self._last_at = last
            else:  # an unterminated last event, kept (as `SseDecoder.finish` keeps it)
                self._take_split(split, lambda offset: self._last_at)
        decoder = self._decoder
        if decoder is not None:
            if not self._broken and self._decompressor is not None:
                try:
                    self._events(decoder.feed(self._decompressor.flush()), self._last_at)
                except Exception as exc:  # corrupt compressed data: keep what decoded so far
                    summary.problems.append(f"could not decode the response: {exc}")
            self._at_end = True
            self._events(decoder.finish(), self._last_at)
        summary.output = self._assembler.result()
        summary.problems.extend(getattr(self._assembler, "problems", ()))
        return summary

    # --- internals ----------------------------------------------------------------------------

    def _switch(self, pieces: Sequence[bytes], times: Sequence[int]) -> None:
        """From split to decoder, at the boundary after the last event taken: the pieces held
        since then, and these, go through the decoder."""
        held, self._carry = self._carry, []
        self._decoder = SseDecoder(at_start=self._started)
        self._decompressor = None  # identity: split only ever runs on identity bytes
        self._decode([p for p, _ in held], [t for _, t in held])
        self._decode(pieces, times)

    def _decode(self, pieces: Sequence[bytes], times: Sequence[int]) -> None:
        decoder, decompressor = self._decoder, self._decompressor
        assert decoder is not None
        for piece, at in zip(pieces, times, strict=True):
            self._last_at = at
            if decompressor is not None:
                try:
                    piece = decompressor.decompress(piece, PIECE_AT_MOST)
                except Exception as exc:  # corrupt or a bomb: keep what decoded so far
                    self.summary.problems.append(f"could not decode the response: {exc}")
                    self._broken = True
                    return
            self._events(decoder.feed(piece), at)

    def _events(self, events: list[Any], at: int) -> None:
        if not events:
            return
        names = [event.event for event in events]
        self._take_datas(
            [event.data for event in events],
            names if any(name is not None for name in names) else None,
            lambda index: at,
            split=False,
        )

    def _times_by_offset(self, pieces: Sequence[bytes], times: Sequence[int]) -> Any:
        """offset in the held pieces and these, joined -> arrival time of its piece."""
        held = self._carry

        def time_at(offset: int) -> int:
            lengths = [len(p) for p, _ in held] + [len(p) for p in pieces]
            ends = list(accumulate(lengths))
            at = min(bisect_right(ends, offset), len(ends) - 1)
            return held[at][1] if at < len(held) else times[at - len(held)]

        return time_at

    def _take_split(self, split: SplitStream, time_at: Any) -> None:
        self._take_datas(
            split.payloads, split.names, lambda index: time_at(split.dispatch_offset(index)), True
        )

    def _unreadable(self, problem: str) -> None:
        """An event a client's SDK cannot parse (it raises there): the call failed for it.
        Not an unterminated last event: the SDKs never dispatch one (it is the rest of an
        event that a broken connection or a server's close cut off, and that says why)."""
        summary = self.summary
        if self._at_end:
            summary.problems.append(f"the last event, cut off, {problem}")
            return
        summary.problems.append(problem)
        if summary.error is None:
            summary.error = {"message": f"the upstream sent an event that {problem}"}

    def _take_datas(
        self, datas: list[Any], names: list[str | None] | None, time_of: Any, split: bool
    ) -> None:
        """Events into the assembler: `datas` are bytes (split) or str (decoder). None from an
        event whose `error` is set: the SDK raises there and its client reads no further, so
        the output is what it had (a malformed event, at which it raises too, is kept apart:
        the rest is reassembled, its problem said). Nothing after `[DONE]` either: the SDKs
        stop reading there (a gateway that sends more, or two streams end to end)."""
        summary = self.summary
        if self._stopped:
            return
        assembler = self._assembler
        endpoint = self._endpoint
        feed, carries_output, is_terminal = (
            assembler.feed,
            endpoint.carries_output,
            endpoint.is_terminal,
        )
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        terminal_seen = summary.terminal_seen
        # an assembler that reads a chunk's JSON text itself, when it is like one it has seen:
        # for events that can change nothing here but the assembler's state (see `quiet`)
        feed_json = getattr(assembler, "feed_json", None) if split and names is None else None
        i, count = -1, len(datas)
        while i + 1 < count and not self._stopped:
            i += 1
            if feed_json is not None and summary.first_output_ns is not None:
                taken = feed_json(datas, i)  # a run of chunks alike but for their text
                if taken > i:
                    i = taken - 1
                    continue
            raw = datas[i]
            name = names[i] if names is not None else None
            if raw[:1] in _OBJECT_START:  # a JSON object, or not JSON at all; never [DONE]
                try:
                    data = loads(raw)
                except decode_error:
                    data = None
            else:
                data = None
            if data is None:  # [DONE], anything but an object, or bytes that are not UTF-8
                text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
                if text.startswith("[DONE]"):  # (as the SDKs test it)
                    terminal_seen = terminal_seen or is_terminal(name, None)
                    self._stopped = True
                    continue
                try:
                    data = loads(text)
                except decode_error:
                    self._unreadable(f"is not JSON: {text[:200]!r}")
                    continue
                if not isinstance(data, dict):
                    self._unreadable(f"is not a JSON object: {text[:200]!r}")
                    continue
            if data.get("error"):
                # the SDK raises at any event whose error is set, choices or not, before its
                # caller has it: nothing of it or after it is the output
                summary.error = data["error"]
                self._stopped = True
                continue
            quiet = True  # nothing here depends on this event but the time of the first output
            if name == "error" or data.get("type") == "error":
                # a Responses `error` event (no `error` member): the Node SDK throws there, the
                # Python SDK passes it on and reads on; the call failed, what follows is read
                summary.error = data
                quiet = False
            if summary.first_output_ns is None and carries_output(data):
                summary.first_output_ns = time_of(i)
            if (
                data.get("usage") is not None or "response" in data or "x_groq" in data
            ) and usage_of(data) is not None:
                summary.usage_payload = data
                quiet = False
            if not terminal_seen and is_terminal(name, data):
                terminal_seen = True
                quiet = False
            feed(data)
            if feed_json is not None and quiet:
                # its like (the same bytes but for the text: the same keys, type, usage, and
                # the endpoints' terminal tests never read the text) will be quiet too
                assembler.learn_json(raw, data)  # type: ignore[attr-defined]
        summary.terminal_seen = terminal_seen


def _last_byte(held: list[tuple[bytes, int]]) -> bytes:
    for piece, _ in reversed(held):
        if piece:
            return piece[-1:]
    return b""


def _after(held: list[tuple[bytes, int]], cut: int) -> list[tuple[bytes, int]]:
    """The (piece, time) pairs after byte `cut` of their joined bytes, the first one cut;
    looked for from the end, where the few bytes after the last whole event are."""
    left = sum(len(piece) for piece, _ in held) - cut  # bytes after the cut, still to find
    index = len(held)
    while left > 0:
        index -= 1
        left -= len(held[index][0])
    if index == len(held):
        return []
    piece, at = held[index]
    kept = len(piece) + left  # its bytes after the cut (left <= 0 now)
    return [(piece[-kept:] if kept < len(piece) else piece, at), *held[index + 1 :]]
