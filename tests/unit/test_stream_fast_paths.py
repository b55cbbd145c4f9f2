"""The fast paths of stream reassembly give exactly what the general paths give.

`split_simple` (the whole body split at once) against `SseDecoder`; `summarise_stream` (fast
split, where it applies) against the chunk-by-chunk decoder (`split=False`), on bytes cut at
random places; a `StreamSummariser` fed the pieces a few at a time, as the writer process is fed
while a stream runs, against both; `ChatAssembler`'s text fast path against its general rules
(`fast=False`).
"""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
from chunk_factory import (
    CONTENT_FILTER,
    azure_chunks,
    cut_at_random,
    envelope,
    make_chunks,
    prompt_filter_chunk,
    random_chunks,
    response_events,
    sdk_final_completion,
    sse_bytes,
    usage_body,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from llmtap.recorder.assemble import ChatAssembler
from llmtap.recorder.chunk_times import chunk_ms
from llmtap.recorder.endpoints import CHAT, RESPONSES, Endpoint
from llmtap.recorder.recording import Recording
from llmtap.recorder.records import RequestContext
from llmtap.recorder.sse import SseDecoder, split_simple
from llmtap.recorder.stream_summary import StreamSummariser, StreamSummary
from llmtap.recorder.tracing import header, summarise_stream

# -- split_simple against SseDecoder

BLOCKS = [
    b'data: {"a": 1}',
    b"data: [DONE]",
    b"data: h\xc3\xa9llo \xf0\x9f\x8e\x89",
    b"data: \xff\xfe not utf-8",
    b"data: ",
    b"data:",
    b"data:x",
    b"event: message\ndata: {}",
    b"event: \ndata: x",
    b"event: a\nevent: b\ndata: y",
    b"id: 7\ndata: z",
    b"retry: 10\ndata: z",
    b": keep-alive",
    b"data: a\ndata: b",
    b"",
    b"\xef\xbb\xbfdata: bom",
    b"data: cr\r",
    b"nonsense",
]
SEPARATORS = [b"\n\n", b"\n\n", b"\n\n", b"\n", b"\n\n\n", b"\r\n\r\n", b""]


def decode(body: bytes) -> list[tuple[str, str | None]]:
    decoder = SseDecoder()
    return [(e.data, e.event) for e in decoder.feed(body) + decoder.finish()]


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(BLOCKS), st.sampled_from(SEPARATORS)), max_size=8),
    st.binary(max_size=8),
)
def test_split_simple_gives_the_decoders_events(
    parts: list[tuple[bytes, bytes]], tail: bytes
) -> None:
    body = b"".join(block + sep for block, sep in parts) + tail
    simple = split_simple(body)
    if simple is None:
        return  # the decoder's rules apply: nothing to compare
    payloads, names = simple.payloads, simple.names
    datas = [p.decode("utf-8", "replace") for p in payloads]
    assert list(zip(datas, names or [None] * len(datas), strict=True)) == decode(body)


def test_split_simple_takes_the_common_shapes() -> None:
    chat = sse_bytes(make_chunks("Hello", usage=True))
    assert split_simple(chat) is not None
    events, _ = response_events("Hello")
    assert split_simple(responses_wire(events)) is not None
    assert split_simple(chat.replace(b"\n", b"\r\n")) is None


# -- summarise_stream: the joined body against the decoder, chunk by chunk


def responses_wire(events: list[dict[str, Any]]) -> bytes:
    return b"".join(
        f"event: {e['type']}\ndata: {json.dumps(e, ensure_ascii=False)}\n\n".encode()
        for e in events
    )


def stream_recording(wire: bytes, rng: random.Random, encoding: str | None = None) -> Recording:
    rec = Recording("POST", "/chat/completions", "", [], b"{}", RequestContext())
    headers = [("content-type", "text/event-stream")]
    if encoding is not None:
        headers.append(("content-encoding", encoding))
    rec.respond(200, headers)
    at = rec.started_ns
    for piece in cut_at_random(wire, rng, pieces=rng.randint(0, 40)):
        at += rng.randint(0, 3_000_000)
        rec.chunks.append(piece)
        rec.chunk_times_ns.append(at)
    return rec.finish()


