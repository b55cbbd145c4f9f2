"""CoalescingTransport over a real socket and a real transport: the writes of one turn of the
event loop reach the peer in one system call, in order, and nothing is lost or held past the
turn, closed or not."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from llmtap.proxy.coalescing import CoalescingTransport


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.closed = asyncio.Event()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


def run(test: Callable[[CoalescingTransport, list[bytes], socket.socket], Awaitable[Any]]) -> Any:
    """`test(coalescing transport, the real transport's write calls, the peer's socket)`."""

    async def main() -> Any:
        ours, peer = socket.socketpair()
        peer.settimeout(5)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(Sink, ours)
        writes: list[bytes] = []
        real_write = transport.write

        def counted(data: bytes) -> None:  # the real transport's write, counted
            writes.append(bytes(data))
            real_write(data)

        transport.write = counted  # type: ignore[method-assign]
        try:
            return await test(CoalescingTransport(transport, loop), writes, peer)  # type: ignore[arg-type]
        finally:
            transport.close()
            peer.close()

    return asyncio.run(main())


def read_exactly(peer: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        piece = peer.recv(n - len(data))
        if not piece:
            break
        data += piece
    return data


def test_the_writes_of_one_turn_go_out_in_one_call_in_order() -> None:
    async def test(t: CoalescingTransport, writes: list[bytes], peer: socket.socket) -> None:
        t.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
        t.write(bytearray(b"he"))  # copied: the caller may reuse its buffer
        t.write(memoryview(b"llo"))
        t.write(b"")
        assert writes == []  # held until the turn ends
        await asyncio.sleep(0)
        assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"]
        assert read_exactly(peer, len(writes[0])) == writes[0]

    run(test)


def test_writes_in_later_turns_are_not_held_and_keep_their_order() -> None:
    async def test(t: CoalescingTransport, writes: list[bytes], peer: socket.socket) -> None:
        for i in range(5):
            t.write(b"event %d\n" % i)
            await asyncio.sleep(0)
            assert len(writes) == i + 1
        wire = b"".join(b"event %d\n" % i for i in range(5))
        assert read_exactly(peer, len(wire)) == wire

    run(test)


def test_close_sends_what_was_held_first() -> None:
    async def test(t: CoalescingTransport, writes: list[bytes], peer: socket.socket) -> None:
        t.write(b"last words")
        t.close()
        assert t.is_closing()
        assert peer.recv(100) == b"last words"
        for _ in range(3):  # the scheduled flush finds nothing left; the socket closes
            await asyncio.sleep(0)
        assert writes == [b"last words"]
        assert peer.recv(100) == b""  # then the end of the connection

    run(test)


def test_abort_sends_what_was_written_before_it_and_buffer_size_counts_it() -> None:
    async def test(t: CoalescingTransport, writes: list[bytes], peer: socket.socket) -> None:
        t.write(b"x" * 10)
        t.write(b"y" * 5)
        assert t.get_write_buffer_size() == 15
        t.abort()  # a fault injected mid-answer: the bytes before it go out, as without the hold
        for _ in range(3):
            await asyncio.sleep(0)
        assert writes == [b"x" * 10 + b"y" * 5]
        assert read_exactly(peer, 15) == b"x" * 10 + b"y" * 5
        assert peer.recv(100) == b""

    run(test)


def test_the_rest_of_the_transport_is_the_real_one() -> None:
    async def test(t: CoalescingTransport, writes: list[bytes], peer: socket.socket) -> None:
        assert t.get_extra_info("socket") is not None
        t.pause_reading()
        assert not t.is_reading()  # through __getattr__
        t.resume_reading()
        assert t.is_reading()

    run(test)
