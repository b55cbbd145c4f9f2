"""A stream's chunk times made as its pieces arrive are what they are made at once."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from llmtap.recorder import chunk_times
from llmtap.recorder.chunk_times import ChunkTimes, chunk_ms, chunks_json


def at_once(lengths: list[int], times: list[int], started: int) -> str:
    """As the store writes the chunks of a recording built whole: the pairs as a tuple."""
    return orjson.dumps(tuple(zip(lengths, chunk_ms(times, started), strict=True))).decode()


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 10**12)), max_size=60),
    st.lists(st.integers(0, 60), max_size=8),
    st.integers(0, 10**18),
)
def test_made_batch_by_batch_is_made_at_once(
    pieces: list[tuple[int, int]], cuts: list[int], started: int
) -> None:
    lengths = [size for size, _ in pieces]
    times = [started + after for _, after in pieces]
    made = ChunkTimes(started)
    edges = sorted({0, len(pieces), *(min(c, len(pieces)) for c in cuts)})
    for start, end in zip(edges, edges[1:], strict=False):
        made.add([b"x" * size for size in lengths[start:end]], times[start:end])
    made.add([], [])  # a batch with no piece adds nothing (no stray comma)
    expected = at_once(lengths, times, started)
    assert made.json() == expected
    assert chunks_json(lengths, times, started) == expected
    assert orjson.loads(expected) == [[size, ms] for size, ms in orjson.loads(made.json())]


def test_a_long_stream_is_made_a_block_at_a_time(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(chunk_times, "_JSON_BLOCK", 7)
    lengths = list(range(50))
    times = [10**9 + i * 1_234_567 for i in range(50)]
    assert chunks_json(lengths, times, 10**9) == at_once(lengths, times, 10**9)
    assert chunks_json([], [], 0) == "[]" == ChunkTimes(0).json()
