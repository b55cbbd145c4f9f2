"""Replay: recorded exchanges answer requests again, in the order they were recorded.

`ReplayIndex` maps each match key to its recordings, oldest first, and keeps one cursor per
key: the Nth identical request gets the Nth recorded answer (an agent loop that sends the
same request twice gets both answers). Past the end it repeats the last answer, or misses,
as configured. The index is built once from the store, in a thread; exchanges recorded later
(auto mode) are added as the writer commits them. Bodies load lazily and are kept in a small
cache, so a large database costs memory only for its keys.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import orjson

from llmtap.recorder.body_codec import unpack_body
from llmtap.recorder.decoding import readable
from llmtap.recorder.matching import (
    canonical_query,
    canonical_value,
    content_encoding,
    decoded_request,
    json_diff,
    match_key,
    parse_body,
)
from llmtap.recorder.schema import RESPONSE_BODY
from llmtap.recorder.sqlite import connect_for_reading
from llmtap.recorder.stream_usage import asks_for_usage
from llmtap.recorder.synthesis import reshapes

CACHE_SIZE = 2048


@dataclass(frozen=True, slots=True)
class Recorded:
    """One recorded answer, as replay sends it back."""

    exchange_id: str
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    chunks: tuple[tuple[int, float], ...]
    stream: bool
    usage_injected: bool
    """llmtap asked the upstream for the stream's usage (the client had not)."""
    usage_requested: bool
    """The recorded request asked for the stream's usage itself (`asks_for_usage`)."""

    def holds_usage(self) -> bool:
        """Whether a stream can be given to a client that asks for its usage: it was asked
        for, by llmtap or by the recorded client (a recording made without it, where llmtap
        could not ask, answers only clients that do not ask: they got what they asked)."""
        return not self.stream or self.usage_injected or self.usage_requested

    def holds_usage_unasked(self) -> bool:
        """Whether the stream holds usage that a client that does not ask for it must not
        receive: it was asked for, by llmtap or the recorded client, and can be taken out
        again: the stream is uncompressed, or in a Content-Encoding `decoder_for` reads (it is
        then replayed decoded). One in an encoding nothing reads (unknown, stacked) reached its
        client as sent, usage and all; so it replays."""
        if not self.stream or not (self.usage_injected or self.usage_requested):
            return False
        return readable(content_encoding(self.headers))


@dataclass(frozen=True, slots=True)
class Miss:
    """No recording answers a request; says what was sought and what came closest."""

    method: str
    path: str
    key: str
    nearest_diff: tuple[str, ...] | None
    exhausted: int = 0
    """How many recordings of this exact request were all used up (with `miss` past the end)."""
    incomplete: str | None = None
    """Why this exact request's recording cannot be replayed (it was cut, or llmtap answered
    it with an error of its own), when it has one and no complete one."""
    without_usage: bool = False
    """The request asks for a stream's usage, and its recording was made without it."""

    def message(self) -> str:
        what = f"{self.method} /v1{self.path}"
        if self.without_usage:
            return (
                f"llmtap replay: this {what} request was recorded (key {self.key[:12]}), but "
                "without the stream's usage, which it asks for (stream_options.include_usage: "
                "llmtap could not ask the upstream for it then); record it again"
            )
        if self.exhausted:
            return (
                f"llmtap replay: all {self.exhausted} recording(s) of this {what} request were "
                'already used (replay_exhausted = "miss")'
            )
        if self.incomplete is not None:
            return (
                f"llmtap replay: this {what} request was recorded (key {self.key[:12]}), but its "
                f"recording is incomplete ({self.incomplete}); record it again"
            )
        text = f"llmtap replay: no recording matches {what} (key {self.key[:12]})"
        if self.nearest_diff is None:
            return text + f"; nothing was recorded for {what} at all"
        return text + "; the nearest recording differs in: " + "; ".join(self.nearest_diff)