def fed_a_few_at_a_time(endpoint: Endpoint, rec: Recording, rng: random.Random) -> StreamSummary:
    """As the writer process summarises a stream that is still running: in batches of pieces
    (some empty), as the proxy sends them along."""
    summariser = StreamSummariser(
        endpoint, header(rec.response_headers, "content-encoding"), rec.started_ns
    )
    at = 0
    while at < len(rec.chunks):
        upto = at + rng.randint(0, 6)
        summariser.feed(rec.chunks[at:upto], rec.chunk_times_ns[at:upto])
        at = upto
    return summariser.finish()


def assert_same_summary(endpoint: Endpoint, rec: Recording, rng: random.Random) -> None:
    fast = summarise_stream(endpoint, rec)
    general = summarise_stream(endpoint, rec, split=False)
    assert fast == general
    assert fed_a_few_at_a_time(endpoint, rec, rng) == general


def odd_chat_wire(rng: random.Random) -> bytes:
    """A chat stream with, now and then, what real and broken upstreams send."""
    chunks = random_chunks(rng)
    datas = [json.dumps(c, ensure_ascii=False).encode() for c in chunks]
    odd = [
        b"not json",
        b'{"error": {"message": "overloaded"}}',
        b"[1, 2]",
        b"  " + datas[0],
        b'{"choices": [{"index": 0, "delta": {"content": "\xff"}}]}',
        b"[DONE] ",
        b"{",
    ]
    for _ in range(rng.randint(0, 3)):
        datas.insert(rng.randint(0, len(datas)), rng.choice(odd))
    if rng.random() < 0.8:
        datas.append(b"[DONE]")
    wire = b"".join(b"data: " + d + b"\n\n" for d in datas)
    return wire[: rng.randint(0, len(wire))] if rng.random() < 0.1 else wire


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_summary_of_a_chat_stream_cut_anywhere(seed: int) -> None:
    rng = random.Random(seed)
    assert_same_summary(CHAT, stream_recording(odd_chat_wire(rng), rng), rng)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.booleans())
def test_summary_of_a_responses_stream_cut_anywhere(seed: int, terminal: bool) -> None:
    rng = random.Random(seed)
    events, _ = response_events(
        "".join(rng.choice(["a", "é", " 🎉", "bc"]) for _ in range(rng.randint(0, 20))),
        terminal=terminal,
    )
    assert_same_summary(RESPONSES, stream_recording(responses_wire(events), rng), rng)


def test_summary_of_a_compressed_stream_is_the_decoders() -> None:
    import gzip

    rng = random.Random(1)
    wire = sse_bytes(make_chunks("Hello there", usage=True))
    rec = stream_recording(gzip.compress(wire), rng, encoding="gzip")
    summary = summarise_stream(CHAT, rec)
    assert summary == summarise_stream(CHAT, rec, split=False)
    assert summary == fed_a_few_at_a_time(CHAT, rec, rng)
    assert summary.output == sdk_final_completion(make_chunks("Hello there", usage=True))


def test_time_to_first_output_is_the_arrival_of_its_event() -> None:
    chunks = make_chunks("Hello", usage=True)
    wire = sse_bytes(chunks)
    first_output = wire.index(b"\n\n", wire.index(b'"content": "Hell')) + 1  # its second LF
    rec = Recording("POST", "/chat/completions", "", [], b"{}", RequestContext())
    rec.respond(200, [("content-type", "text/event-stream")])
    for i, (a, b) in enumerate([(0, first_output), (first_output, first_output + 1)]):
        rec.chunks.append(wire[a:b])
        rec.chunk_times_ns.append(rec.started_ns + (i + 1) * 1_000_000)
    rec.chunks.append(wire[first_output + 1 :])
    rec.chunk_times_ns.append(rec.started_ns + 3_000_000)
    summary = summarise_stream(CHAT, rec)
    assert summary.first_output_ns == rec.started_ns + 2_000_000
    assert summary == summarise_stream(CHAT, rec, split=False)
    for seed in range(20):
        assert summary == fed_a_few_at_a_time(CHAT, rec, random.Random(seed))


