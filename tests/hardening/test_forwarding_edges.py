"""The forwarding leg at its edges (SPEC sections 2 and 6), against an upstream that answers
with exact bytes: what the client gets, what the upstream gets, what is kept."""

from __future__ import annotations

import gzip
import json
import socket
import time
import zlib
from collections.abc import Callable
from typing import Any

import brotli
import httpx
import orjson
import pytest
from click.testing import CliRunner
from openai import OpenAI

from llmtap.proxy.cli import main
from tests.conftest import Proxy
from tests.raw_upstream import Received, json_reply, raw_upstream

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


def raw_exchange(proxy: Proxy, request: bytes) -> tuple[bytes, bytes]:
    """(head, body) of the answer to one raw request sent with `connection: close`."""
    port = int(proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    return head, body


def post(path: str, body: bytes, *extra: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n".encode()
        + b"".join(h + b"\r\n" for h in extra)
        + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        + body
    )


def spans(proxy: Proxy) -> list[Any]:
    return proxy.query("SELECT status_code, status_message, inputs, attributes FROM spans")


def sse_with_length(request: Received) -> bytes:
    """A stream sent with a Content-Length, as a buffering gateway or a mock server sends it;
    with the usage OpenAI adds when asked."""
    asked = (json.loads(request.body).get("stream_options") or {}).get("include_usage")
    extra = {"usage": None} if asked else {}
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": {"content": "hi"}}], **extra},
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], **extra},
    ]
    if asked:
        events.append({**chunk, "choices": [], "usage": COMPLETION["usage"]})
    body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )


@pytest.mark.parametrize("label", [b"application/json", b"text/plain; charset=utf-8", None])
def test_a_stream_its_server_labels_otherwise_is_relayed_and_recorded_as_one(
    start_proxy: Callable[..., Proxy], label: bytes | None
) -> None:
    """A quick server sends its SSE with no content type, text/plain or a JSON label; the SDK
    reads it as a stream all the same. llmtap relayed it as a body: the usage it asked for
    reached the client, and the span was an ERROR ("not a JSON object") with no output."""

    def mislabelled(request: Received) -> bytes:
        answer = sse_with_length(request).replace(b"content-type: text/event-stream\r\n", b"")
        return (
            answer.replace(b"\r\n", b"\r\ncontent-type: " + label + b"\r\n", 1) if label else answer
        )

    with raw_upstream(mislabelled) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        body = orjson.dumps({**CHAT, "stream": True})
        direct = httpx.post(f"{upstream.url}/v1/chat/completions", content=body)
        answer = httpx.post(f"{proxy.base_url}/chat/completions", content=body)
        client = OpenAI(base_url=proxy.base_url, api_key="sk-test")
        chunks = list(client.chat.completions.create(**CHAT, stream=True))  # type: ignore[call-overload]
    assert direct.headers.get("content-type") == (label.decode() if label else None)
    assert answer.content == direct.content and b'"usage"' not in answer.content
    assert [c.choices[0].delta.content for c in chunks] == ["hi", None]
    for span in spans(proxy):
        assert span["status_code"] == "OK", span["status_message"]
        attributes = json.loads(span["attributes"])
        assert attributes["stream"] is True and attributes["usage"]["total_tokens"] == 2
    (outputs,) = {row["outputs"] for row in proxy.query("SELECT outputs FROM spans")}
    assert json.loads(outputs)["choices"][0]["message"]["content"] == "hi"
    replayer = start_proxy(db=str(proxy.db), mode="replay")
    again = httpx.post(f"{replayer.base_url}/chat/completions", content=body)
    assert again.content == direct.content


