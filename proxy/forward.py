"""The `/v1` endpoint: forward to the configured upstream, relay the answer, record it.

The hot path is a plain ASGI handler (no router, no StreamingResponse): it reads the body,
forwards it over a keep-alive connection of our own HTTP/1.1 client (`upstream_client`), and
relays each chunk as it arrives. It parses nothing; the Recording only collects bytes and
times, and the writer process does the rest.

Ordering that makes SPEC section 6 hold: the piece of the response that completes it for the
client (the stream's last event, `stream_end.EndFinder`; the end of any other body) is sent
only after the recording is committed. Every earlier chunk goes out at once, so time to first
token is untouched.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
from typing import Any

import orjson

from llmtap.proxy.coalescing import ON_LOST
from llmtap.proxy.config import Settings
from llmtap.proxy.context import build_context
from llmtap.proxy.decoded_stripping import (
    Stripper,
    UndecodableStream,
    send_head,
    stripper_for,
)
from llmtap.proxy.errors import (
    BadControl,
    LlmtapError,
    RequestTooLarge,
    UpstreamAborted,
    UpstreamNoAnswer,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from llmtap.proxy.faults import ArmedFaults, answer_fault
from llmtap.proxy.headers import (
    client_key,
    masked_key,
    split_request_headers,
    split_response_headers,
)
from llmtap.proxy.replaying import Replayer
from llmtap.proxy.stream_cut import StreamCut
from llmtap.proxy.stream_end import EndFinder
from llmtap.proxy.upstream_client import (
    Origin,
    RequestUnsent,
    Response,
    UnsendableRequest,
    UpstreamClient,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamProtocolError,
    shown_url,
)
from llmtap.proxy.usage_injection import (
    REFUSAL_READ,
    injected_body,
    refuses_usage,
    streams_usage_unasked,
)
from llmtap.recorder.decoding import DECODING_ERRORS, decode_at_most, encoded, is_identity
from llmtap.recorder.matching import content_encoding, decoded_request
from llmtap.recorder.memory import return_freed_memory
from llmtap.recorder.recording import FAULT_REASON, Recording
from llmtap.recorder.records import Mode
from llmtap.recorder.sqlite import key_salt_of
from llmtap.recorder.sse import SSE_START_BYTES, begins_as_sse
from llmtap.recorder.writer import TrackedStream, Writer

log = logging.getLogger("llmtap.proxy")

Scope = dict[str, Any]
Receive = Any
Send = Any

_JSON_HEADERS = [(b"content-type", b"application/json")]
_TRIM_AFTER_REFUSED = 4 << 20
"""A body refused as too large past this size leaves its bytes in the C heap: given back."""
_DOT_SEGMENT = re.compile(r"(?:^|/)\.{1,2}(?:/|$)")
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
"""What a body asking for a stream holds somewhere (confirmed by parsing it, `_asks_for_stream`,
only when its answer then looks like one)."""


class Forwarder:
    """Owns the upstream connections; `handle()` serves one `/v1/...` request."""

    def __init__(
        self,
        settings: Settings,
        writer: Writer | None,
        replayer: Replayer,
        faults: ArmedFaults | None = None,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.replayer = replayer
        self.faults = faults or ArmedFaults()
        self._armed = self.faults.queue  # (read on every request: no call, no lock)
        self.base = shown_url(settings.upstream)  # for messages: no credentials
        # (an upstream that streams usage unasked: asked for, it could not be told apart)
        self._inject_usage = settings.stream_usage and not streams_usage_unasked(settings.upstream)
        self.client: UpstreamClient | None = None
        self.origin: Origin | None = None
        self.origin_error: UpstreamError | None = None
        self.key_salt = b""  # the database's, for the keys' fingerprints (read at start)

    async def start(self) -> None:
        s = self.settings
        if self.writer is not None:  # (it has made and migrated the database by now)
            self.key_salt = await asyncio.to_thread(key_salt_of, s.db)
        try:
            self.origin = Origin.parse(s.upstream)
        except UpstreamError as exc:  # `llmtap serve` says it at start; in process (the
            self.origin_error = exc  # pytest plugin, predict) each request says it, as a 502
        self.client = UpstreamClient(connect_timeout=s.connect_timeout, read_timeout=s.read_timeout)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()

    async def handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        api_path: str,
        raw_api_path: str,
        experiment: str | None,
    ) -> None:
        """Serve one request; `api_path` is below `/v1`, decoded, and `raw_api_path` the same
        as the client encoded it (forwarded as it is: re-encoding would change it)."""
        split = split_request_headers(scope["headers"], self.key_salt)
        ctx = build_context(experiment, split.controls)
        query = scope.get("query_string", b"").decode("latin-1")
        rec = Recording(
            scope["method"], api_path, query, split.stored, b"", ctx, split.key_fingerprint
        )
        declared = split.content_length
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > self.settings.max_body_size
        ):
            # refused before the first receive(), which would answer `Expect: 100-continue`
            # with a 100 and have the client upload it all; its body unread, the connection ends
            await self._answer_error(send, rec, _too_large(self.settings.max_body_size), close=True)
            return
        try:
            rec.request_body = await _read_body(receive, self.settings.max_body_size)
        except RequestTooLarge as exc:
            await self._answer_error(send, rec, exc)
            if self.settings.max_body_size > _TRIM_AFTER_REFUSED:  # the refused bytes read
                asyncio.get_running_loop().run_in_executor(None, return_freed_memory)
            return
        except ClientGone:
            self._submit(rec.fail("client disconnected before sending its whole body"))
            return
        mode = self.settings.mode
        if "mode" in split.controls:
            try:
                mode = Mode(split.controls["mode"].strip().lower())
            except ValueError:
                await self._answer_error(
                    send,
                    rec,
                    BadControl(
                        f"llmtap: llmtap-mode must be one of record, replay, auto, off; "
                        f"not {split.controls['mode']!r}"
                    ),
                )
                return
        rec.discard = mode == Mode.OFF
        cut: StreamCut | None = None
        if self._armed or "fault" in split.controls:  # the one look a request without pays
            injected = await self._inject(receive, send, rec, split.controls.get("fault"))
            if injected is ANSWERED:
                return
            if isinstance(injected, StreamCut):
                cut = injected
                send, receive = cut.send, cut.receive
        if mode in (Mode.REPLAY, Mode.AUTO) and await self.replayer.answer(
            send,
            rec.method,
            api_path,
            query,
            rec.request_headers,
            rec.request_body,
            must_answer=mode == Mode.REPLAY,
        ):
            if cut is not None and (replayed := cut.replayed(rec)) is not None:
                self._submit(replayed)
            return
        if "." in api_path and _DOT_SEGMENT.search(api_path):
            # `/v1/../admin` climbs out of the base path at any server that resolves dot
            # segments (RFC 3986 5.2.4): only the configured upstream's API is reachable
            await self._answer_error(
                send,
                rec,
                BadControl("llmtap: a path with '.' or '..' segments is not forwarded"),
            )
            return
        target = raw_api_path + ("?" + query if query else "")
        body, headers = rec.request_body, split.forward
        if self._inject_usage and self.writer and not rec.discard and rec.method == "POST":
            injected = injected_body(api_path, body)
            if injected is not None:
                rec.usage_injected = True
                body = injected
                # an uncompressed stream, so the extra usage can be taken out again
                headers = _uncompressed(headers)
        if cut is not None:  # (its events are found in the bytes as they come)
            headers = _uncompressed(headers)
        await self._forward(receive, send, rec, target, headers, body, split.forward)

    async def _inject(
        self, receive: Receive, send: Send, rec: Recording, header: str | None
    ) -> StreamCut | Answered | None:
        """Answer the request's fault (its `llmtap-fault`, or the next one armed): ANSWERED, or
        the StreamCut to send a stream fault's answer through; None when there is none."""
        try:
            fault = self.faults.take(header)
        except ValueError as exc:
            await self._answer_error(send, rec, BadControl(str(exc)))
            return ANSWERED
        if fault is None:
            return None
        if fault.cuts_stream and not _asks_for_stream(rec):
            message = (
                f"llmtap-fault {fault.kind} cuts a stream: this request asks for none "
                '("stream": true)'
            )
            await self._answer_error(send, rec, BadControl(message))
            return ANSWERED
        rec.fault = fault.kind
        cycle = _server_cycle(receive)
        if fault.cuts_stream:
            return StreamCut(fault, send, receive, cycle, rec)
        try:
            await answer_fault(fault, receive, send, rec, cycle, self._commit)
        except asyncio.CancelledError:
            if rec.ended_ns is None:  # llmtap stopping during a `timeout` held: say so
                self._submit(rec.fail(f"{FAULT_REASON}: {fault}; llmtap stopped first"))
            raise
        return ANSWERED

    async def _request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> Response:
        if self.origin is None or self.client is None:
            raise self.origin_error or UpstreamError("the forwarder is not started")
        return await self.client.request(
            self.origin, method, self.origin.target(target), headers, body
        )

    async def _forward(
        self,
        receive: Receive,
        send: Send,
        rec: Recording,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        original_headers: list[tuple[str, str]],
    ) -> None:
        # a client that leaves while the upstream thinks (a reasoning model, a provider's
        # queue) ends the upstream request too, as it would have directly: uvicorn's protocol
        # (ours, see coalescing.py) calls this task's cancel when the connection is lost
        cycle = _server_cycle(receive)
        if cycle is not None:
            setattr(cycle, ON_LOST, asyncio.current_task().cancel)  # type: ignore[union-attr]
        try:
            try:
                upstream = await self._request(rec.method, target, headers, body)
                if rec.usage_injected and upstream.status in (400, 422):
                    said = await _front_of(upstream, REFUSAL_READ)
                    named = [(name.lower(), value) for name, value in upstream.raw_headers]
                    coding = _content_headers(named)[1].decode("latin-1")
                    if refuses_usage(said, coding):
                        upstream.release()
                        rec.usage_injected = False
                        upstream = await self._request(
                            rec.method, target, original_headers, rec.request_body
                        )
                    else:
                        upstream.unread(said)
            finally:  # (before the handlers below: their awaits are not to be cancelled)
                if cycle is not None:
                    setattr(cycle, ON_LOST, None)
        except TimeoutError as exc:
            await self._answer_error(
                send,
                rec,
                UpstreamTimeout(
                    f"llmtap: the upstream {self.base} did not answer in time ({exc or 'timeout'})"
                ),
            )
            return
        except UnsendableRequest as exc:  # a control character in the path or a header...
            await self._answer_error(
                send, rec, BadControl(f"llmtap: this request cannot be forwarded as it is: {exc}")
            )
            return
        except (UpstreamError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, UpstreamProtocolError):
                error: LlmtapError = UpstreamNoAnswer(
                    f"llmtap: the upstream {self.base} took the request and answered with "
                    f"something that is not HTTP: {reason}"
                )
            elif isinstance(exc, UpstreamDisconnected) and not isinstance(exc, RequestUnsent):
                error = UpstreamNoAnswer(
                    f"llmtap: the upstream {self.base} took the request and closed the "
                    f"connection before answering (it may have acted on it): {reason}"
                )
            else:
                error = UpstreamUnreachable(
                    f"llmtap: could not reach the upstream {self.base}: {reason}"
                )
            await self._answer_error(send, rec, error)
            return
        except asyncio.CancelledError:
            if cycle is None or not cycle.disconnected:  # llmtap stopping, its grace over
                self._submit(rec.fail("llmtap stopped before the upstream answered"))
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            self._submit(rec.fail("client disconnected"))
            return
        relay_headers, stored = split_response_headers(upstream.raw_headers)
        rec.respond(upstream.status, stored)
        content_type, encoding = _content_headers(relay_headers)
        watch: _DisconnectWatch | None = None
        complete = False
        try:
            streamed = content_type == b"text/event-stream" or await _unlabelled_stream(
                rec, upstream
            )
            # a stream can run for minutes: a task waits for the client to leave and cancels
            # the relay. Any other body is relayed as it comes, and under uvicorn the
            # connection's `disconnected` flag, read between pieces, says the same without a
            # task per request.
            if streamed:
                cycle = None
            watch = _DisconnectWatch(receive) if cycle is None else None
            if cycle is not None and cycle.disconnected:
                raise ClientGone()
            start = {
                "type": "http.response.start",
                "status": upstream.status,
                "headers": relay_headers,
            }
            if streamed:
                await self._relay_stream(send, rec, upstream, encoding, start)
            elif rec.method == "HEAD" or upstream.status in _NO_BODY:
                await self._relay_head_alone(send, rec, upstream, start, cycle)
            else:
                await send(start)
                await self._relay_body(send, rec, upstream, cycle, headers)
            complete = True
        except ClientGone:
            self._submit(rec.fail("client disconnected"))
        except asyncio.CancelledError:
            if watch is None or not watch.disconnected:
                # llmtap stopping (its grace over, or a second Ctrl-C): what had come is kept
                if not rec.committed:
                    self._submit(rec.fail("llmtap stopped mid-response"))
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            if not rec.committed:  # a client leaving after [DONE] had all it wanted
                self._submit(rec.fail("client disconnected"))
        except (UpstreamError, OSError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):  # (with what it waited for, when it says)
                reason = f"timeout ({exc})" if str(exc) else "timeout"
            self._submit(rec.fail(f"upstream broke mid-response: {reason}"))
            raise UpstreamAborted(reason) from exc
        finally:
            if watch is not None:
                watch.stop()
            # a connection whose response was not read to the end cannot be reused
            upstream.release() if complete else upstream.close()
            if self.writer is not None:
                # after the record of how it ended (a client gone, a stop) was handed over: a
                # long answer's first pieces, on file in the writer process, stay there for it
                # (untracked before, they were deleted, and the record kept only the rest)
                self.writer.untrack(rec)

    async def _relay_stream(
        self, send: Send, rec: Recording, upstream: Response, encoding: bytes, start: Any
    ) -> None:
        # the usage llmtap asked for leaves the stream; a server that compressed it despite
        # `identity` has it decoded on the way (its head then waits for its first piece, which
        # says whether it decodes: `decoded_stripping`); one in an encoding nothing reads keeps
        # its bytes, and the client sees the usage it did not ask for
        stripper = stripper_for(encoding) if rec.usage_injected else None
        head = await send_head(send, start, stripper)
        send = head or send
        writer = self.writer if not rec.discard else None
        # its pieces go to the writer process as they come (untracked in `_forward`, once what
        # ended it is recorded)
        tracked = writer.track(rec) if writer is not None else None
        try:
            await self._relay_events(
                send, rec, upstream, stripper, tracked, EndFinder(rec.path, encoding)
            )
        except (UndecodableStream, UpstreamError, OSError, TimeoutError) as exc:
            if head is not None:
                await head.head()  # (then the connection is aborted, as the upstream's was)
            if isinstance(exc, UndecodableStream):  # (its head says decoded: no way back)
                coding = encoding.decode("latin-1")
                raise UpstreamError(f"the {coding} stream stopped decoding: {exc}") from exc
            raise

    async def _relay_events(
        self,
        send: Send,
        rec: Recording,
        upstream: Response,
        stripper: Stripper | None,
        tracked: TrackedStream | None,
        end: EndFinder,
    ) -> None:
        committed_at = 0  # how many chunks the committed copy holds
        while chunk := await upstream.read():
            rec.feed(chunk)
            # the SDK has the whole answer at the stream's last event ([DONE], or a Responses
            # stream's terminal event) and may stop reading there: commit before it can see it
            try:  # (zero-cost unless raised: no call per piece beyond the finder's own)
                ended = end.ends_in(chunk)
            except Exception:  # noqa: BLE001 - bytes nobody foresaw: the body's end commits
                log.exception("the stream-end finder failed; the body's end commits this stream")
                end.give_up()
                ended = False
            if ended:
                await self._commit(rec.finish())
                rec.committed = True
                committed_at = rec.piece_count
            out = stripper.feed(chunk) if stripper is not None else chunk
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            if tracked is not None and tracked.paused is not None:  # it outruns the writer
                await self.writer.catch_up(tracked)  # type: ignore[union-attr]
        if not committed_at:
            await self._commit(rec.finish())
        elif rec.piece_count > committed_at:  # bytes after [DONE]: the fuller copy replaces it
            self._submit(rec.finish())
        rest = stripper.flush() if stripper is not None else b""
        await send({"type": "http.response.body", "body": rest, "more_body": False})

    async def _relay_body(
        self,
        send: Send,
        rec: Recording,
        upstream: Response,
        cycle: Any | None,
        headers: list[tuple[str, str]],
    ) -> None:
        # hold back one chunk: the last one goes out only after the commit
        pending: bytes | None = None
        received = 0
        tracked: TrackedStream | None = None
        # an error answer may echo the client's key: recorded masked from its first piece on,
        # so that a record of a body cut short has it masked too (the client gets it as sent)
        key = client_key(headers) if rec.status is not None and rec.status >= 400 else None
        while chunk := await upstream.read():
            rec.feed(chunk.replace(key, masked_key(key)) if key and key in chunk else chunk)
            if pending is not None:
                await send({"type": "http.response.body", "body": pending, "more_body": True})
            pending = chunk
            if cycle is not None and cycle.disconnected:
                raise ClientGone()
            received += len(chunk)
            if tracked is not None:
                if tracked.paused is not None:  # it outruns the writer
                    await self.writer.catch_up(tracked)  # type: ignore[union-attr]
            elif received > TRACK_BODIES_PAST and self.writer is not None and not rec.discard:
                # a long body (a batch's output file: hundreds of MB) goes along to the writer
                # process as a stream's pieces do, which puts it on file: held here whole, it
                # was in memory three times over (the pieces, the frame, a copy). Untracked in
                # `_forward`, once what ended it is recorded.
                tracked = self.writer.track(rec)
        if key is not None and tracked is None:
            _without_key(rec, key)
        await self._commit(rec.finish())
        if cycle is not None and cycle.disconnected:
            # it left while the commit was waited for: it never had the last piece (its SDK
            # timed out, and may try again), as a stream's client leaving then is recorded
            raise ClientGone()
        await send({"type": "http.response.body", "body": pending or b"", "more_body": False})

    async def _relay_head_alone(
        self, send: Send, rec: Recording, upstream: Response, start: Any, cycle: Any | None
    ) -> None:
        """An answer that is its head alone (HEAD, 204, 304): its client has all of it once
        the head is out, so the head goes after the commit (SPEC 6), as a body's last piece
        does. (Sent first, the client closed before the commit: "client disconnected".)"""
        while chunk := await upstream.read():  # (none comes; what does is kept)
            rec.feed(chunk)
        await self._commit(rec.finish())
        if cycle is not None and cycle.disconnected:
            raise ClientGone()
        await send(start)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _answer_error(
        self, send: Send, rec: Recording, exc: LlmtapError, close: bool = False
    ) -> None:
        body = exc.body()
        rec.respond(exc.status, [("content-type", "application/json")])
        await self._commit(rec.fail(str(exc), exc.status, body))
        headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _commit(self, rec: Recording) -> None:
        if self.writer is not None and not rec.discard:
            await self.writer.commit(rec)

    def _submit(self, rec: Recording) -> None:
        if self.writer is not None and not rec.discard:
            self.writer.submit_nowait(rec)


