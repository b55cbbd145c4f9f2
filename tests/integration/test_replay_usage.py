"""Replay and `stream_options.include_usage`, with the real SDK (FIELD 4.6).

`include_usage` is no part of a stream's match key: llmtap asks the upstream for usage on
every stream it records, so a recording made with or without it holds the usage. A replayed
stream is the bytes the client would have received from llmtap live given its own
`include_usage`: the usage chunk kept when it asks, taken out when it does not.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openai import NotFoundError, OpenAI

from llmtap.recorder.cassettes import export_cassette, import_cassette
from tests.conftest import TEST_KEY, Proxy

StartProxy = Callable[..., Proxy]
NOWHERE = "http://127.0.0.1:9/v1"  # replay must never call it
ASKED = "recorded asking for usage"
UNASKED = "recorded without stream_options"
RECORDED_AS: dict[str, dict[str, Any] | None] = {
    ASKED: {"include_usage": True},
    UNASKED: None,
}
VARIANTS: tuple[dict[str, Any] | None, ...] = (
    None,
    {"include_usage": False},
    {"include_usage": True},
    {},
)
# the simulator numbers its answers and stamps them with the time: a second call of the same
# request differs in these two fields only
_VARYING = re.compile(rb'"id":"chatcmpl-[^"]*"|"created":\d+')


def streamed(base_url: str, prompt: str, options: dict[str, Any] | None) -> tuple[bytes, str]:
    """The body a real SDK client receives for a streamed chat request, with `stream_options`
    as given (None: left out), id and created made constant; and the `llmtap-replayed` header."""
    extra = {} if options is None else {"stream_options": options}
    with (
        OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0) as client,
        client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            **extra,
        ) as response,
    ):
        body = b"".join(response.iter_bytes())
        replayed = response.headers.get("llmtap-replayed", "")
    return _VARYING.sub(lambda m: m[0].split(b":")[0] + b":0", body), replayed


def events(body: bytes) -> list[bytes]:
    return [event for event in body.split(b"\n\n") if event]


def has_usage_chunk(body: bytes) -> bool:
    return any(b'"choices":[]' in e and b'"prompt_tokens"' in e for e in events(body))


def record(proxy: Proxy) -> None:
    """The two recordings: one whose client asked for usage, one whose client did not."""
    for prompt, options in RECORDED_AS.items():
        streamed(proxy.base_url, prompt, options)
    proxy.flush()


@pytest.fixture
def live(start_proxy: StartProxy) -> Callable[[str, dict[str, Any] | None], bytes]:
    """What llmtap live (recording, over the simulator) sends a client for that request."""
    proxy = start_proxy()
    return lambda prompt, options: streamed(proxy.base_url, prompt, options)[0]


def assert_replays_as_live(
    replay: Proxy, live: Callable[[str, dict[str, Any] | None], bytes]
) -> None:
    for prompt in RECORDED_AS:
        for options in VARIANTS:
            got, replayed = streamed(replay.base_url, prompt, options)
            assert replayed, f"{prompt!r} with stream_options {options} was not replayed"
            expected = live(prompt, options)
            assert events(got) == events(expected), (prompt, options)
            asked = bool(options and options.get("include_usage"))
            assert has_usage_chunk(got) is asked, (prompt, options)


def test_a_stream_replays_with_the_usage_its_client_asks_for(
    start_proxy: StartProxy, live: Callable[[str, dict[str, Any] | None], bytes]
) -> None:
    recorder = start_proxy()
    record(recorder)
    replay = start_proxy(mode="replay", upstream=NOWHERE, db=str(recorder.db))
    assert_replays_as_live(replay, live)
    assert replay.app.replayer is not None and replay.app.replayer.miss_count == 0


def test_a_cassette_replays_the_usage_the_same_way(
    start_proxy: StartProxy, live: Callable[[str, dict[str, Any] | None], bytes], tmp_path: Path
) -> None:
    recorder = start_proxy()
    record(recorder)
    cassette = tmp_path / "usage.yaml"
    assert export_cassette(recorder.db, cassette) == 2
    imported = tmp_path / "imported.db"
    assert import_cassette(cassette, imported) == 2
    replay = start_proxy(mode="replay", upstream=NOWHERE, db=str(imported))
    assert_replays_as_live(replay, live)


def test_a_stream_recorded_without_usage_answers_only_clients_that_do_not_ask(
    start_proxy: StartProxy,
) -> None:
    """With `stream_usage` off llmtap asks for nothing: the recording holds no usage. A client
    that does not ask for it gets the stream as recorded; one that asks gets a miss that says
    why (a stream without the usage it asked for would pass for one whose usage is null)."""
    recorder = start_proxy(stream_usage=False)
    recorded, _ = streamed(recorder.base_url, UNASKED, None)
    recorder.flush()
    assert not has_usage_chunk(recorded)
    replay = start_proxy(mode="replay", upstream=NOWHERE, db=str(recorder.db))
    for options in (None, {"include_usage": False}, {}):
        got, replayed = streamed(replay.base_url, UNASKED, options)
        assert replayed and events(got) == events(recorded), options
    with (
        OpenAI(base_url=replay.base_url, api_key=TEST_KEY, max_retries=0) as client,
        pytest.raises(NotFoundError, match="without the stream's usage"),
    ):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": UNASKED}],
            stream=True,
            stream_options={"include_usage": True},
        )
    got, replayed = streamed(replay.base_url, UNASKED, None)  # and it is not used up
    assert replayed and events(got) == events(recorded)


def test_the_sdk_reads_the_replayed_usage(start_proxy: StartProxy) -> None:
    """The SDK's own chunks: the last one carries the usage the client asked for."""
    recorder = start_proxy()
    record(recorder)
    replay = start_proxy(mode="replay", upstream=NOWHERE, db=str(recorder.db))
    with OpenAI(base_url=replay.base_url, api_key=TEST_KEY, max_retries=0) as client:
        for prompt in RECORDED_AS:
            chunks = list(
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": prompt}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            usage = chunks[-1].usage
            assert usage is not None and usage.total_tokens > 0 and chunks[-1].choices == []
            bare = list(
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": prompt}],
                    stream=True,
                )
            )
            assert all(c.usage is None for c in bare) and len(bare) == len(chunks) - 1


def test_a_later_recording_with_usage_answers_a_client_that_asks(start_proxy: StartProxy) -> None:
    """A first recording made without usage does not stand in the way of a later one made
    with it: a client that asks for the usage gets the later one, every time (before: a miss
    saying "record it again", which a database that is appended to could never mend)."""
    first = start_proxy(stream_usage=False)
    without, _ = streamed(first.base_url, UNASKED, None)
    first.flush()
    second = start_proxy(db=str(first.db))
    with_usage, _ = streamed(second.base_url, UNASKED, {"include_usage": True})
    second.flush()
    assert not has_usage_chunk(without) and has_usage_chunk(with_usage)
    replay = start_proxy(mode="replay", upstream=NOWHERE, db=str(first.db))
    for _ in range(2):
        got, replayed = streamed(replay.base_url, UNASKED, {"include_usage": True})
        assert replayed and events(got) == events(with_usage)
    got, _ = streamed(replay.base_url, UNASKED, None)  # the cursor is the first one's still
    assert events(got) == events(without)
    served = replay.app.replayer.index.served()  # (the fixture's usage() counts these)
    assert len(served) == 3 and sorted(served.count(i) for i in set(served)) == [1, 2]