def test_a_stream_with_a_content_length_keeps_a_true_length(
    start_proxy: Callable[..., Proxy],
) -> None:
    """llmtap takes the usage it asked for out of the stream: the upstream's Content-Length
    no longer holds, so it does not reach the client (before: 473 bytes announced, 292 sent;
    curl failed with "transfer closed", uvicorn logged an exception)."""
    with raw_upstream(sse_with_length) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        body = orjson.dumps({**CHAT, "stream": True})
        direct = httpx.post(f"{upstream.url}/v1/chat/completions", content=body)
        head, received = raw_exchange(proxy, post("/v1/chat/completions", body))
    lengths = [
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    ]
    assert b"transfer-encoding: chunked" in head.lower() and lengths == []
    assert dechunk(received) == direct.content  # the events the client would have had directly
    assert [s["status_code"] for s in spans(proxy)] == ["OK"]
    assert json.loads(spans(proxy)[0]["attributes"])["usage"]["total_tokens"] == 2


def dechunk(body: bytes) -> bytes:
    out, at = b"", 0
    while True:
        end = body.index(b"\r\n", at)
        size = int(body[at:end].split(b";")[0], 16)
        if size == 0:
            return out
        out += body[end + 2 : end + 2 + size]
        at = end + 2 + size + 2


@pytest.mark.parametrize("model", [5, ["gpt-4o"], {"name": "gpt-4o"}, None])
def test_a_call_whose_model_is_no_string_is_still_traced(
    start_proxy: Callable[..., Proxy], model: Any
) -> None:
    """SPEC 3 and 6: every call is a span, bad input included (before: the price lookup or the
    spans table's model column failed, and the call had no trace at all)."""
    reply = orjson.dumps({**COMPLETION, "model": 123})
    with raw_upstream(lambda request: json_reply(reply)) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1", log_models=True)
        answer = httpx.post(f"{proxy.base_url}/chat/completions", json={**CHAT, "model": model})
    assert answer.status_code == 200
    (span,) = spans(proxy)
    assert span["status_code"] == "OK"
    assert json.loads(span["inputs"])["model"] == model
    assert json.loads(span["attributes"])["usage"]["total_tokens"] == 2
    health = httpx.get(f"{proxy.url}/api/health").json()
    assert health["store"]["ok"], health


