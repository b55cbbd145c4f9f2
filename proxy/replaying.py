"""Answering from recordings: the replay and auto modes of the `/v1` endpoint.

Replay never opens a connection to the upstream and needs no API key. A stream replays as
the recorded pieces (same bytes, same cuts), instantly or at the recorded pace. A stream's
usage follows the replaying client's own `stream_options.include_usage`, which is not part of
the match key: a recording holds the usage whoever asked for it (llmtap or its client), and a
client that does not ask receives the stream without it, as llmtap live would strip it (a
recording the upstream compressed is then sent decoded, `decoded_stripping`).

In replay mode only, a request whose own shape was never recorded is answered from a recording
of the other shape (`recorder/synthesis.py`): a non-streamed answer from a recorded stream, a
stream (chat, completions, Responses) from a recorded non-streamed answer, with the header
`llmtap-replay-synthesized` (`json-from-stream` or `stream-from-json`). Auto mode asks the
upstream instead, which records the real thing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from llmtap.proxy.accept_encoding import accepts
from llmtap.proxy.config import Settings, replay_speed
from llmtap.proxy.decoded_stripping import (
    Stripper,
    UndecodableStream,
    decoder_only,
    send_head,
    stripper_for,
)
from llmtap.proxy.errors import UpstreamAborted, openai_error
from llmtap.recorder.decoding import DECODED_AT_MOST, DECODING_ERRORS, decode_at_most, is_identity
from llmtap.recorder.matching import content_encoding, decoded_request
from llmtap.recorder.recording import Recording
from llmtap.recorder.replay import Miss, Recorded, ReplayIndex
from llmtap.recorder.stream_usage import asks_for_usage
from llmtap.recorder.synthesis import json_from_stream, stream_from_json

Send = Any

# the relay sets its own framing; the rest of the recorded headers go back as recorded
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})
_RESHAPED = frozenset({"content-type", "content-encoding"})
"""Headers that describe the recorded body, not one synthesized from it (sent decoded)."""
_NO_BODY = frozenset({204, 304})
"""Statuses whose answer has no body, so its Content-Length is not the body's (RFC 9110 8.6)."""

log = logging.getLogger("llmtap.replay")


