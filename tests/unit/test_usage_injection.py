"""Usage injection: the request asks for usage, and the client's stream loses it again exactly."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmtap.proxy.usage_injection import UsageStripper, injected_body, streams_usage_unasked


def chunk(i: int, content: str | None, usage: bool) -> dict:
    c: dict = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    if usage:
        c["usage"] = None
    return c


def stream(
    n: int, with_usage: bool, sep: bytes = b"\n\n", spaced: bool = False, pretty: bytes = b""
) -> bytes:
    """`pretty`: each event's JSON indented over several data lines, each line opened with
    `pretty` (`data: ` or `data:`), as SSE allows and some servers write."""
    end = sep[: len(sep) // 2]

    def dumps(value: Any) -> bytes:
        if pretty:
            lines = json.dumps(value, indent=1).encode().split(b"\n")
            return end.join(pretty + line for line in lines)[len(pretty) :]
        return json.dumps(value).encode() if spaced else orjson.dumps(value)

    events = [dumps(chunk(i, f"w{i} ", with_usage)) for i in range(n)]
    if with_usage:
        events.append(
            dumps(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": "m",
                    "choices": [],
                    "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n},
                }
            )
        )
    events.append(b"[DONE]")
    return b"".join(b"data: " + e + sep for e in events)


def strip_all(data: bytes, cuts: list[int]) -> bytes:
    stripper = UsageStripper()
    out, last = [], 0
    for cut in sorted(set(cuts)) + [len(data)]:
        out.append(stripper.feed(data[last:cut]))
        last = cut
    out.append(stripper.flush())
    return b"".join(out)


def test_injection_only_when_streaming_without_usage() -> None:
    body = orjson.dumps({"model": "m", "stream": True, "messages": []})
    injected = orjson.loads(injected_body("/chat/completions", body) or b"{}")
    assert injected["stream_options"] == {"include_usage": True}
    assert list(injected)[:3] == ["model", "stream", "messages"]  # key order kept
    kept = orjson.dumps({"model": "m", "stream": True, "stream_options": {"include_usage": True}})
    assert injected_body("/chat/completions", kept) is None
    other = orjson.dumps({"stream": True, "stream_options": {"include_obfuscation": False}})
    assert orjson.loads(injected_body("/completions", other) or b"{}")["stream_options"] == {
        "include_obfuscation": False,
        "include_usage": True,
    }
    assert injected_body("/chat/completions", b'{"stream": false}') is None
    assert injected_body("/embeddings", b'{"stream": true}') is None
    assert injected_body("/chat/completions", b'{"stream": tru') is None
    assert injected_body("/chat/completions", b'{"stream": true, "stream_options": 3}') is None


def test_stripped_stream_equals_the_stream_without_usage_at_every_cut() -> None:
    with_usage, without = stream(4, True), stream(4, False)
    for cut in range(len(with_usage)):
        assert strip_all(with_usage, [cut]) == without, cut


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 30),
    st.lists(st.integers(0, 4000), max_size=12),
    st.sampled_from([b"\n\n", b"\r\n\r\n"]),
)
def test_stripped_stream_at_random_cuts(n: int, cuts: list[int], sep: bytes) -> None:
    with_usage = stream(n, True, sep)
    assert strip_all(with_usage, [c % (len(with_usage) + 1) for c in cuts]) == stream(n, False, sep)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 30),
    st.lists(st.integers(0, 4000), max_size=12),
    st.sampled_from([b"\n\n", b"\r\n\r\n", b"\r\r"]),
)
def test_a_spaced_stream_at_random_cuts(n: int, cuts: list[int], sep: bytes) -> None:
    """`"usage": null` with spaces (not OpenAI's compact form): the per-event path."""
    with_usage = stream(n, True, sep, spaced=True)
    expected = stream(n, False, sep, spaced=True)
    assert strip_all(with_usage, [c % (len(with_usage) + 1) for c in cuts]) == expected


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 12),
    st.lists(st.integers(0, 8000), max_size=12),
    st.sampled_from([b"\n\n", b"\r\n\r\n", b"\r\r"]),
    st.sampled_from([b"data: ", b"data:"]),
)
def test_a_pretty_printed_stream_at_random_cuts(
    n: int, cuts: list[int], sep: bytes, prefix: bytes
) -> None:
    """JSON over several `data:` lines per event: the `"usage": null` member leaves with its
    comma and line, the usage chunk leaves whole, everything else stays byte for byte
    (before, a regex across the lines left a dangling comma the SDK could not parse, and the
    usage chunk reached the client)."""
    with_usage = stream(n, True, sep, pretty=prefix)
    expected = stream(n, False, sep, pretty=prefix)
    assert b"\n" + prefix + b' "usage": null' in with_usage.replace(b"\r", b"\n")
    assert strip_all(with_usage, [c % (len(with_usage) + 1) for c in cuts]) == expected


