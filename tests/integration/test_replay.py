"""Replay with the real SDK: record against the simulator, stop it, answer from the recordings."""

from __future__ import annotations

import asyncio
import gzip
import itertools
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import brotli
import httpx
import pytest
import zstandard
from openai import APIStatusError, APITimeoutError, AsyncOpenAI, NotFoundError, OpenAI

from llmtap.proxy.app import create_app, uvicorn_kwargs
from llmtap.proxy.config import Settings
from llmtap.proxy.server import ServerThread
from llmtap.proxy.simulator import create_simulator
from tests.conftest import TEST_KEY
from tests.integration.test_proxy_sdk import TIME, WEATHER
from tests.raw_upstream import json_reply, raw_upstream

Start = Callable[..., ServerThread]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start llmtap on tmp_path/llmtap.db with the given settings; all stopped at the end."""
    servers: list[ServerThread] = []

    def run(**overrides: Any) -> ServerThread:
        settings = Settings(**{"db": str(tmp_path / "llmtap.db"), "port": 0, **overrides})
        server = ServerThread(create_app(settings), **uvicorn_kwargs()).start()
        servers.append(server)
        return server

    yield run
    for server in servers:
        server.stop()


@pytest.fixture
def private_upstream() -> Iterator[ServerThread]:
    """A simulator of this test's own, so that the test can stop it."""
    server = ServerThread(create_simulator()).start()
    yield server
    if server.server.started and not server.server.should_exit:
        server.stop()


def sdk_calls(base_url: str) -> dict[str, Any]:
    """The same calls for recording and replaying; what the app saw."""
    with OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0) as c:
        chat = c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}], temperature=0
        )
        with c.chat.completions.stream(
            model="gpt-4o-mini",
            tools=[WEATHER, TIME],
            parallel_tool_calls=True,
            messages=[{"role": "user", "content": "weather and time in Oslo"}],
        ) as stream:
            streamed = stream.get_final_completion()
        emb = c.embeddings.create(model="text-embedding-3-small", input="replay me")
        resp = c.responses.create(model="gpt-4o-mini", input="and the responses API")

    async def async_call() -> str:
        async with AsyncOpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0) as ac:
            out = []
            async for chunk in await ac.chat.completions.create(
                model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "async"}]
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    out.append(chunk.choices[0].delta.content)
            return "".join(out)

    return {
        "chat": chat.model_dump(),
        "stream": streamed.model_dump(),
        "embedding": emb.data[0].embedding,
        "responses": resp.model_dump(),
        "async": asyncio.run(async_call()),
    }


def test_record_then_replay_with_the_upstream_gone(
    start: Start, private_upstream: ServerThread
) -> None:
    recorder = start(upstream=f"{private_upstream.url}/v1")
    recorded = sdk_calls(f"{recorder.url}/v1")
    recorder.stop()
    private_upstream.stop()
    replayer = start(mode="replay", upstream="http://127.0.0.1:9/v1")
    replayed = sdk_calls(f"{replayer.url}/v1")
    assert replayed == recorded  # same ids, same tool call arguments, same vectors, same text


def test_a_miss_says_what_differs_from_the_nearest_recording(start: Start, upstream: str) -> None:
    server = start(upstream=upstream)
    with OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0) as c:
        c.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": "be kind"},
                {"role": "user", "content": "what is 2+2?"},
            ],
        )
    server.stop()
    replay = start(mode="replay")
    with (
        OpenAI(base_url=f"{replay.url}/v1", api_key="unused", max_retries=0) as c,
        pytest.raises(NotFoundError) as caught,
    ):
        c.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": "be kind"},
                {"role": "user", "content": "what is 3+3?"},
            ],
        )
    error = caught.value.body
    assert error["type"] == "llmtap_replay_miss" and error["code"] == "replay_miss"
    assert "POST /v1/chat/completions" in error["message"]
    assert "messages[1].content: 'what is 2+2?' -> 'what is 3+3?'" in error["message"]
    miss = httpx.post(f"{replay.url}/v1/embeddings", json={"model": "x", "input": "y"})
    assert miss.status_code == 404 and "nothing was recorded" in miss.json()["error"]["message"]