class Replayer:
    def __init__(self, settings: Settings, new_episodes: bool = False) -> None:
        """`new_episodes` (the pytest plugin's auto mode, as vcrpy's record mode of that name):
        a request answered upstream uses its recording up, and one whose recordings are all
        used goes upstream and is recorded beside them, so that a cassette holds each call a
        test makes. Without it (`llmtap serve --mode auto`), what was just recorded answers the
        same request next, as a cache does, and `replay_exhausted` applies."""
        self.new_episodes = new_episodes
        self.index = ReplayIndex(
            settings.db,
            settings.ignored_fields,
            repeat_last=settings.replay_exhausted == "repeat" and not new_episodes,
            reshape=settings.mode == "replay",
        )
        self.speed = replay_speed(settings.replay_timing)
        self._loaded: asyncio.Future[int] | None = None
        self.miss_count = 0
        self.first_miss: str | None = None
        self.last_miss: str | None = None
        """How many requests were answered with a replay miss, and what the first (the pytest
        plugin fails a test whose code swallowed the 404) and the latest lacked (`/api/health`:
        a suite in another language whose code catches the 404 shows its stale recordings)."""

    def health(self) -> dict[str, Any]:
        """Replay's part of `/api/health`."""
        return {"misses": self.miss_count, "last_miss": self.last_miss}

    async def ready(self) -> ReplayIndex:
        """The index, built on first use (in a thread: it reads the whole store)."""
        if self._loaded is None:
            self._loaded = asyncio.ensure_future(asyncio.to_thread(self.index.load))
        await asyncio.shield(self._loaded)
        return self.index

    def on_written(self, recordings: list[Recording]) -> None:
        """Writer callback: what was just recorded can be replayed (auto mode)."""
        if self._loaded is None:
            return  # the first use will read it from the store
        for r in recordings:
            if r.error is None and r.status is not None:
                self.index.add(
                    r.exchange_id,
                    r.method,
                    r.path,
                    r.query,
                    r.request_body,
                    content_encoding(r.request_headers),
                    r.status,
                    answered=self.new_episodes,
                )

    async def answer(
        self,
        send: Send,
        method: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        must_answer: bool,
    ) -> bool:
        """Replay the next recording for this request; False when there is none and the
        request may go upstream instead (auto); with `must_answer` a miss is answered 404."""
        index = await self.ready()
        coding = content_encoding(headers)
        if not is_identity(coding):  # in a thread: a few KB of gzip may be 64 MB of JSON
            body = await asyncio.to_thread(decoded_request, body, coding)
        key = index.key_for(method, path, query, body)
        found = index.next(key)
        if found is None and must_answer and await asyncio.to_thread(index.load):
            # recorded since this index was built, by another llmtap on the same file
            found = index.next(key)
        asks_usage = asks_for_usage(path, body)
        without_usage = False
        if isinstance(found, str):
            recorded: Recorded | None = await self._recorded(found)
            if asks_usage and recorded is not None and not recorded.holds_usage():
                # a stream without the usage this request asks for: another recording of the
                # same request that has it answers (the first: the cursor stays with the
                # clients that do not ask), else none does
                index.give_back(key, found)
                recorded = await self._one_with_usage(key)
                without_usage = recorded is None
            if recorded is not None:
                await self._send(send, recorded, method, asks_usage, headers)
                return True
        if not must_answer:
            return False  # auto: the upstream answers
        if found is None:
            other = index.next_in_other_shape(method, path, query, body, key)
            if other is not None and await self._send_reshaped(
                send, await self._recorded(other[0]), path, asks_usage
            ):
                index.took_other_shape(*other)
                return True
        if without_usage:
            miss = Miss(method, path, key, None, without_usage=True)
        else:
            miss = await asyncio.to_thread(index.miss, method, path, body, key, found or 0, query)
        message = miss.message()
        self.miss_count += 1
        if self.first_miss is None:
            self.first_miss = message
        self.last_miss = message
        # not a recording (a recorded miss would read as an incomplete recording of the
        # request): a line in the log, and the count in /api/health
        log.warning("replay miss (404): %s", message)
        error = openai_error(404, "llmtap_replay_miss", message, "replay_miss")
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(error)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": error, "more_body": False})
        return True

    async def _one_with_usage(self, key: str) -> Recorded | None:
        """The first recording of this request whose stream holds its usage, counted as
        served; None if none does."""
        for exchange_id in self.index.recorded_for(key):
            recorded = await self._recorded(exchange_id)
            if recorded.holds_usage():
                self.index.count_served(exchange_id)
                return recorded
        return None

    async def _recorded(self, exchange_id: str) -> Recorded:
        recorded = self.index.cached(exchange_id)
        if recorded is None:
            recorded = await asyncio.to_thread(self.index.fetch, exchange_id)
        return recorded

    async def _send_reshaped(
        self, send: Send, recorded: Recorded, path: str, asks_usage: bool
    ) -> bool:
        """Send a recorded answer in the other shape (`synthesis`), marked so in the
        `llmtap-replay-synthesized` header; False when it cannot be (a stream that did not end
        as a whole answer)."""
        coding = content_encoding(recorded.headers)
        if recorded.stream:
            body = await asyncio.to_thread(json_from_stream, path, recorded.body, coding)
            content_type, how = b"application/json", b"json-from-stream"
        else:
            body = await asyncio.to_thread(
                stream_from_json, path, recorded.body, coding, asks_usage
            )
            content_type, how = b"text/event-stream; charset=utf-8", b"stream-from-json"
        if body is None:
            return False
        headers = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in recorded.headers
            if k not in _FRAMING and k not in _RESHAPED
        ]
        headers += [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"llmtap-replayed", recorded.exchange_id.encode()),
            (b"llmtap-replay-synthesized", how),
        ]
        await send({"type": "http.response.start", "status": recorded.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return True

    async def _send(
        self,
        send: Send,
        recorded: Recorded,
        method: str,
        asks_usage: bool,
        request_headers: Sequence[tuple[str, str]],
    ) -> None:
        """Send a recorded answer; `asks_usage`: the replaying client asked for a stream's usage
        (a recording in a coding its Accept-Encoding does not take goes decoded)."""
        headers = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in recorded.headers
            if k not in _FRAMING
        ]
        headers.append((b"llmtap-replayed", recorded.exchange_id.encode()))
        coding = content_encoding(recorded.headers)
        decode = not is_identity(coding) and not accepts(
            _accept_encoding(request_headers), coding or ""
        )
        if not recorded.stream:
            body = recorded.body
            if decode and method != "HEAD" and recorded.status not in _NO_BODY:
                decoded = await asyncio.to_thread(_decoded, body, coding)
                if decoded is not None:  # (else it goes as recorded: nothing here reads it)
                    body = decoded
                    headers = [h for h in headers if h[0].lower() != b"content-encoding"]
            if method == "HEAD" or recorded.status in _NO_BODY:
                # no body: the length the upstream said stands (a HEAD answer's is GET's body's,
                # RFC 9110 9.3.2; a 204 has none)
                headers += [
                    (b"content-length", v.encode("latin-1"))
                    for k, v in recorded.headers
                    if k == "content-length"
                ]
            else:
                headers.append((b"content-length", str(len(body)).encode()))
            await send(
                {"type": "http.response.start", "status": recorded.status, "headers": headers}
            )
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        # as the relay does live: usage the client did not ask for leaves its stream, a
        # compressed one decoded on the way (its head waits for its first piece, which says
        # whether it decodes: `decoded_stripping`); a coding the client does not take, too
        strip = not asks_usage and recorded.holds_usage_unasked()
        stripper: Stripper | None = None
        if strip:
            stripper = stripper_for(coding)
        elif decode:
            stripper = decoder_only(coding or "")
        start = {"type": "http.response.start", "status": recorded.status, "headers": headers}
        head = await send_head(send, start, stripper)
        send = head or send
        offset, previous_ms = 0, 0.0
        try:
            for size, at_ms in recorded.chunks:
                piece = recorded.body[offset : offset + size]
                offset += size
                if self.speed is not None and at_ms > previous_ms:
                    await asyncio.sleep((at_ms - previous_ms) / 1000 / self.speed)
                previous_ms = at_ms
                out = stripper.feed(piece) if stripper is not None else piece
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            rest = recorded.body[offset:]  # (none: the chunks hold the whole body)
            if stripper is not None:
                rest = stripper.feed(rest) + stripper.flush()
        except UndecodableStream as exc:  # (its head says decoded: no way back)
            if head is not None:
                await head.head()
            raise UpstreamAborted(
                f"llmtap replay: the recorded stream {recorded.exchange_id} stopped decoding: {exc}"
            ) from exc
        await send({"type": "http.response.body", "body": rest, "more_body": False})


def _accept_encoding(headers: Sequence[tuple[str, str]]) -> str | None:
    """The request's Accept-Encoding (its values joined, as a list header's are), or None."""
    values = [v for k, v in headers if k.lower() == "accept-encoding"]
    return ", ".join(values) if values else None


def _decoded(body: bytes, coding: str | None) -> bytes | None:
    """A recorded body decoded for a client that does not take its coding; None when it does
    not decode within `DECODED_AT_MOST` (it goes as recorded)."""
    try:
        return decode_at_most(body, coding, DECODED_AT_MOST)
    except DECODING_ERRORS:  # the bytes are not what the header says: they stand as recorded
        return None
