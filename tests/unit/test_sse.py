"""SseDecoder: the WHATWG rules, whatever the cuts, and the same events as the SDK's decoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder

from llmtap.recorder.records import SseEvent
from llmtap.recorder.sse import SseDecoder

STREAM = (
    b": keep-alive\n"
    b'event: message\nid: 7\ndata: {"a": "h\xc3\xa9llo \xf0\x9f\x8e\x89"}\n\n'
    b"data: line one\r\ndata:line two\r\n\r\n"
    b'retry: 3000\rdata: {"b": "\xe6\x97\xa5\xe6\x9c\xac"}\r\r'
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SseEvent(data='{"a": "héllo 🎉"}', event="message", id="7"),
    SseEvent(data="line one\nline two", id="7"),
    SseEvent(data='{"b": "日本"}', id="7", retry=3000),
    SseEvent(data="[DONE]", id="7"),
]


def decode(*pieces: bytes) -> list[SseEvent]:
    decoder = SseDecoder()
    return [e for piece in pieces for e in decoder.feed(piece)] + decoder.finish()


def sdk_decode(*pieces: bytes) -> list[SseEvent]:
    return [
        SseEvent(data=e.data, event=e.event, id=e.id, retry=e.retry)
        for e in SSEDecoder().iter_bytes(iter(pieces))
    ]


def test_a_realistic_stream() -> None:
    assert decode(STREAM) == EXPECTED


@pytest.mark.parametrize("at", range(len(STREAM) + 1))
def test_every_split_point(at: int) -> None:
    assert decode(STREAM[:at], STREAM[at:]) == EXPECTED


def test_byte_by_byte() -> None:
    assert decode(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == EXPECTED


@pytest.mark.parametrize("end", [b"\n", b"\r", b"\r\n"])
def test_each_line_end(end: bytes) -> None:
    stream = b"data: a" + end + b"data: b" + end + end + b"data: c" + end + end
    assert decode(stream) == [SseEvent("a\nb"), SseEvent("c")]


def test_cr_at_the_end_of_a_piece_then_lf_is_one_line_end() -> None:
    assert decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [SseEvent("a\nb")]


def test_cr_then_cr_is_two_line_ends() -> None:
    assert decode(b"data: a\r", b"\rdata: b\n\n") == [SseEvent("a"), SseEvent("b")]


def test_multibyte_character_split_mid_character() -> None:
    data = "data: 🎉日本\n\n".encode()
    for at in range(6, 16):
        assert decode(data[:at], data[at:]) == [SseEvent("🎉日本")]


def test_invalid_utf8_is_replaced() -> None:
    assert decode(b"data: \xff\xfe ok\n\n") == [SseEvent("\ufffd\ufffd ok")]


def test_comments_and_unknown_fields_are_ignored() -> None:
    assert decode(b":hi\n: there\nfoo: bar\ndata: x\n\n") == [SseEvent("x")]


def test_field_without_colon_and_without_space() -> None:
    assert decode(b"data\ndata:x\ndata:  two\n\n") == [SseEvent("\nx\n two")]


def test_event_without_data_is_not_dispatched() -> None:
    assert decode(b"event: ping\n\nid: 3\n\ndata: x\n\n") == [SseEvent("x", id="3")]


def test_event_type_resets_but_id_persists() -> None:
    events = decode(b"event: a\nid: 1\ndata: x\n\ndata: y\n\n")
    assert events == [SseEvent("x", event="a", id="1"), SseEvent("y", id="1")]


def test_id_with_nul_is_ignored() -> None:
    assert decode(b"id: 1\ndata: a\n\nid: 2\x00\ndata: b\n\n")[1] == SseEvent("b", id="1")


@pytest.mark.parametrize("value", [b"x", b"-1", b"1.5", b"", b"\xd9\xa3"])
def test_retry_takes_only_ascii_digits(value: bytes) -> None:
    assert decode(b"retry: " + value + b"\ndata: a\n\n") == [SseEvent("a")]


def test_bom_at_start_is_skipped_even_split() -> None:
    assert decode(b"\xef\xbb", b"\xbfdata: a\n\n") == [SseEvent("a")]
    assert decode(b"data: \xef\xbb\xbfa\n\n") == [SseEvent("\ufeffa")]  # only at the start


def test_unterminated_last_event_is_flushed_by_finish() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\n\ndata: b") == [SseEvent("a")]
    assert decoder.finish() == [SseEvent("b")]
    assert decode(b"data: c\n") == [SseEvent("c")]


def test_same_events_as_the_sdk_decoder() -> None:
    assert decode(STREAM) == sdk_decode(STREAM) == EXPECTED


# hypothesis

field_values = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\x00"), max_size=12
)
events = st.builds(
    lambda event, id_, datas: (event, id_, datas),
    st.none() | field_values.filter(bool),
    st.none() | field_values,
    st.lists(field_values, min_size=1, max_size=3),
)


def render(stream_events: list[tuple[str | None, str | None, list[str]]], end: str) -> bytes:
    lines: list[str] = []
    for event, id_, datas in stream_events:
        lines += [f"event: {event}"] if event is not None else []
        lines += [f"id: {id_}"] if id_ is not None else []
        lines += [f"data: {d}" for d in datas] + [""]
    return "".join(line + end for line in lines).encode()


@settings(max_examples=300, deadline=None)
@given(st.lists(events, max_size=6), st.sampled_from(["\n", "\r", "\r\n"]), st.data())
def test_any_chunking_gives_the_same_events(
    stream_events: list[tuple[str | None, str | None, list[str]]], end: str, data: st.DataObject
) -> None:
    wire = render(stream_events, end)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    whole = decode(wire)
    assert decode(*pieces) == whole
    assert [e.data for e in whole] == ["\n".join(datas) for _, _, datas in stream_events]
    assert sdk_decode(*pieces) == whole  # where both decoders agree: events that carry data


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_arbitrary_bytes_never_raise(pieces: list[bytes]) -> None:
    events = decode(*pieces)
    assert decode(b"".join(pieces)) == events