def test_misses_are_logged_and_counted_in_health(
    start: Start, upstream: str, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A suite in another language whose code catches the 404 left no sign of its stale
    recordings: no trace, no log line, no count."""
    replay = start(mode="replay", upstream=upstream)
    assert httpx.get(f"{replay.url}/api/health").json()["replay"] == {
        "misses": 0,
        "last_miss": None,
    }
    with caplog.at_level("WARNING", logger="llmtap.replay"):
        for text in ("one", "two"):
            miss = httpx.post(f"{replay.url}/v1/embeddings", json={"model": "x", "input": text})
            assert miss.status_code == 404
    said = miss.json()["error"]["message"]
    assert httpx.get(f"{replay.url}/api/health").json()["replay"] == {
        "misses": 2,
        "last_miss": said,
    }
    logged = [r.getMessage() for r in caplog.records if r.name == "llmtap.replay"]
    assert len(logged) == 2 and logged[-1] == f"replay miss (404): {said}"
    recording = start(upstream=upstream, db=str(tmp_path / "recorded.db"))
    assert httpx.get(f"{recording.url}/api/health").json()["replay"] is None


def test_a_query_matches_however_an_sdk_writes_it(start: Start) -> None:
    """Python's SDK writes `after=file-b&limit=2` and `a+b`, Node's `limit=2&after=file-b` and
    `a%20b` (and Python's auto-pager the Node order): the same call recorded by one missed
    in the other, with a miss that showed no difference at all."""

    def answer(request: Any) -> bytes:
        return json_reply(b'{"object": "list", "data": [], "has_more": false}')

    with raw_upstream(answer) as upstream:
        server = start(upstream=f"{upstream.url}/v1")
        recorded = httpx.get(f"{server.url}/v1/files?after=file-b&limit=2&purpose=a+b")
        assert recorded.status_code == 200
        server.stop()
    replay = start(mode="replay")
    for query in ("limit=2&after=file-b&purpose=a%20b", "purpose=a%20b&after=file%2Db&limit=2"):
        again = httpx.get(f"{replay.url}/v1/files?{query}")
        assert again.status_code == 200 and again.content == recorded.content, query
    miss = httpx.get(f"{replay.url}/v1/files?limit=3&after=file-b&purpose=a+b")
    assert miss.status_code == 404
    message = miss.json()["error"]["message"]
    assert "query: after=file-b&limit=2&purpose=a%20b -> after=file-b&limit=3&purpose=a%20b" in (
        message
    )


def test_identical_requests_replay_in_recorded_order(start: Start, upstream: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "again"}]}
    server = start(upstream=upstream)
    ids = [
        httpx.post(f"{server.url}/v1/chat/completions", json=body).json()["id"] for _ in range(3)
    ]
    assert len(set(ids)) == 3
    server.stop()
    replay = start(mode="replay")
    got = [
        httpx.post(f"{replay.url}/v1/chat/completions", json=body).json()["id"] for _ in range(4)
    ]
    assert got == [*ids, ids[-1]]  # past the end: the last one again, by default
    replay.stop()
    strict = start(mode="replay", replay_exhausted="miss")
    for _ in range(3):
        httpx.post(f"{strict.url}/v1/chat/completions", json=body)
    past = httpx.post(f"{strict.url}/v1/chat/completions", json=body)
    assert past.status_code == 404 and "already used" in past.json()["error"]["message"]


def test_key_order_whitespace_and_ignored_fields_do_not_matter(start: Start, upstream: str) -> None:
    server = start(upstream=upstream)
    first = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=b'{"model": "m", "user": "alice", "messages": [{"role": "user", "content": "k"}]}',
        headers={"content-type": "application/json"},
    ).json()
    server.stop()
    replay = start(mode="replay")  # user and metadata are ignored by default
    other = (
        b'{"messages":[{"content":"k","role":"user"}],"metadata":{"run":2},"model":"m",'
        b'"user":"bob"}'
    )
    json_headers = {"content-type": "application/json"}
    again = httpx.post(f"{replay.url}/v1/chat/completions", content=other, headers=json_headers)
    assert again.status_code == 200 and again.json() == first
    replay.stop()
    strict = start(mode="replay", replay_ignore_fields="")
    missed = httpx.post(f"{strict.url}/v1/chat/completions", content=other, headers=json_headers)
    assert missed.status_code == 404 and "user" in missed.json()["error"]["message"]


def test_one_request_written_by_two_languages_matches(start: Start, upstream: str) -> None:
    """Python writes `0.0` where JavaScript can only write `0`, LangChain sends `n: 1` and
    `stream: false` where the Node SDK leaves them out, a Go client sends `"tools": null`: one
    request to the API, so one recording answers it (before: a miss naming those fields)."""
    server = start(upstream=upstream)
    json_headers = {"content-type": "application/json"}
    python = (
        b'{"model": "m", "messages": [{"role": "user", "content": "zero"}], "temperature": 0.0,'
        b' "top_p": 1.0, "n": 1, "stream": false, "tools": null, "stream_options": null,'
        b' "presence_penalty": 0.0, "logit_bias": {"50256": -100.0}}'
    )
    first = httpx.post(f"{server.url}/v1/chat/completions", content=python, headers=json_headers)
    assert first.status_code == 200
    server.stop()
    replay = start(mode="replay")
    javascript = (
        b'{"model":"m","messages":[{"role":"user","content":"zero"}],"temperature":0,"top_p":1,'
        b'"logit_bias":{"50256":-100}}'
    )
    again = httpx.post(
        f"{replay.url}/v1/chat/completions", content=javascript, headers=json_headers
    )
    assert again.status_code == 200 and again.json() == first.json()
    other = javascript.replace(b'"temperature":0', b'"temperature":0.5')
    missed = httpx.post(f"{replay.url}/v1/chat/completions", content=other, headers=json_headers)
    assert missed.status_code == 404 and "temperature" in missed.json()["error"]["message"]
    n2 = javascript.replace(b'"top_p":1', b'"top_p":1,"n":2')
    assert (
        httpx.post(
            f"{replay.url}/v1/chat/completions", content=n2, headers=json_headers
        ).status_code
        == 404
    )


def test_streams_replay_instantly_or_at_the_recorded_pace(start: Start, upstream: str) -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "pace"}]}
    headers = {"x-simulator-fault": "chunk-delay-ms=60", "x-simulator-chunks": "6"}

    def timed(url: str) -> tuple[bytes, float, int]:
        began = time.perf_counter()
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers=headers
        ) as response:
            pieces = list(response.iter_raw())
        return b"".join(pieces), time.perf_counter() - began, len(pieces)

    server = start(upstream=upstream)
    original, took, _ = timed(server.url)
    assert took > 0.3
    server.stop()
    instant = start(mode="replay")
    fast, fast_took, _ = timed(instant.url)
    instant.stop()
    paced = start(mode="replay", replay_timing="recorded")
    slow, slow_took, pieces = timed(paced.url)
    assert fast == slow == original  # the same bytes
    assert fast_took < 0.2 and slow_took > 0.3 and pieces >= 6


def test_auto_mode_records_what_is_new_and_replays_what_is_known(
    start: Start, upstream: str
) -> None:
    server = start(mode="auto", upstream=upstream)
    body = {"model": "m", "messages": [{"role": "user", "content": "auto"}]}
    first = httpx.post(f"{server.url}/v1/chat/completions", json=body)
    second = httpx.post(f"{server.url}/v1/chat/completions", json=body)
    assert "llmtap-replayed" not in first.headers and "llmtap-replayed" in second.headers
    assert first.json() == second.json()


def test_mode_per_request_header(start: Start, upstream: str) -> None:
    server = start(upstream=upstream)
    body = {"model": "m", "messages": [{"role": "user", "content": "header"}]}
    recorded = httpx.post(f"{server.url}/v1/chat/completions", json=body).json()
    replayed = httpx.post(
        f"{server.url}/v1/chat/completions", json=body, headers={"llmtap-mode": "replay"}
    )
    assert replayed.json() == recorded and "llmtap-replayed" in replayed.headers
    bad = httpx.post(
        f"{server.url}/v1/chat/completions", json=body, headers={"llmtap-mode": "sideways"}
    )
    assert bad.status_code == 400 and "llmtap-mode" in bad.json()["error"]["message"]


def test_a_stream_recorded_with_injected_usage_replays_without_it(
    start: Start, upstream: str
) -> None:
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "usage"}]}
    server = start(upstream=upstream)
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body) as r:
        live = b"".join(r.iter_raw())
    server.stop()
    replay = start(mode="replay")
    with httpx.stream("POST", f"{replay.url}/v1/chat/completions", json=body) as r:
        again = b"".join(r.iter_raw())
    assert again == live and b'"usage"' not in again


AUDIO = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256))  # a file is bytes, not text


def answer_of(call: Callable[[], Any]) -> tuple[int, Any, str | None]:
    """What the app saw: status, body and request id (an error answer is an answer too)."""
    try:
        result = call()
    except APIStatusError as exc:
        return exc.status_code, exc.body, exc.request_id
    return 200, result.model_dump(), None


def uploads(base_url: str, filename: str = "speech.wav") -> list[tuple[int, Any, str | None]]:
    """Multipart calls: each draws a new random boundary, as the SDK does on every request."""
    with OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0) as c:
        return [
            answer_of(
                lambda: c.audio.transcriptions.create(
                    file=(filename, AUDIO, "audio/wav"), model="whisper-1"
                )
            ),
            answer_of(lambda: c.files.create(file=("batch.jsonl", b'{"a": 1}\n'), purpose="batch")),
        ]


def test_multipart_uploads_replay_although_each_has_a_new_boundary(
    start: Start, private_upstream: ServerThread
) -> None:
    recorder = start(upstream=f"{private_upstream.url}/v1")
    recorded = uploads(f"{recorder.url}/v1")
    assert all(request_id for _, _, request_id in recorded)  # answered by the upstream
    recorder.stop()
    private_upstream.stop()
    replayer = start(mode="replay", upstream="http://127.0.0.1:9/v1")
    assert uploads(f"{replayer.url}/v1") == recorded  # the simulator's 404s, same request ids
    miss = uploads(f"{replayer.url}/v1", filename="other.wav")[0]
    assert miss[0] == 404 and miss[1]["type"] == "llmtap_replay_miss"
    # the part that differs, by its header line; not the boundary, not the file's bytes
    assert miss[1]["message"].endswith(
        "differs in: parts[1].headers[0]: "
        """'Content-Disposition: form-data; name="file"; filename="speech.wav"' -> """
        """'Content-Disposition: form-data; name="file"; filename="other.wav"'"""
    )


def test_a_replay_server_answers_what_another_llmtap_recorded_after_it_started(
    start: Start, upstream: str
) -> None:
    """A replay server and a recording one on the same file: what the recorder adds later is
    found at the replay server's first miss on it (it reads the new rows only)."""
    replay = start(mode="replay")
    body = {"model": "m", "messages": [{"role": "user", "content": "recorded later"}]}
    assert httpx.post(f"{replay.url}/v1/chat/completions", json=body).status_code == 404
    recorder = start(upstream=upstream)
    first = httpx.post(f"{recorder.url}/v1/chat/completions", json=body).json()
    refused = httpx.post(f"{recorder.url}/v1/chat/completions", json={"model": "m"})
    assert refused.status_code == 400
    recorder.stop()  # (its writer has committed everything when it stops)
    again = httpx.post(f"{replay.url}/v1/chat/completions", json=body)
    assert again.status_code == 200 and again.json() == first
    error = httpx.post(f"{replay.url}/v1/chat/completions", json={"model": "m"})
    assert error.status_code == 400 and error.json() == refused.json()


def compressed(body: bytes, encoding: str, mtime: int = 0) -> bytes:
    """`body` in a content coding; gzip's header holds `mtime` (a client writes its clock)."""
    if encoding == "gzip":
        return gzip.compress(body, mtime=mtime)
    if encoding == "deflate":
        return zlib.compress(body)
    if encoding == "br":
        return brotli.compress(body)
    return zstandard.ZstdCompressor().compress(body)


@contextmanager
def counting_upstream() -> Iterator[str]:
    """An upstream whose every answer is a new one (`{"answer": N}`); its base URL."""
    answered = itertools.count(1)
    with raw_upstream(lambda _: json_reply(b'{"answer": %d}' % next(answered))) as up:
        yield f"{up.url}/v1"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
def test_a_compressed_request_matches_on_its_json(start: Start, encoding: str) -> None:
    """SPEC 5: a request matches on its canonical JSON, compressed or not. Before, a request
    sent with Content-Encoding matched on its compressed bytes: the same JSON gzipped a second
    later, or with its keys in another order, was a 404 that showed the compressed bytes."""
    url = "/v1/chat/completions"
    headers = {"content-type": "application/json", "content-encoding": encoding}
    sent = b'{"model": "m", "messages": [{"role": "user", "content": "squeeze"}]}'
    with counting_upstream() as upstream:
        server = start(upstream=upstream)
        first = httpx.post(server.url + url, content=compressed(sent, encoding, 1), headers=headers)
        server.stop()
    assert first.json() == {"answer": 1}
    replay = start(mode="replay")
    reordered = b'{"messages":[{"content":"squeeze","role":"user"}],"model":"m"}'
    again = httpx.post(
        replay.url + url, content=compressed(reordered, encoding, 2), headers=headers
    )
    assert again.status_code == 200 and again.json() == {"answer": 1}, again.text
    plain = httpx.post(replay.url + url, content=reordered)
    assert plain.status_code == 200 and plain.json() == {"answer": 1}
    other = compressed(reordered.replace(b"squeeze", b"press"), encoding, 3)
    missed = httpx.post(replay.url + url, content=other, headers=headers)
    assert missed.status_code == 404
    assert missed.json()["error"]["message"].endswith(
        "differs in: messages[0].content: 'squeeze' -> 'press'"
    )


def test_auto_mode_replays_a_compressed_request_it_recorded(start: Start) -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "auto gz"}]}'
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    with counting_upstream() as upstream:
        server = start(mode="auto", upstream=upstream)
        url = f"{server.url}/v1/chat/completions"
        first = httpx.post(url, content=compressed(body, "gzip", 1), headers=headers)
        second = httpx.post(url, content=compressed(body, "gzip", 2), headers=headers)
    assert first.json() == second.json() == {"answer": 1}
    assert "llmtap-replayed" in second.headers