# -- ChatAssembler: the text fast path against the general rules


def assemble(chunks: list[Any], fast: bool) -> tuple[Any, list[str], ChatAssembler]:
    assembler = ChatAssembler(fast=fast)
    for chunk in chunks:
        assembler.feed(chunk)
    return assembler.result(), assembler.problems, assembler


values = st.sampled_from([None, "", 0, False, "x", "fp_1", "fp_2", 7, [], {}])
envelope_fields = st.dictionaries(
    st.sampled_from(["id", "model", "created", "system_fingerprint", "usage", "obfuscation", "z"]),
    values | st.just(usage_body()),
    max_size=4,
)
deltas = st.sampled_from(
    [
        {"content": "a"},
        {"content": " é🎉"},
        {"content": ""},
        {},
        {"role": "assistant", "content": ""},
        {"content": None},
        {"content": ["b"]},
        {"content": [{"type": "text", "text": "c"}]},
        {"refusal": "no"},
        {"content": "d", "refusal": None},
        {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
        {"function_call": {"name": "g", "arguments": "1"}},
    ]
)
choices = st.fixed_dictionaries(
    {"index": st.sampled_from([0, 0, 0, 1, True, "0"])},
    optional={
        "delta": deltas | st.sampled_from([None, "text", []]),
        "logprobs": st.sampled_from([None, {"content": [{"token": "a"}]}, "bad"]),
        "finish_reason": st.sampled_from([None, "stop", "length", ""]),
    },
)
chunk_strategy = st.builds(
    lambda fields, choice_list, drop: (
        {k: v for k, v in {**fields, "choices": choice_list}.items() if k != drop}
    ),
    envelope_fields,
    st.lists(choices, max_size=2),
    st.sampled_from([None, None, None, "choices"]),
)


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_chat_fast_path_equals_the_general_rules(data: st.DataObject) -> None:
    """Common chunks, repeated (so that the fast path runs), with odd ones among them."""
    make = data.draw(st.sampled_from([make_chunks, azure_chunks]))
    base = make(data.draw(st.sampled_from(["Hello there", "", "日本語 🎉"])), usage=True)
    stream: list[Any] = [json.loads(json.dumps(c)) for c in base]
    for _ in range(data.draw(st.integers(0, 6))):
        if data.draw(st.booleans()):  # a common chunk with one thing changed
            odd = json.loads(json.dumps(data.draw(st.sampled_from(base[1:-1] or base))))
            key = data.draw(st.sampled_from([*odd, "extra"]))
            if key == "choices":
                odd["choices"] = data.draw(st.lists(choices, max_size=2))
            else:
                odd[key] = data.draw(values | st.just(usage_body()))
        else:
            odd = data.draw(chunk_strategy | st.sampled_from([[], "junk", None, 3]))
        stream.insert(data.draw(st.integers(0, len(stream))), odd)
    fast, fast_problems, _ = assemble(stream, fast=True)
    general, general_problems, _ = assemble(stream, fast=False)
    assert orjson.dumps(fast) == orjson.dumps(general)  # types too: 0 is not False
    assert fast_problems == general_problems


@settings(max_examples=200, deadline=None)
@given(st.lists(chunk_strategy, max_size=12))
def test_chat_fast_path_equals_the_general_rules_on_odd_streams(stream: list[Any]) -> None:
    fast, fast_problems, _ = assemble(stream, fast=True)
    general, general_problems, _ = assemble(stream, fast=False)
    assert orjson.dumps(fast) == orjson.dumps(general)
    assert fast_problems == general_problems


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_chat_fast_path_on_random_streams_equals_the_sdk(seed: int) -> None:
    chunks = random_chunks(random.Random(seed))
    fast, problems, _ = assemble(chunks, fast=True)
    assert fast == sdk_final_completion(chunks)
    assert problems == []


def test_the_fast_path_takes_the_common_stream() -> None:
    chunks = make_chunks("Hello there, how are you today?", usage=True)
    chunks.insert(3, envelope([{"index": 0, "delta": {"content": "!"}}], usage=usage_body()))
    result, _, assembler = assemble(chunks, fast=True)
    assert result == assemble(chunks, fast=False)[0]
    assert assembler._quiet_keys is not None  # it was on at the end of the text


def test_the_fast_path_takes_an_azure_stream() -> None:
    """After Azure's empty first chunk, which gives the envelope, the text chunks (with their
    filter results) are common chunks all the same."""
    chunks = azure_chunks("Hello there, how are you today?", usage=True)
    result, _, assembler = assemble(chunks[:-3], fast=True)
    assert assembler._quiet_keys is not None
    assert result == assemble(chunks[:-3], fast=False)[0]
    assert assemble(chunks, fast=True)[0] == sdk_final_completion(chunks)


# -- the chunk times of an exchange


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(
        st.integers(-(10**7), 10**16)
        | st.integers(0, 10**9).map(lambda k: k * 1000 + 500)
        | st.integers(0, 10**6),
        max_size=20,
    ),
    st.integers(0, 10**19),
)
def test_chunk_ms_is_round(offsets: list[int], started: int) -> None:
    times = [started + d for d in offsets]
    expected = [round((t - started) / 1e6, 3) for t in times]
    assert [repr(ms) for ms in chunk_ms(times, started)] == [repr(ms) for ms in expected]