def test_credentials_in_the_upstream_url_are_never_shown(start_proxy: Callable[..., Proxy]) -> None:
    """`http://user:password@host/v1` authenticates llmtap to its upstream; when that upstream
    is down, the 502, the span and the exchange say which upstream without the password."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once it is closed
    proxy = start_proxy(upstream=f"http://admin:hunter2secret@127.0.0.1:{port}/v1")
    answer = httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT)
    assert answer.status_code == 502
    assert "hunter2secret" not in answer.text and f"127.0.0.1:{port}" in answer.text
    rows = proxy.query("SELECT * FROM exchanges") + proxy.query("SELECT * FROM spans")
    assert rows and "hunter2secret" not in json.dumps([tuple(r) for r in rows], default=str)
    assert "hunter2secret" not in proxy.db.read_bytes().decode("latin-1")
    health = httpx.get(f"{proxy.url}/api/health").json()
    assert health["upstream"] == f"http://***@127.0.0.1:{port}/v1"


def test_a_query_in_the_upstream_url_goes_with_every_request(
    start_proxy: Callable[..., Proxy],
) -> None:
    """An Azure deployment URL carries `?api-version=...`: each request gets it, after its own
    query (before: dropped without a word)."""
    reply = orjson.dumps(COMPLETION)
    with raw_upstream(lambda request: json_reply(reply)) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/openai/deployments/d?api-version=2024-10-21")
        httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT)
        httpx.get(f"{proxy.base_url}/models?limit=2")
    assert [r.target for r in upstream.received] == [
        "/openai/deployments/d/chat/completions?api-version=2024-10-21",
        "/openai/deployments/d/models?limit=2&api-version=2024-10-21",
    ]


def test_trailer_fields_never_join_the_headers(start_proxy: Callable[..., Proxy]) -> None:
    """A chunked answer with a trailer section: its fields are no headers (RFC 9110 6.5.1).
    Before, when they came in the same read as the head, the client got two Content-Types
    and the stored headers had them too."""
    body = orjson.dumps(COMPLETION)
    reply = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n"
        + b"trailer: content-type\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\ncontent-type: text/html\r\nx-checksum: 1\r\n\r\n"
    )
    with raw_upstream(lambda request: reply) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        answer = httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT)
    assert answer.headers.get_list("content-type") == ["application/json"]
    assert "x-checksum" not in answer.headers
    assert answer.json() == COMPLETION
    (row,) = proxy.query("SELECT response_headers FROM exchanges")
    assert "text/html" not in row[0] and "x-checksum" not in row[0]


def test_a_key_in_the_query_string_is_never_kept_and_still_replays(
    start_proxy: Callable[..., Proxy],
) -> None:
    """Some gateways take the key as `?api-key=`: forwarded, never stored (SPEC 6); replay
    matches the request on the query as kept, so the recording still answers it."""
    key = "sk-querykey0123456789abcdef"
    recorder = start_proxy()
    url = f"{recorder.base_url}/embeddings?api-key={key}&dimensions=8"
    sent = httpx.post(url, json={"model": "text-embedding-3-small", "input": "hi"})
    assert sent.status_code == 200
    (row,) = recorder.query("SELECT query FROM exchanges")
    assert row[0] == "api-key=***&dimensions=8"
    recorder.flush()
    assert key.encode() not in recorder.db.read_bytes()
    wal = recorder.db.with_name(recorder.db.name + "-wal")
    assert not wal.exists() or key.encode() not in wal.read_bytes()
    replayer = start_proxy(db=str(recorder.db), mode="replay")
    again = httpx.post(
        url.replace(recorder.base_url, replayer.base_url),
        json={"model": "text-embedding-3-small", "input": "hi"},
    )
    assert again.status_code == 200 and again.json() == sent.json()


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
def test_a_compressed_request_is_traced_decoded(
    start_proxy: Callable[..., Proxy], coding: str
) -> None:
    """`Content-Encoding: gzip` on a request: forwarded as sent, and the span's inputs and
    model are the JSON it holds (before: a string of compressed bytes and no model)."""
    packed = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress}[coding](
        orjson.dumps(CHAT)
    )
    reply = orjson.dumps(COMPLETION)
    with raw_upstream(lambda request: json_reply(reply)) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        answer = httpx.post(
            f"{proxy.base_url}/chat/completions",
            content=packed,
            headers={"content-type": "application/json", "content-encoding": coding},
        )
    assert answer.status_code == 200
    assert upstream.received[0].body == packed
    (span,) = spans(proxy)
    assert json.loads(span["inputs"]) == CHAT
    assert json.loads(span["attributes"])["model"] == "m"


@pytest.mark.parametrize(
    "path", ["/v1/../../admin/keys", "/v1/%2e%2e/%2E%2E/admin", "/v1/./../x", "/v1/files/.."]
)
def test_dot_segments_never_leave_the_base_path(
    start_proxy: Callable[..., Proxy], path: str
) -> None:
    """With `--upstream http://gw/openai/v1`, `/v1/../../admin/keys` reached the gateway as
    `/openai/v1/../../admin/keys`, which any server that resolves dot segments serves as
    `/admin/keys`, with the client's key (SPEC 2: the upstream is only ever the configured
    one). Such a path gets a clear 400, recorded, and nothing goes upstream."""
    with raw_upstream(lambda request: json_reply(orjson.dumps(COMPLETION))) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/openai/v1")
        head, body = raw_exchange(
            proxy, f"GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n".encode()
        )
        fine = httpx.get(f"{proxy.base_url}/models")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"]["message"].startswith("llmtap: a path with")
    assert [r.target for r in upstream.received] == ["/openai/v1/models"]
    assert fine.status_code == 200
    rows = proxy.query("SELECT status, error FROM exchanges ORDER BY rowid")
    assert rows[0]["status"] == 400 and rows[0]["error"]


def test_experiment_paths_as_sent(start_proxy: Callable[..., Proxy]) -> None:
    """A name with an encoded slash files its traffic under that name; a path under
    /experiments/ that is no base URL gets an OpenAI-shaped 404 (before: text/plain)."""
    with raw_upstream(lambda request: json_reply(orjson.dumps(COMPLETION))) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        named = httpx.post(f"{proxy.url}/experiments/team%2Frun-1/v1/chat/completions", json=CHAT)
        wrong = httpx.get(f"{proxy.url}/experiments/team/v2/models")
    assert named.status_code == 200
    assert [r.target for r in upstream.received] == ["/v1/chat/completions"]
    traces = httpx.get(f"{proxy.url}/api/traces").json()["traces"]
    assert [t["experiment"] for t in traces] == ["team/run-1"]
    assert wrong.status_code == 404 and "/experiments/NAME/v1" in wrong.json()["error"]["message"]


def test_an_http10_client_gets_its_stream_unframed(proxy: Proxy) -> None:
    """HTTP/1.0 knows no chunked coding (RFC 9112 6.1): a stream reaches such a client as its
    bytes, ended by the close (before: chunk sizes inside its SSE, no `[DONE]` at the end)."""
    body = orjson.dumps({**CHAT, "model": "gpt-4o-mini", "stream": True})
    request = (
        b"POST /v1/chat/completions HTTP/1.0\r\ncontent-type: application/json\r\n"
        + f"authorization: Bearer sk-test\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head, received = raw_exchange(proxy, request)
    assert b"transfer-encoding" not in head.lower() and b"connection: close" in head.lower()
    events = [e for e in received.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]" and all(e.startswith(b"data: ") for e in events)
    assert "".join(
        c["delta"].get("content") or "" for e in events[:-1] for c in orjson.loads(e[6:])["choices"]
    )
    assert [s["status_code"] for s in spans(proxy)] == ["OK"]
    after = httpx.get(f"{proxy.base_url}/models")  # and the server goes on as before
    assert after.status_code == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 2\r\n"
        b"transfer-encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nnot-hex\r\n",
        b"GARBAGE\x00\x01 / HTTP/1.1\r\n\r\n",
    ],
    ids=["length-and-chunked", "bad-chunk-size", "not-http"],
)
def test_a_request_that_is_not_http_gets_an_openai_shaped_400(
    proxy: Proxy, request_bytes: bytes
) -> None:
    head, body = raw_exchange(proxy, request_bytes)
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{proxy.base_url}/models").status_code == 200  # and the next is served


def test_a_garbled_error_event_is_relayed_and_recorded(start_proxy: Callable[..., Proxy]) -> None:
    """`data: {"error" "garbled"}` from the upstream: not JSON the SDK could read, and no error
    member the end finder knows. It is relayed as sent, the stream ends at its `[DONE]`, and
    the call is recorded (before: the finder raised on the event loop, the client's response
    was cut and nothing was recorded)."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    body = (
        b"data: "
        + orjson.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": "hi"}}]})
        + b'\n\ndata: {"error" "garbled"}\n\ndata: [DONE]\n\n'
    )
    reply = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with raw_upstream(lambda request: reply) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1", stream_usage=False)
        answer = httpx.post(f"{proxy.base_url}/chat/completions", json={**CHAT, "stream": True})
    assert answer.status_code == 200 and answer.content == body
    (span,) = spans(proxy)
    assert span["status_code"] == "ERROR" and "not JSON" in span["status_message"]


