"""OpenAI's background mode with a resumed stream: start a response with `background: true,
stream: true`, read a few events, drop the connection, resume with `GET /v1/responses/{id}?
stream=true&starting_after=N`. The client chose to stop reading; the response went on at the
upstream. It was recorded as an ERROR "client disconnected", and replay answered it 404."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai

from tests.conftest import TEST_KEY

RESPONSE = {"id": "resp_bg1", "object": "response", "created_at": 1_700_000_000,
            "model": "gpt-4.1", "background": True, "output": [], "usage": None}  # fmt: skip
TEXT = [f"word{i} " for i in range(12)]


def _events() -> list[dict[str, Any]]:
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress",
            "content": []}  # fmt: skip
    text = {"type": "output_text", "text": "".join(TEXT), "annotations": []}
    done = {**item, "status": "completed", "content": [text]}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**RESPONSE, "status": "queued"}},
        {"type": "response.in_progress", "response": {**RESPONSE, "status": "in_progress"}},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        *({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
           "content_index": 0, "delta": word} for word in TEXT),  # fmt: skip
        {"type": "response.output_item.done", "output_index": 0, "item": done},
        {"type": "response.completed",
         "response": {**RESPONSE, "status": "completed", "output": [done],
                      "usage": {"input_tokens": 3, "output_tokens": 12, "total_tokens": 15}}},
    ]  # fmt: skip
    return [{**e, "sequence_number": n} for n, e in enumerate(events)]


EVENTS = _events()


@contextmanager
def slow_responses_upstream() -> Iterator[str]:
    """POST /v1/responses streams every event 50 ms apart (a slow model); GET /v1/responses/ID
    ?stream=true&starting_after=N streams those after N at once."""
    listener = socket.create_server(("127.0.0.1", 0))

    def handle(conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            method, target, _ = reader.readline().decode().split(" ", 2)
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            reader.read(length)
            query = dict(p.split("=", 1) for p in target.partition("?")[2].split("&") if "=" in p)
            after = int(query.get("starting_after", -1))
            try:
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                )
                for event in (e for e in EVENTS if e["sequence_number"] > after):
                    data = f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
                    conn.sendall(b"%x\r\n%s\r\n" % (len(data), data))
                    if method == "POST":
                        time.sleep(0.05)
                conn.sendall(b"0\r\n\r\n")
            except OSError:  # the client went away (through llmtap)
                pass

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        listener.close()


def read_then_resume(base_url: str) -> list[int]:
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    seen: list[int] = []
    stream = client.responses.create(model="gpt-4.1", input="hi", background=True, stream=True)
    for event in stream:
        seen.append(event.sequence_number)
        if len(seen) == 5:
            break
    stream.close()
    time.sleep(0.3)  # (the proxy notices the client left at its next piece)
    resumed = client.responses.retrieve("resp_bg1", stream=True, starting_after=seen[-1])
    return seen + [event.sequence_number for event in resumed]


def test_a_background_stream_left_and_resumed_is_no_failure_and_replays(
    start_proxy: Any,
) -> None:
    with slow_responses_upstream() as upstream:
        recording = start_proxy(upstream=upstream)
        seen = read_then_resume(recording.base_url)
        recording.flush()
    assert seen == list(range(len(EVENTS)))
    (created,) = [
        t
        for t in httpx.get(f"{recording.url}/api/traces").json()["traces"]
        if t["name"] == "responses"
    ]
    (span,) = httpx.get(f"{recording.url}/api/traces/{created['trace_id']}").json()["spans"]
    assert span["status"]["code"] == "OK", span["status"]
    assert "background response" in span["attributes"]["llmtap.note"]
    # offline: the same client code gets the same events
    replay = start_proxy(upstream="http://127.0.0.1:9/v1", db=str(recording.db), mode="replay")
    assert read_then_resume(replay.base_url) == seen