_NO_BODY = frozenset({204, 304})
"""Statuses whose answer never has a body (RFC 9110 6.4.1)."""

TRACK_BODIES_PAST = 4 << 20
"""Bytes of a body that is not a stream after which its pieces go to the writer process as they
come (a chat or embeddings answer is far below: no work is added to them)."""


class Answered(enum.Enum):
    ANSWERED = "answered"


ANSWERED = Answered.ANSWERED
"""`_inject` answered the request itself."""


def _asks_for_stream(rec: Recording) -> bool:
    body = decoded_request(rec.request_body, content_encoding(rec.request_headers))
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and parsed.get("stream") is True


ERROR_BODY_MASKED = 1 << 20
"""An error answer is looked at for the client's key up to this size (they are a few hundred
bytes; a larger one is no echo of a request)."""


def _without_key(rec: Recording, key: bytes) -> None:
    """The recorded copy of a whole error answer without the client's key, which some servers
    echo ("Incorrect API key provided: <the key>"), where the pieces alone did not show it:
    across two pieces, or compressed (decoded, masked and encoded again, so that the copy
    still is what its headers say)."""
    coding = content_encoding(rec.response_headers)
    body = b"".join(rec.chunks)
    if len(body) > ERROR_BODY_MASKED:
        return
    if not is_identity(coding):
        try:
            plain = decode_at_most(body, coding, 16 * ERROR_BODY_MASKED)
        except DECODING_ERRORS:
            return
        if plain is None or key not in plain:
            return
        body = encoded(plain.replace(key, masked_key(key)), coding)
    elif key in body:
        body = body.replace(key, masked_key(key))
    else:
        return
    rec.chunks, rec.chunk_times_ns = [body], rec.chunk_times_ns[-1:]