def test_an_upstream_url_that_does_not_parse_is_refused_at_start_without_its_password(
    start_proxy: Callable[..., Proxy],
) -> None:
    """`--upstream 'http://u:secret@[::1/v1'` (an unclosed bracket): refused at start (each
    request got a 502 before), naming the upstream without its password."""
    with pytest.raises(ValueError, match="is not a URL llmtap can use") as refused:
        start_proxy(upstream="http://admin:secret9@[::1/v1")
    assert "secret9" not in str(refused.value) and "***@[::1" in str(refused.value)
    result = CliRunner().invoke(
        main, ["serve", "--print-config", "--upstream", "ftp://admin:secret9@host/v1"]
    )
    assert result.exit_code == 2 and "secret9" not in result.output


def test_a_compressed_request_that_expands_past_the_cap_is_shown_as_sent() -> None:
    """64 KB of gzip that would be 128 MB of zeros: the writer shows the bytes as sent rather
    than hold what they expand to (a body of 32 MB so compressed would be 32 GB)."""
    import resource

    from llmtap.recorder.decoding import DECODED_AT_MOST
    from llmtap.recorder.matching import decoded_request

    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip, made a MB at a time: the zeros
    zeros = b"\0" * (1 << 20)  # are never held whole here, so the peak below is the decoder's
    bomb = b"".join(packer.compress(zeros) for _ in range(2 * DECODED_AT_MOST >> 20))
    bomb += packer.flush()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert decoded_request(bomb, "gzip") == bomb
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < DECODED_AT_MOST * 1.5 / 1024
    assert decoded_request(gzip.compress(b'{"a": 1}'), "gzip") == b'{"a": 1}'


