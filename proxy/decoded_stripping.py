"""Usage stripping for a compressed stream: decoded piece by piece, sent on uncompressed.

`UsageStripper` edits SSE text, so a stream in a Content-Encoding is decoded first. That
happens when an upstream compresses a stream although llmtap, having added `include_usage`,
asked for `accept-encoding: identity`; and in replay, for a recording made compressed (its
client asked for usage and accepted gzip, as the SDK does) answering a client that does not
ask. `DecodedStripper` decodes each piece as it comes, at most `PIECE_AT_MOST` bytes of it (a
few KB of gzip can be gigabytes), strips it, and returns identity bytes: the client's head
loses `content-encoding` and `content-length` (`client_headers`), and the server frames the
body as chunked. Its SDK would have decoded the bytes itself: it receives the same events.
Replay also decodes without stripping (`decoder_only`): a recording in a coding the replaying
client does not take (`accept_encoding`).

A stream in an encoding nothing here reads (unknown, stacked) gets no stripper
(`stripper_for` gives None), and one whose first piece does not decode (a compression bomb,
bytes that are not what the header says) passes through as it is: both reach the client as
sent, usage and all. So the head of a decoded stream is sent only after its first piece was
fed. A stream that stops decoding later raises `UndecodableStream`: its head went out without
the Content-Encoding, so the caller aborts the connection (the client's own decoder would have
failed there too).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from llmtap.proxy.usage_injection import UsageStripper
from llmtap.recorder.decoding import (
    DECODING_ERRORS,
    PIECE_AT_MOST,
    Decoder,
    Identity,
    decoder_for,
)

Headers = list[tuple[bytes, bytes]]
Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]


class UndecodableStream(Exception):
    """A decoded stream stopped decoding after its first piece."""


class DecodedStripper:
    """Decodes a compressed SSE byte stream and removes the usage the client did not ask for,
    as `UsageStripper` does for an uncompressed one: `feed(piece)` returns the identity bytes
    of every complete event so far, `flush()` the rest.

    `decoded` says, once the first piece was fed, whether the output is decoded (then send the
    head with `client_headers`) or the input as it came (its first piece did not decode).
    Neither a piece nor the event being held back (until its end) may decode to more than
    `PIECE_AT_MOST`: a few KB of gzip can be gigabytes, and an event that never ends would
    hold them all."""

    __slots__ = ("_decoder", "_stripper", "_fed", "_held", "decoded")

    def __init__(self, decoder: Decoder, strip: bool = True) -> None:
        """`strip=False` decodes alone: a recording replayed for a client that does not take
        its Content-Encoding (`replaying`)."""
        self._decoder = decoder
        self._stripper = UsageStripper() if strip else _Unchanged()
        self._fed = False
        self._held = 0  # at least what the stripper holds back: decoded since its last output
        self.decoded = True

    def feed(self, piece: bytes) -> bytes:
        if not self.decoded or not piece:  # (zstd's decoder refuses anything past its frame)
            return piece
        try:
            text = self._decoder.decompress(piece, PIECE_AT_MOST)
        except DECODING_ERRORS as exc:
            if self._fed:
                raise UndecodableStream(f"{type(exc).__name__}: {exc}") from exc
            self.decoded = False  # nothing went out yet: the stream goes as it came
            return piece
        self._fed = True
        out = self._stripper.feed(text)
        self._held = len(text) if out else self._held + len(text)
        if self._held > PIECE_AT_MOST:
            raise UndecodableStream(f"an event decodes to more than {PIECE_AT_MOST:,} bytes")
        return out

    def flush(self) -> bytes:
        if not self.decoded:
            return b""
        try:
            rest = self._decoder.flush()
        except DECODING_ERRORS as exc:
            raise UndecodableStream(f"{type(exc).__name__}: {exc}") from exc
        return self._stripper.feed(rest) + self._stripper.flush()


class _Unchanged:
    """The `UsageStripper` of a stream decoded and not stripped: every byte goes on at once."""

    __slots__ = ()

    def feed(self, text: bytes) -> bytes:
        return text

    def flush(self) -> bytes:
        return b""


Stripper = UsageStripper | DecodedStripper


def stripper_for(content_encoding: bytes | str | None) -> Stripper | None:
    """What takes the unasked usage out of a stream in this Content-Encoding: a
    `UsageStripper` for identity, a `DecodedStripper` for one `decoder_for` reads, None for one
    nothing reads (the stream is relayed as it is)."""
    if isinstance(content_encoding, bytes):
        content_encoding = content_encoding.decode("latin-1")
    try:
        decoder = decoder_for(content_encoding)
    except ValueError:
        return None
    return UsageStripper() if isinstance(decoder, Identity) else DecodedStripper(decoder)


def decoder_only(content_encoding: str) -> DecodedStripper | None:
    """What decodes a stream in this Content-Encoding and takes nothing out of it; None for
    identity and for an encoding nothing here reads."""
    try:
        decoder = decoder_for(content_encoding)
    except ValueError:
        return None
    return None if isinstance(decoder, Identity) else DecodedStripper(decoder, strip=False)


def client_headers(headers: Headers, stripper: Stripper | None) -> Headers:
    """A stream's head as its client gets it: with its usage stripped the upstream's length
    is not its length, and decoded it has no Content-Encoding."""
    if stripper is None or (isinstance(stripper, DecodedStripper) and not stripper.decoded):
        return headers  # relayed as it came
    dropped = _DECODED_DROPS if isinstance(stripper, DecodedStripper) else _STRIPPED_DROPS
    # (names in any case: a replayed cassette's may come from elsewhere)
    return [h for h in headers if h[0].lower() not in dropped]


_STRIPPED_DROPS = frozenset({b"content-length"})
_DECODED_DROPS = frozenset({b"content-length", b"content-encoding"})


async def send_head(send: Send, start: Message, stripper: Stripper | None) -> HeadFirst | None:
    """Send a stream's head as its client gets it (`client_headers`), or, for a decoded stream,
    return the `HeadFirst` to send its body through, which sends the head with its first piece."""
    if isinstance(stripper, DecodedStripper):
        return HeadFirst(send, start, stripper)
    if stripper is not None:
        start = {**start, "headers": client_headers(start["headers"], stripper)}
    await send(start)
    return None


class HeadFirst:
    """The `send` of a decoded stream's answer: its head (`http.response.start`) goes out just
    before its first body message, with `client_headers` as the first piece decided them."""

    __slots__ = ("_send", "_start", "_stripper")

    def __init__(self, send: Send, start: Message, stripper: DecodedStripper) -> None:
        self._send = send
        self._start: Message | None = start
        self._stripper = stripper

    async def __call__(self, message: Message) -> None:
        if self._start is not None:
            await self.head()
        await self._send(message)

    async def head(self) -> None:
        """Send the head, if it has not gone out (a stream that fails before any of its body
        went out has its head sent before the connection is aborted)."""
        start, self._start = self._start, None
        if start is not None:
            await self._send({**start, "headers": client_headers(start["headers"], self._stripper)})
