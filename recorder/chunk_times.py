"""When each piece of a response arrived: the exchange's `chunks`, `[[size, ms], ...]`.

`ms` is milliseconds after the request started, rounded to the microsecond; replay paces a
stream by these. They are JSON in the row, so they are made as JSON: for a stream in one go
(`chunks_json`), or as its pieces arrive (`ChunkTimes`, in the writer process), so that
little is left to make when the stream ends and its client waits for the commit.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

_EXACT_NS = 10**15
"""Below this many nanoseconds, rounding half up in integers gives `round(ns / 1e6, 3)`
wherever the exact value is no tie (the float's error is far below a thousandth)."""


def chunk_ms(times_ns: Sequence[int], started_ns: int) -> list[float]:
    """`round((t - started_ns) / 1e6, 3)` for each time, without `round`'s cost for floats:
    in integers wherever that gives the same float (not on ties, not below zero)."""
    return [
        (d + 500) // 1000 / 1000
        if 0 <= (d := t - started_ns) < _EXACT_NS and d % 1000 != 500
        else round(d / 1e6, 3)
        for t in times_ns
    ]


def _pairs_json(lengths: Sequence[int], times_ns: Sequence[int], started_ns: int) -> bytes:
    """`[size, ms],[size, ms],...`: the pairs without the list's brackets."""
    return orjson.dumps(list(zip(lengths, chunk_ms(times_ns, started_ns), strict=True)))[1:-1]


def chunks_json(lengths: Sequence[int], times_ns: Sequence[int], started_ns: int) -> str:
    """`[[size, ms], ...]`, made a block at a time: a million pieces as Python tuples would
    take ~120 MB on the way to ~20 MB of JSON (a long stream's, `PieceSpool`)."""
    parts = [
        _pairs_json(lengths[at : at + _JSON_BLOCK], times_ns[at : at + _JSON_BLOCK], started_ns)
        for at in range(0, len(lengths), _JSON_BLOCK)
    ]
    return (b"[" + b",".join(parts) + b"]").decode()


_JSON_BLOCK = 1 << 16


class ChunkTimes:
    """A running stream's `chunks_json`, made a batch of pieces at a time: `add` as they
    arrive, `json()` at the end. (~4 us at the end of a 100-event stream, against ~28 us for
    all of it then.)"""

    __slots__ = ("started_ns", "_parts")

    def __init__(self, started_ns: int) -> None:
        self.started_ns = started_ns
        self._parts: list[bytes] = []

    def add(self, pieces: Sequence[bytes], times_ns: Sequence[int]) -> None:
        if pieces:
            self._parts.append(_pairs_json(list(map(len, pieces)), times_ns, self.started_ns))

    def json(self) -> str:
        return (b"[" + b",".join(self._parts) + b"]").decode()