def test_a_miss_of_a_request_recorded_incomplete_says_so(start: Start, upstream: str) -> None:
    """The only recordings of a request were cut (the SDK's timeout fired mid-stream) or are
    llmtap's own 502 (the upstream reset): the 404 says this request was recorded but its
    recording is incomplete, and why. Before, it named "the nearest recording" and diffed
    this request against another one."""
    stalled = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "stall"}]}
    reset = {"model": "m", "messages": [{"role": "user", "content": "reset"}]}
    server = start(upstream=upstream)
    url = f"{server.url}/v1/chat/completions"
    with OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0, timeout=1.0) as c:
        c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
        with pytest.raises(APITimeoutError):
            for _ in c.chat.completions.create(
                **stalled, extra_headers={"x-simulator-fault": "stall-mid-stream-ms=3000"}
            ):
                pass
    fault = {"x-simulator-fault": "reset-before-headers"}
    assert httpx.post(url, json=reset, headers=fault).status_code == 502
    time.sleep(0.3)  # (the proxy sees the client leave, and records it)
    server.stop()
    replay = start(mode="replay")
    for body, why in ((stalled, "client disconnected"), (reset, "llmtap: ")):
        miss = httpx.post(f"{replay.url}/v1/chat/completions", json=body)
        message = miss.json()["error"]["message"]
        assert miss.status_code == 404 and "nearest" not in message, message
        assert "this POST /v1/chat/completions request was recorded" in message, message
        assert f"its recording is incomplete ({why}" in message and "record it again" in message