def test_a_server_refusing_stream_options_with_422_gets_the_request_as_sent(
    start_proxy: Callable[..., Proxy],
) -> None:
    """A pydantic server that forbids extra fields answers llmtap's added stream_options with a
    422 (Mistral's API is reported to): the client got that 422, where directly it streams."""

    def strict(request: Received) -> bytes:
        if b"stream_options" in request.body:
            error = b'{"detail": [{"type": "extra_forbidden", "loc": ["body", "stream_options"]}]}'
            return json_reply(error, "422 Unprocessable Entity")
        return sse_with_length(request)

    with raw_upstream(strict) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        body = orjson.dumps({**CHAT, "stream": True})
        answer = httpx.post(f"{proxy.base_url}/chat/completions", content=body)
        direct = httpx.post(f"{upstream.url}/v1/chat/completions", content=body)
    assert answer.status_code == 200 and answer.content == direct.content
    assert [s["status_code"] for s in spans(proxy)] == ["OK"]


def test_a_stream_the_server_refuses_for_its_own_reason_is_sent_once(
    start_proxy: Callable[..., Proxy],
) -> None:
    """A 400 that is the client's own (an unknown model, LiteLLM's answer) to a stream llmtap
    asked usage for: relayed as it came, and the request not sent again (twice the latency,
    twice the rate limit, two failures in a gateway's cooldown count)."""
    error = b'{"error": {"message": "Invalid model name passed in model=nonexistent"}}'

    def refusing(request: Received) -> bytes:
        return json_reply(error, "400 Bad Request")

    with raw_upstream(refusing) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        body = orjson.dumps({**CHAT, "stream": True})
        answer = httpx.post(f"{proxy.base_url}/chat/completions", content=body)
        sent = len(upstream.received)
    assert answer.status_code == 400 and answer.content == error
    assert sent == 1
    (span,) = spans(proxy)
    assert span["status_code"] == "ERROR" and "Invalid model name" in span["status_message"]
    assert json.loads(span["attributes"])["stream"] is True  # asked for, an error instead


def test_a_422_that_echoes_the_request_is_not_taken_for_a_refusal_of_stream_options(
    start_proxy: Callable[..., Proxy],
) -> None:
    """A pydantic server's 422 about another field echoes the request under `input`, with the
    `stream_options` llmtap added in it: that is no refusal of the option."""

    def pydantic(request: Received) -> bytes:
        echoed = json.loads(request.body)
        detail = [{"type": "missing", "loc": ["body", "messages"], "input": echoed}]
        return json_reply(orjson.dumps({"detail": detail}), "422 Unprocessable Entity")

    with raw_upstream(pydantic) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        body = orjson.dumps({"model": "m", "mesages": [], "stream": True})
        answer = httpx.post(f"{proxy.base_url}/chat/completions", content=body)
        sent = len(upstream.received)
    assert answer.status_code == 422 and sent == 1