# -- ChatAssembler.feed_json: chunks alike but for their text, read as text


TEXTS = [
    "Hi",
    " there",
    "",
    '"',
    "\\",
    "\\u00e9",
    "é",
    "🎉",
    '},"logprobs":null',
    '","obfuscation":"',
]


def openai_chunk(rng: random.Random, text: Any, pad: Any, **changes: Any) -> dict[str, Any]:
    """A chunk as OpenAI writes them (compact; `obfuscation` padding last, new each chunk)."""
    chunk: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "service_tier": "default",
        "system_fingerprint": "fp_1",
        "choices": [
            {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
        ],
        "usage": None,
    }
    chunk.update(changes)
    if pad is not None or rng.random() < 0.5:
        chunk["obfuscation"] = pad
    return chunk


ODD_CHANGES: list[dict[str, Any]] = [
    {"created": 1_700_000_001},
    {"system_fingerprint": "fp_2"},
    {"usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}},
    {"extra": 1},
    {"choices": [{"index": 0, "delta": {"content": 7}, "logprobs": None, "finish_reason": None}]},
    {
        "choices": [
            {"index": 0, "delta": {"content": "x"}, "logprobs": None, "finish_reason": "stop"}
        ]
    },
    {"choices": [{"index": 0, "delta": {"content": "x", "role": "assistant"}, "logprobs": None}]},
    {"choices": [{"index": 1, "delta": {"content": "y"}, "logprobs": None, "finish_reason": None}]},
    {
        "choices": [
            {"index": 0, "delta": {"refusal": "no"}, "logprobs": None, "finish_reason": None}
        ]
    },
    {"choices": [{"index": 0, "delta": {"content": "z"}, "logprobs": {"content": []}}]},
    {"choices": []},
    {"choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]},
]


def dump(chunk: dict[str, Any], rng: random.Random, ascii_only: bool) -> bytes:
    if rng.random() < 0.05:  # the key written with an escape: the same chunk to a parser
        return (
            json.dumps(chunk, separators=(",", ":"))
            .replace('"content"', '"con\\u0074ent"')
            .encode()
        )
    return json.dumps(chunk, separators=(",", ":"), ensure_ascii=ascii_only).encode()


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_chunks_read_as_text_give_what_parsing_gives(seed: int) -> None:
    rng = random.Random(seed)
    padded, ascii_only = rng.random() < 0.6, rng.random() < 0.3
    azure = rng.random() < 0.2  # the prompt's filter results first, the choice's on each chunk
    opening = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
    first = openai_chunk(rng, "", None, choices=[opening])
    chunks = [prompt_filter_chunk(), first] if azure else [first]
    for _ in range(rng.randint(0, 40)):
        pad: Any = "".join(rng.choice('ab"\\') for _ in range(rng.randint(0, 6)))
        pad = (pad if rng.random() < 0.95 else rng.choice([5, None, ["a"]])) if padded else None
        changes = rng.choice(ODD_CHANGES) if rng.random() < 0.1 else {}
        chunks.append(openai_chunk(rng, rng.choice(TEXTS), pad, **changes))
    if azure:
        for chunk in chunks:
            for choice in chunk["choices"]:
                choice["content_filter_results"] = CONTENT_FILTER
    datas = [dump(c, rng, ascii_only) for c in chunks]
    if rng.random() < 0.2:  # bytes that only look alike
        at = rng.randrange(len(datas))
        datas[at] = datas[at].replace(b'"content":"', b'"content":1,"x":"', 1)
    wire = b"".join(b"data: " + d + b"\n\n" for d in datas) + b"data: [DONE]\n\n"
    rec = stream_recording(wire, rng)
    fast = summarise_stream(CHAT, rec)
    assert fast == summarise_stream(CHAT, rec, split=False)
    assert fast == fed_a_few_at_a_time(CHAT, rec, rng)
    general = ChatAssembler(fast=False)
    for data in datas:
        general.feed(json.loads(data))
    assert orjson.dumps(fast.output) == orjson.dumps(general.result())


def test_a_text_chunk_that_finishes_is_no_template() -> None:
    """Its like, after a chunk with another finish reason, sets the first one again."""
    rng = random.Random(4)
    stop = openai_chunk(rng, "a", "p")
    stop["choices"][0]["finish_reason"] = "stop"
    length = openai_chunk(rng, "", "p")
    length["choices"][0].update(delta={}, finish_reason="length")
    chunks = [openai_chunk(rng, "", "p"), stop, length, stop]
    wire = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    rec = stream_recording(wire + b"data: [DONE]\n\n", rng)
    summary = summarise_stream(CHAT, rec)
    assert summary.output["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
    assert summary == summarise_stream(CHAT, rec, split=False)


def test_a_padded_stream_is_read_as_text() -> None:
    rng = random.Random(3)
    chunks = [openai_chunk(rng, f"t{i} ", f"pad{i}") for i in range(20)]
    payloads = [json.dumps(c, separators=(",", ":")).encode() for c in chunks]
    assembler = ChatAssembler()
    assembler.feed(json.loads(payloads[0]))  # first of its choice: the general rules
    assembler.feed(json.loads(payloads[1]))
    assembler.learn_json(payloads[1], json.loads(payloads[1]))
    assert assembler.feed_json(payloads, 2) == 20
    assert assembler.result()["choices"][0]["message"]["content"] == "".join(  # type: ignore[index]
        f"t{i} " for i in range(20)
    )


def test_a_stream_that_leaves_the_common_shape_midway_keeps_its_events() -> None:
    """Split a few events at a time, then the decoder's rules from the event where the shape
    changes: a byte-order mark there is not the stream's first, so it is no BOM to skip."""
    wire = (
        b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n'
        b'\xef\xbb\xbfdata: {"choices": [{"index": 0, "delta": {"content": "b"}}]}\n\n'
        b'data: {"choices": [{"index": 0, "delta": {"content": "c"}}]}\r\n\r\n'
        b"data: [DONE]\n\n"
    )
    rec = stream_recording(wire, random.Random(0))
    general = summarise_stream(CHAT, rec, split=False)
    assert general.output["choices"][0]["message"]["content"] == "ac"  # type: ignore[index]
    for seed in range(30):
        assert fed_a_few_at_a_time(CHAT, rec, random.Random(seed)) == general
