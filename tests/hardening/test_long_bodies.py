"""A long answer that is not a stream (a batch's output file, an embeddings answer of thousands
of vectors) goes to the writer process as it comes, as a stream's pieces do: held whole until
its end, a 256 MB download took the proxy +764 MB and the writer +512 MB (a security review;
an endless one grew without bound)."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmtap.recorder.body_codec import unpack_body
from tests.conftest import TEST_KEY
from tests.raw_upstream import json_reply, raw_upstream

FILE_MB = 128


@contextlib.contextmanager
def _file_server() -> Iterator[str]:
    """An upstream answering any request with a `FILE_MB` MB file, written a MB at a time
    (never held whole here: this process's memory is the proxy's, measured below)."""
    listener = socket.create_server(("127.0.0.1", 0))
    block = bytes(range(256)) * 4096

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with conn:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        request += conn.recv(65536)
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                        b"content-length: %d\r\nconnection: close\r\n\r\n" % (FILE_MB << 20)
                    )
                    for _ in range(FILE_MB):
                        conn.sendall(block)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def _peak_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def test_a_long_download_is_relayed_and_recorded_in_bounded_memory(start_proxy: Any) -> None:
    with _file_server() as upstream:
        proxy = start_proxy(upstream=f"{upstream}/v1")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        got, first = 0, b""
        with httpx.stream(
            "GET", f"{proxy.base_url}/files/file-abc/content", timeout=120
        ) as response:
            for part in response.iter_raw():
                first = first or part[:512]
                got += len(part)
        proxy.flush()
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert proxy.app.writer is not None and proxy.app.writer._process is not None
        writer_mb = _peak_mb(proxy.app.writer._process.pid)
    assert got == FILE_MB << 20 and first == bytes(range(256)) * 2
    # held whole, 387 MB; now what the writer has not put on file yet (the relay waits for it
    # past 32 MB, as a stream's does): ~100 MB here, where client and upstream share the process,
    # and up to 160 MB while another test worker holds the second core (the writer lags more)
    assert grown_mb < 250, f"{FILE_MB} MB relayed: the proxy grew {grown_mb:.0f} MB"
    assert writer_mb < 160, f"{FILE_MB} MB recorded: the writer's peak {writer_mb:.0f} MB"
    with sqlite3.connect(proxy.db) as db:
        (error, status), *_ = db.execute("SELECT error, status FROM exchanges").fetchall()
    assert (error, status) == (None, 200)
    # the exchange keeps every byte: replay serves them again
    replay = start_proxy(db=str(proxy.db), mode="replay")
    started = time.monotonic()
    again = httpx.get(f"{replay.base_url}/files/file-abc/content", timeout=120)
    assert again.status_code == 200 and len(again.content) == FILE_MB << 20
    assert again.content[:512] == first and time.monotonic() - started < 60


def test_a_long_json_answer_is_still_read_into_its_span(start_proxy: Any) -> None:
    vectors = [[i / 7 for i in range(1536)] for _ in range(300)]  # ~10 MB of JSON
    answer = {
        "object": "list",
        "model": "text-embedding-3-small",
        "data": [
            {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": 600, "total_tokens": 600},
    }
    body = json.dumps(answer).encode()
    with raw_upstream(lambda request: json_reply(body)) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        reply = httpx.post(
            f"{proxy.base_url}/embeddings",
            json={"model": "text-embedding-3-small", "input": ["x"] * 300},
            headers={"authorization": f"Bearer {TEST_KEY}"},
            timeout=60,
        )
        proxy.flush()
        (info,) = httpx.get(f"{proxy.url}/api/traces").json()["traces"]
        (span,) = httpx.get(f"{proxy.url}/api/traces/{info['trace_id']}").json()["spans"]
    assert reply.content == body
    assert span["status"]["code"] == "OK", span["status"]
    assert span["attributes"]["usage"]["input_tokens"] == 600
    assert not span["attributes"].get("llmtap.reassembly_problems")


MB = 1 << 20
TOTAL = 64 * MB


@contextlib.contextmanager
def _slow_file_server(client_gone: threading.Event, ctype: bytes = b"application/octet-stream"):
    listener = socket.create_server(("127.0.0.1", 0))
    block = bytes(range(256)) * 4096  # 1 MB, recognisable start

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                req = b""
                while b"\r\n\r\n" not in req:
                    req += conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n" % (ctype, TOTAL)
                )
                conn.sendall(b"A" * MB)  # a first MB of its own
                for _ in range(23):
                    conn.sendall(block)
                client_gone.wait(10)
                time.sleep(0.5)
                for _ in range(40):
                    conn.sendall(block)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


@pytest.mark.parametrize("content_type", [b"application/octet-stream", b"text/event-stream"])
def test_a_long_answer_its_client_left_keeps_its_first_pieces(
    start_proxy: Any, content_type: bytes
) -> None:
    """The client reads 20 MB of 64, waits for the writer to put the first pieces on file,
    and leaves: the record of the cut answer starts where the answer started (its first
    pieces were deleted with the stream's file before the record came, and the body kept
    only some later MB, silently; a stream already did that, and a long body since it is
    tracked)."""
    gone = threading.Event()
    with _slow_file_server(gone, content_type) as upstream:
        proxy = start_proxy(upstream=f"{upstream}/v1")
        host, port = proxy.url.removeprefix("http://").split(":")
        client = socket.create_connection((host, int(port)))
        client.sendall(b"GET /v1/files/f/content HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        got = 0
        while got < 20 * MB:
            data = client.recv(1 << 20)
            if not data:
                break
            got += len(data)
        time.sleep(1.0)  # the writer puts >8 MB on file, the proxy lets go of them
        client.close()
        gone.set()
        deadline, rows = time.monotonic() + 20, []
        while not rows and time.monotonic() < deadline:
            rows = proxy.query(
                "SELECT error, coalesce(long_response_body, response_body) AS body FROM exchanges"
            )
            time.sleep(0.2)
    (row,) = rows
    body = unpack_body(bytes(row["body"]))
    assert row["error"] == "client disconnected"
    assert body[:8] == b"A" * 8 and len(body) >= 20 * MB, (len(body), body[:8])