@pytest.mark.parametrize("status", [b"400 Bad Request", b"200 OK"])
def test_a_body_that_breaks_before_it_is_looked_at_is_relayed_as_it_came(
    start_proxy: Callable[..., Proxy], status: bytes
) -> None:
    """llmtap reads the start of a 400 to a stream it asked usage for (a refusal of the
    option?) and of a 2xx to a request that says "stream" (a stream labelled otherwise?).
    A body that broke there gave a 502 "closed the connection before answering" (the 400 lost)
    or uvicorn's plain-text 500: the client now gets the head as sent, then the abort."""

    def cut(request: Received) -> bytes:
        return (
            b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n" + (b'{"error": ' if status[:1] == b"4" else b"")
        )  # and the rest never comes (a 200's first byte neither)

    with raw_upstream(cut) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1", read_timeout=1)
        body = orjson.dumps({**CHAT, "stream": True})
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream("POST", f"{proxy.base_url}/chat/completions", content=body) as answer,
        ):
            assert answer.status_code == int(status[:3])
            answer.read()
    (span,) = spans(proxy)
    assert "upstream broke mid-response" in span["status_message"], span["status_message"]
    assert json.loads(span["attributes"])["http_status"] == int(status[:3])


def test_an_answer_to_stream_false_goes_out_without_waiting_for_its_first_bytes(
    start_proxy: Callable[..., Proxy],
) -> None:
    """LangChain sends `"stream": false` on every call: its answer's head went out only once
    8 bytes of the body had come (llmtap looked for a stream labelled otherwise), so a server
    that sends a byte and then thinks held the head back."""
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    body = orjson.dumps(COMPLETION)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            head = (
                f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
            )
            conn.sendall(head.encode() + b"\r\n\r\n" + body[:1])
            time.sleep(2)
            conn.sendall(body[1:])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        proxy = start_proxy(upstream=f"http://127.0.0.1:{listener.getsockname()[1]}/v1")
        started = time.monotonic()
        request = orjson.dumps({**CHAT, "stream": False})
        with httpx.stream("POST", f"{proxy.base_url}/chat/completions", content=request) as r:
            head_after = time.monotonic() - started
            assert r.status_code == 200 and r.read() == body
    finally:
        thread.join(5)
        listener.close()
    assert head_after < 1.5, head_after  # (the body's rest came 2 s after its first byte)