def test_an_event_whose_usage_null_cannot_be_cut_cleanly_is_left_as_sent() -> None:
    """Never a broken event: when cutting `"usage": null` would not leave the same chunk, the
    client gets the event as the upstream sent it (SDKs read a null usage as none)."""
    odd = b'data: {"choices": [{"delta": {"content": "a"}}],\ndata:  "usage" : null , "x": 1}\n\n'
    out = strip_all(odd, [])
    body = b"\n".join(line[5:] for line in out.strip().split(b"\n"))
    assert orjson.loads(body) == {"choices": [{"delta": {"content": "a"}}], "x": 1}


@pytest.mark.parametrize("spaced", [False, True])
def test_usage_on_a_content_chunk_is_left_as_the_provider_sent_it(spaced: bool) -> None:
    """Providers that put usage on their last content chunk do it whether asked or not: the
    client would have had it directly, byte for byte."""
    c = chunk(0, "hi", False)
    c["usage"] = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    payload = json.dumps(c).encode() if spaced else orjson.dumps(c)
    data = b"data: " + payload + b"\n\ndata: [DONE]\n\n"
    for cut in random.Random(1).sample(range(len(data) + 1), 20):
        assert strip_all(data, [cut]) == data


@pytest.mark.parametrize(
    ("empty_choice", "dropped"),
    [
        ({"index": 0, "delta": {}}, True),  # LiteLLM's chat usage chunk
        ({"index": 0}, True),  # LiteLLM's legacy completions usage chunk
        ({"index": 0, "delta": {"content": None, "role": None}, "finish_reason": None}, True),
        ({"index": 0, "text": "", "logprobs": None, "finish_reason": None}, True),
        ({"index": 0, "delta": {}, "finish_reason": "stop"}, False),  # unasked on the last
        ({"index": 0, "delta": {"content": "."}}, False),
    ],
)
def test_a_usage_chunk_whose_choices_say_nothing_is_dropped(
    empty_choice: dict[str, Any], dropped: bool
) -> None:
    """A usage chunk that holds choices with nothing in them (LiteLLM's) exists only because
    usage was asked for, as OpenAI's `"choices": []` does; a choice that says something (a
    finish reason, text) is the provider's own last chunk, with the usage it sends unasked."""
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    before = b"".join(
        b"data: " + orjson.dumps(chunk(i, f"w{i}", False)) + b"\n\n" for i in range(2)
    )
    last = b"data: " + orjson.dumps({"choices": [empty_choice], "usage": usage}) + b"\n\n"
    data = before + last + b"data: [DONE]\n\n"
    expected = before + b"data: [DONE]\n\n" if dropped else data
    for cut in random.Random(2).sample(range(len(data) + 1), 20):
        assert strip_all(data, [cut]) == expected


def test_streams_without_usage_pass_untouched() -> None:
    plain = stream(3, False)
    assert strip_all(plain, [5, 50, 51]) == plain
    spaced = b'data: {"choices": [{"delta": {}}], "usage": null}\n\n'
    assert strip_all(spaced, []) == b'data: {"choices": [{"delta": {}}]}\n\n'