def test_a_replayed_head_or_204_carries_the_recorded_content_length(
    start: Start, tmp_path: Path
) -> None:
    """RFC 9110: a HEAD answer carries the headers GET's would, its Content-Length among them
    (9.3.2), and a 204 carries none (8.6). Before, replay computed the length from the empty
    recorded body: `content-length: 0` for both."""
    body = b'{"object": "list", "data": []}'

    def answer(request: Any) -> bytes:
        if request.target.endswith("/empty"):
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        head = json_reply(body).removesuffix(body)
        return head if request.method == "HEAD" else head + body

    with raw_upstream(answer) as up:
        server = start(upstream=f"{up.url}/v1")
        for _ in range(5):  # each a client of its own, that closes once it has the answer
            recorded = httpx.head(f"{server.url}/v1/models")
            assert httpx.delete(f"{server.url}/v1/empty").status_code == 204
        server.stop()
    assert recorded.headers["content-length"] == str(len(body))
    # the head is the whole answer: it goes after the commit, and the client closing once it
    # has it is no failure (it was "client disconnected", and so not replayable, 5 times in 6)
    with sqlite3.connect(tmp_path / "llmtap.db") as conn:
        errors = [row[0] for row in conn.execute("SELECT error FROM exchanges")]
    assert errors == [None] * 10, errors
    replay = start(mode="replay")
    again = httpx.head(f"{replay.url}/v1/models")
    assert again.status_code == 200 and "llmtap-replayed" in again.headers, again.text
    assert again.headers["content-length"] == str(len(body)) and again.content == b""
    empty = httpx.delete(f"{replay.url}/v1/empty")
    assert empty.status_code == 204 and "llmtap-replayed" in empty.headers
    assert "content-length" not in empty.headers
    with httpx.Client() as client:  # and the connection is still good for the next request
        for _ in range(2):
            assert client.head(f"{replay.url}/v1/models").status_code == 200
            assert client.delete(f"{replay.url}/v1/empty").status_code == 204
