"""A hostile upstream's compression bombs (found by a security review): a 102-byte brotli JSON
answer took the writer process past a GB and held its client's last byte for a minute; a
405-byte brotli stream took the proxy's event loop to +516 MB and stalled every other client.
Now every reader decodes within a bound: the client gets the bytes as sent, at once, and the
trace says the body was not read."""

from __future__ import annotations

import resource
import threading
import time
from pathlib import Path
from typing import Any

import brotli
import httpx

from tests.conftest import Proxy
from tests.raw_upstream import Received, raw_upstream

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def brotli_zeros(megabytes: int) -> bytes:
    packer = brotli.Compressor(quality=5)
    zeros = b"\0" * (1 << 20)
    return b"".join([packer.process(zeros) for _ in range(megabytes)] + [packer.finish()])


def _answer(content_type: bytes, body: bytes) -> Any:
    def answer(request: Received) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type + b"\r\n"
            b"content-encoding: br\r\ncontent-length: %d\r\n\r\n" % len(body) + body
        )

    return answer


def _peak_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
        / 1024
    )


def _writer_pid(proxy: Proxy) -> int:
    assert proxy.app.writer is not None
    process = proxy.app.writer._process  # the writer's own process: its memory is the point
    assert process is not None
    return process.pid


def _problems(proxy: Proxy) -> list[str]:
    proxy.flush()
    (info,) = httpx.get(f"{proxy.url}/api/traces").json()["traces"]
    (span,) = httpx.get(f"{proxy.url}/api/traces/{info['trace_id']}").json()["spans"]
    return span["attributes"].get("llmtap.reassembly_problems") or []


def test_a_brotli_bomb_answer_reaches_its_client_and_stays_unread(start_proxy: Any) -> None:
    bomb = brotli_zeros(256)  # ~200 bytes
    with raw_upstream(_answer(b"application/json", bomb)) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        started = time.monotonic()
        with httpx.stream(
            "POST",
            f"{proxy.base_url}/chat/completions",
            json=CHAT,
            headers={"accept-encoding": "br"},
            timeout=60,
        ) as answer:
            body = b"".join(answer.iter_raw())  # as sent: httpx would inflate it
        took = time.monotonic() - started
        problems = _problems(proxy)
        writer_mb = _peak_mb(_writer_pid(proxy))
    assert answer.status_code == 200 and body == bomb
    assert took < 10, f"the client waited {took:.1f} s for the commit"
    assert writer_mb < 300, f"{len(bomb)} bytes from the upstream: writer peak {writer_mb:.0f} MB"
    assert any("decodes to more than" in p for p in problems), problems


def test_a_brotli_bomb_stream_stalls_no_one(start_proxy: Any) -> None:
    bomb = brotli_zeros(256)
    with raw_upstream(_answer(b"text/event-stream", bomb)) as upstream:
        proxy = start_proxy(upstream=f"{upstream.url}/v1")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        got: dict[str, Any] = {}

        def stream() -> None:
            with httpx.stream(
                "POST",
                f"{proxy.base_url}/chat/completions",
                json={**CHAT, "stream": True},
                headers={"accept-encoding": "br"},
                timeout=60,
            ) as response:
                got["body"] = b"".join(response.iter_raw())

        client = threading.Thread(target=stream)
        client.start()
        worst = 0.0
        with httpx.Client(timeout=60) as other:
            while client.is_alive():
                started = time.monotonic()
                other.get(f"{proxy.url}/api/health")
                worst = max(worst, time.monotonic() - started)
                time.sleep(0.01)
        client.join()
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        problems = _problems(proxy)
        writer_mb = _peak_mb(_writer_pid(proxy))
    assert got["body"] == bomb
    assert worst < 1.0, f"/api/health waited {worst:.2f} s"
    assert grown_mb < 128, f"the proxy grew {grown_mb:.0f} MB for {len(bomb)} bytes"
    assert writer_mb < 300, f"writer peak {writer_mb:.0f} MB"
    assert any("decodes to more than" in p for p in problems), problems