_CODED_HEADERS = (
    # a compressed request's headers, to decode it by; NULL for the others (nearly all), which
    # are then not parsed (LIKE: a header name in any case, from a cassette made elsewhere)
    "CASE WHEN request_headers LIKE '%\"content-encoding\"%' THEN request_headers END "
    "AS coded_headers"
)
_SELECT = (
    # the incomplete ones too (an error, or no status), to say so when they are asked for
    f"SELECT rowid, exchange_id, method, path, query, error, status, {_CODED_HEADERS}, "
    "request_body FROM exchanges WHERE rowid > ? ORDER BY started_ns, rowid"
)


def _request_coding(coded_headers: str | None) -> str | None:
    return None if coded_headers is None else content_encoding(orjson.loads(coded_headers))


class ReplayIndex:
    def __init__(
        self,
        db: str,
        ignore: Iterable[str] = (),
        repeat_last: bool = True,
        reshape: bool = True,
    ) -> None:
        self.db = db
        self.ignore = tuple(ignore)
        self.repeat_last = repeat_last
        self.reshape = reshape
        """Index answers for the other shape too (replay mode: auto asks the upstream, and a
        second key per recording made loading ~1.75x slower)."""
        self._keys: dict[str, list[str]] = {}
        self._by_route: dict[tuple[str, str], list[str]] = {}
        self._cursors: dict[str, int] = {}
        self._served: dict[str, int] = {}
        """Exchange id -> how many times it was replayed (the plugin's unused and usage)."""
        self._known: set[str] = set()
        self._incomplete: dict[str, str] = {}
        """Key -> error of the latest recording that cannot be replayed (for `miss`)."""
        self._shapes: dict[str, list[tuple[str, bool]]] = {}
        """Key without `stream` and `stream_options` -> (exchange id, streamed) of the 200
        answers that can be given in the other shape (`synthesis`), for a request whose own
        shape was never recorded."""
        self._shape_cursors: dict[tuple[str, bool], int] = {}
        self._cache: OrderedDict[str, Recorded] = OrderedDict()
        self._lock = threading.Lock()
        self._last_rowid = 0  # the last row `load` read (a rewritten row gets a new one)
        self._reading = threading.Lock()

    def key_for(self, method: str, path: str, query: str, body: bytes) -> str:
        """The key of a request whose body is decoded (`decoded_request`)."""
        return match_key(method, path, body, self.ignore, query)

    def load(self) -> int:
        """Index every exchange in the store not indexed yet (all of them the first time; then
        those another llmtap recorded into the same file since); how many were replayable."""
        with self._reading:  # misses at once: one reads, the others then find nothing new
            try:
                conn = connect_for_reading(self.db)
            except FileNotFoundError:
                return 0
            with closing(conn):
                rows = conn.execute(_SELECT, [self._last_rowid]).fetchall()
            if rows:
                self._last_rowid = max(self._last_rowid, max(row["rowid"] for row in rows))
        replayable = 0
        for row in rows:
            body = unpack_body(bytes(row["request_body"]))
            coding = _request_coding(row["coded_headers"])
            if row["error"] is None and row["status"] is not None:
                replayable += 1
                self.add(
                    row["exchange_id"],
                    row["method"],
                    row["path"],
                    row["query"],
                    body,
                    coding,
                    row["status"],
                )
                continue
            key = self.key_for(
                row["method"], row["path"], row["query"], decoded_request(body, coding)
            )
            with self._lock:
                self._incomplete[key] = row["error"] or "no answer"
        return replayable

    def add(
        self,
        exchange_id: str,
        method: str,
        path: str,
        query: str,
        body: bytes,
        coding: str | None = None,
        status: int | None = None,
        answered: bool = False,
    ) -> None:
        """Index a recorded request; `coding`: its Content-Encoding, if any; `status`: its
        answer's (a 200 answer may be given in the other shape too); `answered`: it answered
        its request as that was made (auto forwarded it), so it counts as used, as if
        replayed: the same request made again goes upstream too and is recorded beside it."""
        decoded = decoded_request(body, coding)
        shape = (
            self._shape(method, path, query, decoded) if status == 200 and self.reshape else None
        )
        parsed = shape[2] if shape is not None else None  # (parsed once for both keys)
        key = match_key(method, path, decoded, self.ignore, query, parsed)
        with self._lock:
            if exchange_id in self._known:  # loaded and reported by the writer both
                return
            self._known.add(exchange_id)
            ids = self._keys.setdefault(key, [])
            ids.append(exchange_id)
            if answered:
                self._cursors[key] = len(ids)
                self._served[exchange_id] = self._served.get(exchange_id, 0) + 1
            self._by_route.setdefault((method, path), []).append(exchange_id)
            if shape is not None and reshapes(path, to_stream=not shape[1]):
                self._shapes.setdefault(shape[0], []).append((exchange_id, shape[1]))

    def _shape(
        self, method: str, path: str, query: str, body: bytes
    ) -> tuple[str, bool, Any] | None:
        """A JSON request's key without its shape (`stream`, `stream_options`), whether it
        streams, and its parsed body; None where no answer changes shape."""
        if method != "POST" or not (reshapes(path, True) or reshapes(path, False)):
            return None
        parsed = parse_body(body)
        if not isinstance(parsed, dict):
            return None
        shapeless = (*self.ignore, "stream", "stream_options")
        key = match_key(method, path, body, shapeless, query, parsed)
        return key, parsed.get("stream") is True, parsed

    def next_in_other_shape(
        self, method: str, path: str, query: str, body: bytes, key: str
    ) -> tuple[str, tuple[str, bool]] | None:
        """The exchange id of the next recording that answers this request in the other shape
        (streamed for a non-streamed request, or the reverse), when its own shape was never
        recorded (nor recorded incomplete), and its place, for `took_other_shape` once it was
        sent (one that cannot be reshaped is neither used up nor counted as served); None if
        there is none. `body` decoded."""
        with self._lock:
            if key in self._incomplete:
                return None
        shape = self._shape(method, path, query, body)
        if shape is None or not reshapes(path, to_stream=shape[1]):
            return None
        shape_key, streams = shape[0], shape[1]
        with self._lock:
            ids = [i for i, streamed in self._shapes.get(shape_key, ()) if streamed != streams]
            if not ids:
                return None
            at = self._shape_cursors.get((shape_key, streams), 0)
            if at >= len(ids):
                if not self.repeat_last:
                    return None
                at = len(ids) - 1
            return ids[at], (shape_key, streams)

    def took_other_shape(self, exchange_id: str, place: tuple[str, bool]) -> None:
        """The answer `next_in_other_shape` found was sent."""
        with self._lock:
            self._shape_cursors[place] = self._shape_cursors.get(place, 0) + 1
        self.count_served(exchange_id)

    def recorded_for(self, key: str) -> list[str]:
        """The exchange ids recorded for this key, oldest first."""
        with self._lock:
            return list(self._keys.get(key, ()))

    def count_served(self, exchange_id: str) -> None:
        """A recording found other than by `next` was replayed."""
        with self._lock:
            self._served[exchange_id] = self._served.get(exchange_id, 0) + 1

    def give_back(self, key: str, exchange_id: str) -> None:
        """The recording `next(key)` gave could not answer the request after all (a stream
        without the usage it asks for): not used up, not served."""
        with self._lock:
            self._cursors[key] = max(self._cursors.get(key, 1) - 1, 0)
            left = self._served.get(exchange_id, 1) - 1
            if left > 0:
                self._served[exchange_id] = left
            else:
                self._served.pop(exchange_id, None)

    def next(self, key: str) -> str | int | None:
        """The exchange id for the next request with this key; the count if all are used up
        (and past-the-end misses); None if nothing was ever recorded for it."""
        with self._lock:
            ids = self._keys.get(key)
            if not ids:
                return None
            at = self._cursors.get(key, 0)
            if at >= len(ids):
                if not self.repeat_last:
                    return len(ids)
                at = len(ids) - 1
            self._cursors[key] = at + 1
            self._served[ids[at]] = self._served.get(ids[at], 0) + 1
            return ids[at]

    def cached(self, exchange_id: str) -> Recorded | None:
        with self._lock:
            found = self._cache.get(exchange_id)
            if found is not None:
                self._cache.move_to_end(exchange_id)
            return found

    def fetch(self, exchange_id: str) -> Recorded:
        """Load one recorded answer (blocking: call it from a thread)."""
        with closing(connect_for_reading(self.db)) as conn:
            row = conn.execute(
                "SELECT exchange_id, path, status, response_headers, chunks, stream, "
                f"usage_injected, {RESPONSE_BODY} AS response_body, {_CODED_HEADERS}, "
                # a stream's request says whether its client asked for usage; others' are not read
                "CASE WHEN stream THEN request_body END AS request_body "
                "FROM exchanges WHERE exchange_id = ?",
                [exchange_id],
            ).fetchone()
        request = row["request_body"]
        usage_requested = request is not None and asks_for_usage(
            row["path"],
            decoded_request(unpack_body(bytes(request)), _request_coding(row["coded_headers"])),
        )
        recorded = Recorded(
            exchange_id=row["exchange_id"],
            status=row["status"],
            headers=tuple((name, value) for name, value in orjson.loads(row["response_headers"])),
            body=unpack_body(bytes(row["response_body"])),
            chunks=tuple((size, at) for size, at in orjson.loads(row["chunks"])),
            stream=bool(row["stream"]),
            usage_injected=bool(row["usage_injected"]),
            usage_requested=usage_requested,
        )
        with self._lock:
            self._cache[exchange_id] = recorded
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return recorded

    def miss(
        self, method: str, path: str, body: bytes, key: str, exhausted: int = 0, query: str = ""
    ) -> Miss:
        """Explain a miss (blocking: reads the candidates' bodies); `body` decoded."""
        if exhausted:
            return Miss(method, path, key, None, exhausted)
        with self._lock:
            incomplete = self._incomplete.get(key)
            candidates = list(self._by_route.get((method, path), ()))
        if incomplete is not None:
            return Miss(method, path, key, None, incomplete=incomplete)
        if not candidates:
            return Miss(method, path, key, None)
        sent = canonical_value(parse_body(body), self.ignore, path=path)
        best: list[str] | None = None
        sent_query = canonical_query(query)
        with closing(connect_for_reading(self.db)) as conn:
            for exchange_id in candidates[-200:]:  # the most recent ones are the likely match
                row = conn.execute(
                    f"SELECT {_CODED_HEADERS}, query, request_body FROM exchanges "
                    "WHERE exchange_id = ?",
                    [exchange_id],
                ).fetchone()
                request = decoded_request(
                    unpack_body(bytes(row["request_body"])), _request_coding(row["coded_headers"])
                )
                recorded = canonical_value(parse_body(request), self.ignore, path=path)
                diff = json_diff(recorded, sent)
                recorded_query = canonical_query(row["query"] or "")
                if recorded_query != sent_query:  # (as replay compares them, decoded)
                    diff.append(f"query: {recorded_query or '(none)'} -> {sent_query or '(none)'}")
                if best is None or len(diff) < len(best):
                    best = diff
        return Miss(method, path, key, tuple((best or ["(no difference)"])[:8]))

    def unused(self) -> list[str]:
        """Recorded exchanges that no request has replayed (for the pytest plugin's report)."""
        with self._lock:
            return [i for ids in self._keys.values() for i in ids if i not in self._served]

    def served(self) -> list[str]:
        """Every replayed exchange id, once for each time it was replayed."""
        with self._lock:
            return [i for i, times in self._served.items() for _ in range(times)]