async def _unlabelled_stream(rec: Recording, upstream: Response) -> bool:
    """Whether a successful answer to a request that asked for a stream is one, whatever its
    content type: a quick server's default (no type, text/plain, text/html) or a JSON label.
    The SDKs read it as a stream all the same, so llmtap relays it as one (usage taken out,
    each event as it comes) and records it as one. Its first bytes are looked at only then."""
    if upstream.status >= 300 or rec.method != "POST" or b'"stream"' not in rec.request_body:
        return False
    if _STREAM_TRUE.search(rec.request_body) is None:
        # `"stream": false` (LangChain sends it on every call): no wait for a first byte
        return False
    first = await _front_of(upstream, SSE_START_BYTES)
    upstream.unread(first)
    rec.unlabelled_stream = begins_as_sse(first) and _asks_for_stream(rec)
    return rec.unlabelled_stream


async def _front_of(upstream: Response, at_most: int) -> bytes:
    """The first `at_most` bytes of an answer's body, or all of it if shorter, or what came
    before it broke or stalled: its head is still to be relayed, and the relay then meets
    the same failure as it would have (an abort after the head, not a 502 or uvicorn's 500)."""
    pieces: list[bytes] = []
    size = 0
    try:
        while size < at_most and (piece := await upstream.read()):
            pieces.append(piece)
            size += len(piece)
    except (UpstreamError, OSError, TimeoutError):
        pass
    return b"".join(pieces)


