"""Fault injection, connection resets and response compression of the offline simulator."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import zlib
from typing import Any

from .simulator_text import BadRequest

# ------------------------------------------------------------------------------- faults


class Faults:
    __slots__ = (
        "status",
        "reset_before",
        "reset_mid",
        "no_done",
        "malformed",
        "error_event",
        "slow_ms",
        "stall_ms",
        "delay_ms",
        "end_ms",
        "garbage",
    )

    def __init__(self) -> None:
        self.status = 0
        self.reset_before = self.reset_mid = self.no_done = False
        self.malformed = self.error_event = self.garbage = False
        self.slow_ms = self.stall_ms = self.delay_ms = self.end_ms = 0


NO_FAULTS = Faults()
_FLAGS = {
    "reset-before-headers": "reset_before",
    "reset-mid-stream": "reset_mid",
    "no-done": "no_done",
    "malformed-chunk": "malformed",
    "error-event": "error_event",
    "garbage": "garbage",
}
_DELAYS = {
    "slow-first-byte-ms": "slow_ms",
    "stall-mid-stream-ms": "stall_ms",
    "chunk-delay-ms": "delay_ms",
    "end-delay-ms": "end_ms",
}
_fault_cache: dict[str, Faults] = {}


def parse_faults(value: str | None) -> Faults:
    """``status-<code>``, ``reset-before-headers``, ``reset-mid-stream``, ``no-done``,
    ``malformed-chunk``, ``error-event``, ``garbage``, ``slow-first-byte-ms=N``,
    ``stall-mid-stream-ms=N``, ``chunk-delay-ms=N``, ``end-delay-ms=N`` (a stream's body ends N
    ms after its last event, as it may over a network); several separated by commas."""
    if not value:
        return NO_FAULTS
    cached = _fault_cache.get(value)
    if cached is not None:
        return cached
    faults = Faults()
    for raw in value.split(","):
        item = raw.strip().lower()
        if not item:
            continue
        name, _, arg = item.partition("=")
        if name.startswith("status-") and name[7:].isdigit() and 300 <= int(name[7:]) <= 599:
            faults.status = int(name[7:])
        elif name in _FLAGS and not arg:
            setattr(faults, _FLAGS[name], True)
        elif name in _DELAYS and arg.isdigit():
            setattr(faults, _DELAYS[name], int(arg))
        else:
            raise BadRequest(
                f"Unknown x-simulator-fault {raw.strip()!r}.", None, "unknown_simulator_fault"
            )
    if len(_fault_cache) < 1024:
        _fault_cache[value] = faults
    return faults


async def abort_connection(cycle: Any) -> None:
    """Reset the TCP connection (RST, no response).

    An ASGI app cannot do this through the ASGI interface: uvicorn answers an exception raised
    before ``http.response.start`` with a 500. So the raw ``send`` uvicorn handed to the app
    (stashed in the scope by ``SimulatorApp``) is used to reach its bound
    ``RequestResponseCycle`` and that cycle's asyncio transport (both uvicorn protocols,
    httptools and h11, have ``cycle.transport``); SO_LINGER 0 makes close() send a RST.
    """
    transport = getattr(cycle, "transport", None)
    if transport is None:
        raise RuntimeError(
            "x-simulator-fault reset: the server's transport is not reachable "
            "(only uvicorn is supported)"
        )
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    # let uvicorn see connection_lost first, so that it does not try to answer with a 500
    for _ in range(200):
        if getattr(cycle, "disconnected", True):
            return
        await asyncio.sleep(0.001 if _ > 10 else 0)


# -------------------------------------------------------------------------- compression


def _accepts(accept: str, enc: str) -> bool:
    for token in accept.split(","):
        name, _, params = token.strip().partition(";")
        if name.strip().lower() in (enc, "*"):
            q = params.strip()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.0", "0.00", "0.000"))
    return False


def choose_encoding(headers: dict[str, str]) -> str | None:
    wanted = headers.get("x-simulator-compress", "").strip().lower()
    if not wanted:
        return None
    force = wanted.endswith("!")
    wanted = wanted.rstrip("!")
    accept = headers.get("accept-encoding", "")
    if wanted == "auto":
        return next((e for e in ("zstd", "br", "gzip", "deflate") if _accepts(accept, e)), None)
    if wanted not in ("gzip", "deflate", "br", "zstd"):
        raise BadRequest(
            f"Unknown x-simulator-compress {wanted!r}.", None, "unknown_simulator_compress"
        )
    return wanted if force or _accepts(accept, wanted) else None


class Encoder:
    """Incremental compressor; ``chunk`` flushes so every SSE event is decodable at once."""

    def __init__(self, enc: str) -> None:
        self.enc = enc
        if enc in ("gzip", "deflate"):
            self._c: Any = zlib.compressobj(6, zlib.DEFLATED, 31 if enc == "gzip" else 15)
        elif enc == "br":
            import brotli

            self._c = brotli.Compressor()
        else:
            import zstandard

            self._z = zstandard
            self._c = zstandard.ZstdCompressor().compressobj()

    def chunk(self, data: bytes) -> bytes:
        if self.enc in ("gzip", "deflate"):
            return self._c.compress(data) + self._c.flush(zlib.Z_SYNC_FLUSH)
        if self.enc == "br":
            return self._c.process(data) + self._c.flush()
        return self._c.compress(data) + self._c.flush(self._z.COMPRESSOBJ_FLUSH_BLOCK)

    def finish(self) -> bytes:
        return self._c.finish() if self.enc == "br" else self._c.flush()


def compress(enc: str, data: bytes) -> bytes:
    if enc == "gzip":
        return zlib.compress(data, 6, wbits=31)
    if enc == "deflate":
        return zlib.compress(data, 6)
    if enc == "br":
        import brotli

        return brotli.compress(data, quality=4)
    import zstandard

    return zstandard.ZstdCompressor().compress(data)
