"""Bounded decoding: what an upstream sends is not trusted to inflate to a sane size (a review
sent a 102-byte brotli answer that took the writer past a GB, and a 1.6 KB one past 13 GB)."""

from __future__ import annotations

import gzip
import resource
import zlib

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from llmtap.recorder.decoding import DecodedTooLarge, decode_at_most, decoder_for

ZEROS_MB = 256


def _packed(encoding: str, megabytes: int) -> bytes:
    """`megabytes` MB of zeros, packed a MB at a time (never held whole here)."""
    zeros = b"\0" * (1 << 20)
    if encoding == "br":
        packer = brotli.Compressor(quality=5)
        return b"".join([packer.process(zeros) for _ in range(megabytes)] + [packer.finish()])
    if encoding == "zstd":
        writer = zstandard.ZstdCompressor().compressobj()
        return b"".join([writer.compress(zeros) for _ in range(megabytes)] + [writer.flush()])
    wbits = 31 if encoding == "gzip" else 15
    deflater = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return b"".join([deflater.compress(zeros) for _ in range(megabytes)] + [deflater.flush()])


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_a_bomb_is_refused_without_being_inflated(encoding: str) -> None:
    bomb = _packed(encoding, ZEROS_MB)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert decode_at_most(bomb, encoding, 16 << 20) is None
    with pytest.raises(DecodedTooLarge):
        decoder_for(encoding).decompress(bomb, 16 << 20)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 64, f"{len(bomb)} bytes of {encoding}: +{grown_mb:.0f} MB to refuse it"


PACKERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}


@settings(max_examples=60, deadline=None)
@given(
    encoding=st.sampled_from(sorted(PACKERS)),
    text=st.binary(min_size=0, max_size=20_000),
    cuts=st.lists(st.integers(min_value=0, max_value=30_000), max_size=8),
)
def test_bounded_decoding_of_pieces_cut_anywhere_gives_the_body(
    encoding: str, text: bytes, cuts: list[int]
) -> None:
    packed = PACKERS[encoding](text * 3)
    decoder = decoder_for(encoding)
    edges = sorted({0, len(packed), *(c % (len(packed) + 1) for c in cuts)})
    pieces = zip(edges, edges[1:], strict=False)
    out = b"".join(decoder.decompress(packed[a:b], 1 << 20) for a, b in pieces)
    assert out + decoder.flush() == text * 3
    assert decode_at_most(packed, encoding, len(text) * 3) == text * 3
    if text:
        assert decode_at_most(packed, encoding, len(text) * 3 - 1) is None


def test_zstd_of_several_frames_is_read_whole_however_it_is_cut() -> None:
    """A server may end a zstd frame at each flush: every frame is read (before: the first one
    only, and a later piece raised), as curl, Go and httpx2 read them."""
    c = zstandard.ZstdCompressor()
    body = b"".join(c.compress(b"data: %d\n\n" % i) for i in range(5))
    for step in (1, 7, len(body)):
        decoder = decoder_for("zstd")
        out = b"".join(
            decoder.decompress(body[at : at + step], 1 << 20) for at in range(0, len(body), step)
        )
        assert out + decoder.flush() == b"".join(b"data: %d\n\n" % i for i in range(5)), step