def _uncompressed(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers asking for an answer that is not compressed."""
    return [*(h for h in headers if h[0] != "accept-encoding"), ("accept-encoding", "identity")]


def _content_headers(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    """(media type, content coding) of a response, from its lower-cased header names."""
    content_type, encoding = b"", b"identity"
    for name, value in headers:
        if name == b"content-type":
            content_type = value.split(b";", 1)[0].strip().lower()
        elif name == b"content-encoding":
            encoding = value.strip().lower()
    return content_type, encoding


class ClientGone(Exception):
    """The client went away (before its request was read, or before the answer was whole)."""


def _server_cycle(receive: Receive) -> Any | None:
    """uvicorn's per-request object behind `receive`, whose `disconnected` flag is set the
    moment the client's connection closes; None under another server (then a task watches)."""
    cycle = getattr(receive, "__self__", None)
    return cycle if isinstance(getattr(cycle, "disconnected", None), bool) else None


class _DisconnectWatch:
    """Cancels the handling task when the client goes away mid-response.

    uvicorn's `send()` returns silently once the client is gone, so without this a relay
    would read a long stream to its end for nobody.
    """

    __slots__ = ("_task", "_waiter", "_stopped", "disconnected")

    def __init__(self, receive: Receive) -> None:
        self._task = asyncio.current_task()
        self._stopped = False
        self.disconnected = False
        self._waiter = asyncio.ensure_future(receive())
        self._waiter.add_done_callback(self._on_message)

    def _on_message(self, waiter: asyncio.Future[Any]) -> None:
        if self._stopped or waiter.cancelled() or waiter.exception() is not None:
            return
        if waiter.result().get("type") == "http.disconnect" and self._task is not None:
            self.disconnected = True
            self._task.cancel()

    def stop(self) -> None:
        self._stopped = True
        self._waiter.cancel()


def _too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(
        f"llmtap: request body is larger than max_body_size ({limit} bytes); "
        "raise it with --max-body-size or LLMTAP_MAX_BODY_SIZE"
    )


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