def test_an_azure_deployment_path_is_traced_and_gets_its_usage(
    start_proxy: Callable[..., Proxy],
) -> None:
    """`AzureOpenAI` sends `/deployments/NAME/chat/completions?api-version=...`: forwarded and
    replayable, but no span and no usage asked for (a chat call like any other)."""
    from openai import AzureOpenAI

    with raw_upstream(sse_with_length) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/openai")
        client = AzureOpenAI(
            base_url=proxy.base_url, api_key="azure-key-000", api_version="2024-10-21"
        )
        stream = client.chat.completions.create(
            model="my-deployment", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "hi"
        (sent,) = upstream.received
    assert sent.target.startswith("/openai/deployments/my-deployment/chat/completions?")
    assert json.loads(sent.body)["stream_options"] == {"include_usage": True}
    (span,) = proxy.query("SELECT status_code, outputs, attributes FROM spans")
    assert span["status_code"] == "OK"
    assert json.loads(span["outputs"])["choices"][0]["message"]["content"] == "hi"
    assert json.loads(span["attributes"])["usage"]["total_tokens"] == 2


def test_vllms_continuous_usage_stats_go_only_with_the_usage_the_client_asked_for(
    start_proxy: Callable[..., Proxy],
) -> None:
    """With `continuous_usage_stats` and no `include_usage`, vLLM streams no usage; once llmtap
    added include_usage it put usage on every chunk, and the client got it."""
    with raw_upstream(sse_with_length) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        options = {"continuous_usage_stats": True}
        body = orjson.dumps({**CHAT, "stream": True, "stream_options": options})
        httpx.post(f"{proxy.base_url}/chat/completions", content=body)
        (sent,) = upstream.received
    assert json.loads(sent.body)["stream_options"] == {"include_usage": True}


def test_an_upstream_head_that_never_ends_is_a_502_at_once(
    start_proxy: Callable[..., Proxy],
) -> None:
    """httptools grows a header's value with `bytes +=`: an upstream whose head never ended
    kept the event loop copying; past 1 MB of head the exchange fails as a protocol error."""
    endless = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-endless: " + b"a" * (4 << 20)
    with raw_upstream(lambda request: endless) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        began = time.perf_counter()
        response = httpx.post(f"{proxy.base_url}/chat/completions", json=CHAT, timeout=10)
        took = time.perf_counter() - began
    assert response.status_code == 502, response.text[:300]
    assert "head" in response.json()["error"]["message"]
    assert took < 3


H2C_OFFER = (
    b"connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n"
    b"http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_h2c_upgrade_offer_is_answered_in_http11_with_the_body_read(
    proxy: Proxy, simulator: Any, framing: str
) -> None:
    """`curl --http2` to an http:// URL offers h2c with its POST; the parser took the head for
    an upgrade and read no body (the upstream got none, or the body was read as a request: a
    400, or an answer cut at the close). RFC 9113 3.1 lets a server ignore the offer."""
    httpx.delete(f"{simulator.url}/_simulator/requests")
    body = orjson.dumps(
        {
            **CHAT,
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "upgrade offered"}],
        }
    )
    if framing == "chunked":
        framed = b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        framed = b"content-length: %d\r\n\r\n%s" % (len(body), body)
    first = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"
        b"content-type: application/json\r\nauthorization: Bearer sk-test\r\n" + H2C_OFFER + framed
    )
    then = b"GET /v1/models HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    head, rest = raw_exchange(proxy, first + then)  # the next request on the same connection
    assert head.startswith(b"HTTP/1.1 200") and b"upgrade" not in head.lower()
    length = int(
        next(
            v
            for k, _, v in (line.partition(b": ") for line in head.split(b"\r\n"))
            if k.lower() == b"content-length"
        )
    )
    answer = orjson.loads(rest[:length])
    assert "upgrade offered" in answer["choices"][0]["message"]["content"]
    assert rest[length:].startswith(b"HTTP/1.1 200")  # the GET after it, served too
    seen = httpx.get(f"{simulator.url}/_simulator/requests").json()
    chat = next(r for r in seen if r["path"].endswith("/chat/completions"))
    sent = {
        k.lower()
        for k in (chat["headers"] if isinstance(chat["headers"], dict) else dict(chat["headers"]))
    }
    assert not {"upgrade", "http2-settings", "llmtap-ignored-upgrade"} & sent
    (span,) = [s for s in spans(proxy) if "upgrade offered" in s["inputs"]]
    assert span["status_code"] == "OK"


def test_an_upgrade_header_in_a_read_of_its_own_is_renamed_too(proxy: Proxy) -> None:
    """A client writing its head a line at a time: the header begins a read of its own."""
    body = orjson.dumps({**CHAT, "model": "gpt-4o-mini"})
    port = int(proxy.url.rsplit(":", 1)[1])
    parts = [
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"
        b"content-type: application/json\r\nconnection: Upgrade, close\r\n",
        b"upgrade: h2c\r\n",
        b"content-length: %d\r\n\r\n%s" % (len(body), body),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for part in parts:
            s.sendall(part)
            time.sleep(0.05)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    head, _, answer = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert orjson.loads(answer)["choices"][0]["message"]["content"]


def test_a_websocket_handshake_is_not_forwarded(proxy: Proxy, simulator: Any) -> None:
    """llmtap serves no WebSocket (the Realtime API): the handshake is refused, not turned into
    a plain GET to the upstream."""
    httpx.delete(f"{simulator.url}/_simulator/requests")
    head, _ = raw_exchange(
        proxy,
        b"GET /v1/realtime?model=gpt-realtime HTTP/1.1\r\nhost: localhost\r\n"
        b"connection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n"
        b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    assert not head.startswith(b"HTTP/1.1 2")
    assert httpx.get(f"{simulator.url}/_simulator/requests").json() == []
    assert httpx.get(f"{proxy.base_url}/models").status_code == 200  # and the next is served