# a data line's end and the blank line's, per event: any pair but a lone CR followed by a LF,
# which is one CRLF (the line would not end there)
_LINE_ENDS = (b"\n", b"\r\n", b"\r")
_ENDS = [(a, b) for a in _LINE_ENDS for b in _LINE_ENDS if a + b != b"\r\n"]


def mixed_events(n: int, with_usage: bool, ends: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The events of `stream(n, with_usage)`, each with its own line ends."""
    payloads = [orjson.dumps(chunk(i, f"w{i} ", with_usage)) for i in range(n)]
    if with_usage:
        usage = {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": 3 + n}
        payloads.append(orjson.dumps({"choices": [], "usage": usage}))
    payloads.append(b"[DONE]")
    out = []
    for i, payload in enumerate(payloads):
        line_end, blank = ends[i % len(ends)]
        out.append(b"data: " + payload + line_end + blank)
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 12),
    st.lists(st.sampled_from(_ENDS), min_size=1, max_size=8),
    st.lists(st.integers(0, 4000), max_size=12),
)
def test_mixed_line_ends_at_random_cuts(
    n: int, ends: list[tuple[bytes, bytes]], cuts: list[int]
) -> None:
    """LF, CRLF and lone CR mixed in one stream, as SSE allows (`data: ...\\n\\r\\n`): before,
    only `\\n\\n`, `\\r\\n\\r\\n` and `\\r\\r` ended an event, so such a stream was held whole
    until its end and reached the client with the usage llmtap had asked for."""
    events = mixed_events(n, True, ends)
    with_usage = b"".join(events)
    del events[n]  # the usage event; the events after it keep their own line ends
    expected = b"".join(e.replace(b',"usage":null', b"") for e in events)
    assert strip_all(with_usage, [c % (len(with_usage) + 1) for c in cuts]) == expected


@pytest.mark.parametrize("ends", _ENDS)
def test_each_event_goes_out_as_soon_as_it_ends(ends: tuple[bytes, bytes]) -> None:
    """An event a read completes is passed on in that read, whatever its line ends (a CR that
    ends a read goes out at once: a LF that follows it in the next read goes after it)."""
    events = mixed_events(3, True, [ends])
    stripper = UsageStripper()
    for i, event in enumerate(events):
        expected = b"" if i == 3 else event.replace(b',"usage":null', b"")  # (3: the usage)
        assert stripper.feed(event) == expected, i
    assert stripper.flush() == b""


def test_a_long_event_in_small_pieces() -> None:
    """A 4 MB event (a partial image's base64) cut into 1 KB reads: passed on whole at its end,
    its usage null taken out (the event held is searched a read at a time: before, every read
    copied and searched all of it, 24 MB in 16 KB reads took 9 s)."""
    big = chunk(0, "x" * (4 << 20), True)
    data = b"data: " + orjson.dumps(big) + b"\r\n\r\ndata: [DONE]\r\n\r\n"
    stripper = UsageStripper()
    out = [stripper.feed(data[at : at + 1024]) for at in range(0, len(data), 1024)]
    out.append(stripper.flush())
    assert b"".join(out) == data.replace(b',"usage":null', b"")
    assert sum(1 for piece in out if piece) <= 2  # the event at its end, then [DONE]


@pytest.mark.parametrize(
    ("upstream", "unasked"),
    [
        ("https://openrouter.ai/api/v1", True),
        ("https://eu.openrouter.ai/api/v1", True),
        ("https://OpenRouter.ai./api/v1", True),
        ("https://api.openai.com/v1", False),
        ("https://notopenrouter.ai/v1", False),
        ("https://openrouter.ai.example.com/v1", False),
        ("http://127.0.0.1:8765/v1", False),
        ("http://[::1/v1", False),  # does not parse: each request is a 502, none a crash here
    ],
)
def test_openrouter_streams_usage_unasked(upstream: str, unasked: bool) -> None:
    """OpenRouter sends a stream's usage whether asked or not: asked by llmtap, its usage chunk
    was taken out of a stream whose client gets it directly (found by a review)."""
    assert streams_usage_unasked(upstream) is unasked
