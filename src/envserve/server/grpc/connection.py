"""One HTTP/2 connection serving gRPC calls: python-hyper's ``h2`` state machine driven by asyncio, with
envserve's policies on top.

- **calls are ordinary asyncio Tasks**, one per stream (:mod:`.stream`), cancelled when the stream is reset
  or the connection is lost (so a queued call whose client has gone never reaches the model); unary
  calls get their request once it is complete, streaming ones message by message;
- **memory is bounded by the windows** (:mod:`.flow`);
- **resets are budgeted** (the 2023 "rapid reset" attack): every stream the peer resets costs one token
  of :data:`RESET_BUDGET`, refilled at :data:`RESET_REFILL` per second; an empty budget ends the
  connection with GOAWAY ENHANCE_YOUR_CALM;
- **timeouts and caps**: :data:`PREFACE_TIMEOUT` for a new connection to start HTTP/2, an idle timeout
  for connections without streams, a cap on connections (beyond it new ones get GOAWAY and are closed),
  and reading pauses while the peer does not read what we write (PING/SETTINGS floods stall themselves).

Protocol violations close the connection with GOAWAY and the error code ``h2`` chose; a bad request fails
only its own stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import sys
from dataclasses import dataclass
from typing import Any, AsyncGenerator, Callable, Dict, Optional, Protocol, Set

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from ..call import PEER
from .flow import InboundWindows
from .hpack_memo import MemoDecoder, MemoEncoder
from .stream import Stream, call_headers, check_call, timeout_of
from .wire import (
    OK_TRAILERS,
    RESPONSE_HEADERS,
    GrpcError,
    Handler,
    Metadata,
    StatusCode,
    StreamHandler,
    framed,
    receive_message,
    status_headers,
)

__all__ = ["Connection", "Limits", "Serving"]

logger = logging.getLogger("envserve.grpc")

#: Streams a peer may reset at once before GOAWAY ENHANCE_YOUR_CALM, and the refill per second.
RESET_BUDGET = 200
RESET_REFILL = 50.0
#: Seconds a new connection has to send the HTTP/2 connection preface.
PREFACE_TIMEOUT = 10.0
#: After our FIN, how long a client may take to close before the socket is aborted.
LINGER_SECONDS = 2.0
#: Bytes of our writes the peer may leave unread before we stop reading from it.
WRITE_BUFFER_HIGH = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What one gRPC server accepts; the defaults are what ``envserve serve`` uses."""

    max_message: int = 100 << 20
    max_concurrent_streams: int = 128
    max_header_list_size: int = 16384
    #: The initial window of each stream (what a client may send on it before we acknowledge anything):
    #: HTTP/2's default, which also bounds what a stream left waiting can hold.
    stream_window: int = 65535
    #: Connections served at once; beyond it a new connection gets GOAWAY and is closed.
    max_connections: int = 1024
    #: Seconds a connection without open streams is kept; 0 keeps it until the peer closes it.
    idle_timeout: float = 300.0
    #: Seconds a request may pause before it is complete (a unary call's message, a streaming call's
    #: next bytes mid-message): DEADLINE_EXCEEDED and the stream reset beyond; 0: no bound.
    stall_timeout: float = 60.0


class Serving(Protocol):
    """What a connection needs from the server it belongs to."""

    limits: Limits
    handlers: Dict[str, Handler]
    stream_handlers: Dict[str, StreamHandler]
    connections: Set[Connection]

    def connection_closed(self) -> None:
        """A connection has closed (and left ``connections``)."""


def _start_task(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[Any]:
    # Python 3.12's eager start runs the call up to its first suspension right away (an in-process model
    # answers without a trip through the event loop); it is an ordinary Task either way.
    if _EAGER is not None:
        return _EAGER(loop, coro)  # type: ignore[no-any-return]
    return loop.create_task(coro)


_EAGER = getattr(asyncio, "eager_task_factory", None) if sys.version_info >= (3, 12) else None


class Connection(asyncio.Protocol):
    def __init__(self, server: Serving) -> None:
        self.server = server
        limits = server.limits
        self.limits = limits
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)
        # the same header blocks call after call: hpack's results remembered while its table is unchanged
        decoder = MemoDecoder()
        decoder.max_header_list_size = self.conn.decoder.max_header_list_size
        decoder.max_allowed_table_size = self.conn.decoder.max_allowed_table_size
        self.conn.encoder, self.conn.decoder = MemoEncoder(), decoder
        self.transport: Optional[asyncio.Transport] = None
        self.streams: Dict[int, Stream] = {}  # open streams: receiving, running or sending
        self.streaming: Dict[int, Stream] = {}  # streaming calls whose client has not half-closed
        self.windows = InboundWindows(self.conn)
        self.resets = float(RESET_BUDGET)
        self.reset_clock = 0.0
        self.preface_seen = False
        self.goaway_sent = False
        self.draining = False
        self.closed = False
        self.write_paused = False
        self.last_active = 0.0
        self._timer: Optional[asyncio.TimerHandle] = None
        self._stall_timer: Optional[asyncio.TimerHandle] = None

    # asyncio callbacks -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer: Optional[str] = peer[0] if isinstance(peer, tuple) and peer else None
        loop = asyncio.get_running_loop()
        self.last_active = self.reset_clock = loop.time()
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)  # type: ignore[attr-defined]
        server = self.server
        limits = self.limits
        conn = self.conn
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        # h2 sizes its HPACK decoder from settings it sees acknowledged; these are ours from the start
        conn.decoder.max_header_list_size = limits.max_header_list_size
        conn.initiate_connection()
        conn.increment_flow_control_window(limits.max_concurrent_streams * limits.stream_window)
        full = len(server.connections) >= limits.max_connections
        server.connections.add(self)  # a refused one too, until it has closed: stop() must see it
        if full:
            logger.warning(
                "refusing a gRPC connection: %d are open (max_connections)", limits.max_connections
            )
            self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, "too many connections")
            return
        self._flush()
        self._timer = loop.call_later(PREFACE_TIMEOUT, self._on_timer)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        for stream in self.streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()
        self.windows.clear()
        self.streaming.clear()
        self.server.connections.discard(self)
        self.server.connection_closed()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has already queued a GOAWAY with the RFC's error code
            self._fail(str(exc) or type(exc).__name__)
            return
        for event in events:
            handler = _EVENTS.get(type(event))
            if handler is not None:
                handler(self, event)
            if self.closed or self.goaway_sent:  # after our GOAWAY the rest of the batch starts nothing
                return
        self._flush()

    # events ------------------------------------------------------------------------------------------
    def _request_received(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        if self.draining:  # a graceful stop is under way: the client retries refused streams elsewhere
            self.conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        stream = Stream(sid, event.headers)
        stream.heard = asyncio.get_running_loop().time()
        self._watch_stalls()
        self.streams[sid] = stream
        if self.server.stream_handlers and self._start_streaming(stream):
            if event.stream_ended is not None:
                self._streaming_ended(stream)
            return
        self.windows.start(stream)
        if event.stream_ended is not None:
            self._start(stream)

    def _data_received(self, event: h2.events.DataReceived) -> None:
        sid = event.stream_id
        stream = self.windows.get(sid)
        size = event.flow_controlled_length or 0
        if stream is None and sid in self.streaming:
            self._streaming_data(self.streaming[sid], event.data or b"", size, event.stream_ended is not None)
            return
        if stream is None:  # trailers-only responses are already on their way; drop late data
            if size:
                self.conn.acknowledge_received_data(size, sid)
            return
        self.windows.received(stream, event.data or b"")
        stream.heard = asyncio.get_running_loop().time()
        # the message's own length prefix bounds what the stream may hold: never more than it declares
        refused = None
        if len(stream.data) >= 5:
            declared = struct.unpack_from(">I", stream.data, 1)[0]
            if declared > self.limits.max_message:
                refused = (
                    StatusCode.RESOURCE_EXHAUSTED,
                    "request message of %d bytes is larger than the server's limit of %d bytes"
                    % (declared, self.limits.max_message),
                )
            elif len(stream.data) > 5 + declared:
                refused = (
                    StatusCode.INVALID_ARGUMENT,
                    "unary call must carry exactly one message (length prefix %d, more bytes sent)"
                    % declared,
                )
        if refused is not None:
            self.windows.finish(stream)
            self.windows.ack(stream, size)
            self._respond_error(stream, *refused)
            self._reset_for_peer(sid)
            self._forget(stream)
            return
        self.windows.settle(stream, size)
        if event.stream_ended is not None:
            self._start(stream)

    def _stream_ended(self, event: h2.events.StreamEnded) -> None:
        stream = self.windows.get(event.stream_id)
        if stream is not None:
            self._start(stream)
        elif event.stream_id in self.streaming:
            self._streaming_ended(self.streaming[event.stream_id])

    def _stream_reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:  # h2 has closed it: its call must not answer on it, whatever follows
            self._forget(stream)
        if event.remote_reset:
            self._charge_reset()

    def _charge_reset(self) -> None:
        """One stream reset, the peer's or one the peer made the server send: from the same budget."""
        now = asyncio.get_running_loop().time()
        self.resets = min(float(RESET_BUDGET), self.resets + (now - self.reset_clock) * RESET_REFILL)
        self.reset_clock = now
        self.resets -= 1
        if self.resets < 0:
            self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, "too many stream resets")

    def _reset_for_peer(self, sid: int) -> None:
        """Reset a stream because of what the peer sent ("MadeYouReset": such resets cost the peer's
        reset budget too, or a peer could make the server reset streams without end)."""
        # NO_ERROR: the answer (trailers, ending the stream) is already out; the reset only tells the peer
        # to stop sending, as HTTP/2 lets a server do once its response is complete (clients then report
        # the answer's status, not the reset)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.reset_stream(sid, ErrorCodes.NO_ERROR)
        self._charge_reset()

    def _window_updated(self, event: Any) -> None:
        self._send_pending()

    def _settings_changed(self, event: Any) -> None:
        if not self.preface_seen:  # a client's first frame is its SETTINGS, right after the preface
            self.preface_seen = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self.limits.idle_timeout:
                self._timer = asyncio.get_running_loop().call_later(self.limits.idle_timeout, self._on_timer)
        self._send_pending()

    def _connection_terminated(self, event: h2.events.ConnectionTerminated) -> None:
        # The peer is leaving. h2 sends nothing more after a GOAWAY either way, so calls in flight are
        # cancelled (their clients are going) and the connection closes.
        self.goaway_sent = True
        self._cancel_streams()
        self._maybe_close()

    # streams ----------------------------------------------------------------------------------------
    def _forget(self, stream: Stream) -> None:
        self.windows.finish(stream)
        self.streaming.pop(stream.sid, None)
        self.streams.pop(stream.sid, None)
        if stream.task is not None:
            stream.task.cancel()
            stream.task = None
        if not self.streams:
            self._went_idle()

    # calls -------------------------------------------------------------------------------------------
    def _start(self, stream: Stream) -> None:
        self.windows.finish(stream)
        loop = asyncio.get_running_loop()
        self.last_active = loop.time()
        task = _start_task(loop, self._call(stream))
        if not task.done():
            stream.task = task

    async def _call(self, stream: Stream) -> None:
        PEER.set(self.peer)  # this call's task only
        method, path, content_type, encoding, timeout, metadata = call_headers(stream)
        data, stream.data = stream.data, bytearray()
        try:
            check_call(method, content_type)
            handler = self.server.handlers.get(path)
            if handler is None:
                raise GrpcError(StatusCode.UNIMPLEMENTED, "unknown method %s" % path)
            message = await receive_message(data, encoding, self.limits.max_message)
            del data
            seconds = timeout_of(timeout)
            if seconds is not None:
                try:
                    reply = await asyncio.wait_for(handler(message, metadata, seconds), seconds)
                except asyncio.TimeoutError:
                    raise GrpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded") from None
            else:
                reply = await handler(message, metadata, None)
        except GrpcError as exc:
            self._respond_error(stream, exc.code, exc.message, exc.metadata)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("unexpected error in gRPC call %s", path)
            self._respond_error(stream, StatusCode.INTERNAL, "internal server error; see the server log")
        else:
            if isinstance(reply, tuple):
                self._respond(stream, reply[0], reply[1])
            else:
                self._respond(stream, reply)

    # streaming calls ---------------------------------------------------------------------------------
    def _start_streaming(self, stream: Stream) -> bool:
        """Start the call at once if its path names a streaming method; False for a unary one."""
        path = next((v for k, v in stream.headers if k == b":path"), b"").decode("latin-1")
        handler = self.server.stream_handlers.get(path)
        if handler is None:
            return False
        stream.inbox = asyncio.Queue()
        stream.drained = asyncio.Event()
        self.streaming[stream.sid] = stream
        loop = asyncio.get_running_loop()
        self.last_active = loop.time()
        stream.task = _start_task(loop, self._call_streaming(stream, handler))
        return True

    def _streaming_data(self, stream: Stream, data: bytes, size: int, ended: bool) -> None:
        """Cut complete messages out of the stream's bytes for the handler. The peer's window is handed
        back at once while the handler keeps up, and only as it takes messages when it does not, so a
        client that sends faster than the handler reads holds at most a window of messages here."""
        assert stream.inbox is not None
        stream.heard = asyncio.get_running_loop().time()
        stream.data += data
        stream.deferred += size
        buffer = stream.data
        while len(buffer) >= 5:
            length = struct.unpack_from(">I", buffer, 1)[0]
            if length > self.limits.max_message:
                self.streaming.pop(stream.sid, None)
                self._respond_error(
                    stream,
                    StatusCode.RESOURCE_EXHAUSTED,
                    "request message larger than the server's limit of %d bytes" % self.limits.max_message,
                )
                self._reset_for_peer(stream.sid)
                self._forget(stream)
                return
            if len(buffer) < 5 + length:
                break
            stream.inbox.put_nowait(bytes(buffer[: 5 + length]))
            del buffer[: 5 + length]
        if stream.inbox.qsize() <= 1 and stream.deferred:
            self.windows.ack(stream, stream.deferred)
            stream.deferred = 0
        if ended:
            self._streaming_ended(stream)

    def _streaming_ended(self, stream: Stream) -> None:
        if self.streaming.pop(stream.sid, None) is not None and stream.inbox is not None:
            if stream.data:
                stream.inbox.put_nowait(bytes(stream.data))  # a truncated message: the handler's error
                stream.data = bytearray()
            stream.inbox.put_nowait(None)

    async def _requests(self, stream: Stream, encoding: str) -> AsyncGenerator[bytes, None]:
        inbox = stream.inbox
        assert inbox is not None
        while True:
            message = await inbox.get()
            if inbox.empty() and stream.deferred and stream.sid in self.streams and not self.closed:
                self.windows.ack(stream, stream.deferred)  # the handler has caught up: let the peer send more
                stream.deferred = 0
                self._flush()
            if message is None:
                return
            yield await receive_message(bytearray(message), encoding, self.limits.max_message)

    async def _call_streaming(self, stream: Stream, handler: StreamHandler) -> None:
        PEER.set(self.peer)  # this call's task only
        method, path, content_type, encoding, timeout, metadata = call_headers(stream)

        async def run() -> None:
            # both generators are closed here, on every way out (a cancelled call, a peer gone), rather
            # than left to the loop's finalizer, which may run after the loop has stopped
            requests = self._requests(stream, encoding)
            async with contextlib.aclosing(requests), contextlib.aclosing(
                handler(requests, metadata)
            ) as replies:
                async for reply in replies:
                    await self._send_message(stream, reply)

        try:
            check_call(method, content_type)
            seconds = timeout_of(timeout)
            if seconds is not None:
                try:
                    await asyncio.wait_for(run(), seconds)
                except asyncio.TimeoutError:
                    raise GrpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded") from None
            else:
                await run()
        except GrpcError as exc:
            self._end_streaming(stream, exc.code, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("unexpected error in gRPC call %s", path)
            self._end_streaming(stream, StatusCode.INTERNAL, "internal server error; see the server log")
        else:
            self._end_streaming(stream, StatusCode.OK, "")

    async def _send_message(self, stream: Stream, reply: bytes) -> None:
        if self.closed or stream.sid not in self.streams:
            raise asyncio.CancelledError()
        if not stream.started:
            stream.started = True
            self.conn.send_headers(stream.sid, RESPONSE_HEADERS)
        data = framed(reply)
        if stream.pending is not None:
            data = stream.pending[0].tobytes() + data
        stream.pending = (memoryview(data), None)
        self._send_stream(stream)
        self._flush()
        while stream.pending is not None:  # the peer is not reading: take no more requests until it does
            assert stream.drained is not None
            stream.drained.clear()
            await stream.drained.wait()
            if self.closed or stream.sid not in self.streams:
                raise asyncio.CancelledError()

    def _end_streaming(self, stream: Stream, code: int, message: str) -> None:
        self.streaming.pop(stream.sid, None)
        if not stream.started:
            self._respond_error(stream, code, message)
            return
        if self.closed or stream.sid not in self.streams:
            return
        trailers = OK_TRAILERS if code == StatusCode.OK else status_headers(code, message)
        payload = stream.pending[0] if stream.pending is not None else memoryview(b"")
        stream.pending = (payload, trailers)
        self._send_stream(stream)
        self._flush()

    # responses ---------------------------------------------------------------------------------------
    def _respond(self, stream: Stream, reply: bytes, trailing: Optional[Metadata] = None) -> None:
        if self.closed or stream.sid not in self.streams:
            return
        self.conn.send_headers(stream.sid, RESPONSE_HEADERS)
        trailers = [(k.encode("ascii"), v.encode("ascii")) for k, v in trailing or ()] + OK_TRAILERS
        stream.pending = (memoryview(framed(reply)), trailers)
        self._send_stream(stream)
        self._flush()

    def _respond_error(
        self, stream: Stream, code: int, message: str, metadata: Optional[Metadata] = None
    ) -> None:
        if self.closed or stream.sid not in self.streams:
            return
        # trailers-only: one HEADERS block ending the stream (h2 splits it to the peer's frame size)
        extra = [(k.encode("ascii"), v.encode("ascii")) for k, v in metadata or ()]
        self.conn.send_headers(
            stream.sid,
            RESPONSE_HEADERS[:2] + extra + status_headers(code, message),
            end_stream=True,
        )
        self._stream_done(stream)
        self._flush()

    def _send_stream(self, stream: Stream) -> None:
        """Send as much of the stream's pending DATA as the windows allow, then its trailers."""
        assert stream.pending is not None
        payload, trailers = stream.pending
        conn = self.conn
        sid = stream.sid
        while payload:
            allowed = min(len(payload), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if allowed <= 0:
                stream.pending = (payload, trailers)
                return
            conn.send_data(sid, payload[:allowed].tobytes())
            payload = payload[allowed:]
        if trailers is None:  # a streaming call with more to come: all written so far is sent
            stream.pending = None
            if stream.drained is not None:
                stream.drained.set()
            return
        conn.send_headers(sid, trailers, end_stream=True)
        stream.pending = None
        self._stream_done(stream)

    def _send_pending(self) -> None:
        for stream in list(self.streams.values()):
            if stream.pending is not None:
                self._send_stream(stream)

    def _stream_done(self, stream: Stream) -> None:
        self.streams.pop(stream.sid, None)
        stream.task = None
        if not self.streams:
            self._went_idle()

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self.closed:
            self.transport.write(out)

    # lifetime ----------------------------------------------------------------------------------------
    def _watch_stalls(self) -> None:
        """Look at the streams still receiving every quarter of ``stall_timeout`` while any exist."""
        if self._stall_timer is None and self.limits.stall_timeout and not self.closed:
            delay = max(0.05, self.limits.stall_timeout / 4)
            self._stall_timer = asyncio.get_running_loop().call_later(delay, self._check_stalls)

    def _check_stalls(self) -> None:
        """A request that stopped arriving mid-way (a unary call's message, a streaming call's next
        message begun and not finished) for ``stall_timeout``: DEADLINE_EXCEEDED, the stream reset."""
        self._stall_timer = None
        if self.closed:
            return
        now = asyncio.get_running_loop().time()
        limit = self.limits.stall_timeout
        waiting = list(self.windows.receiving.values()) + [s for s in self.streaming.values() if s.data]
        for stream in waiting:
            if now - stream.heard >= limit and stream.sid in self.streams:
                self.streaming.pop(stream.sid, None)
                self._respond_error(
                    stream,
                    StatusCode.DEADLINE_EXCEEDED,
                    "the request stopped arriving: no bytes for %g s (stall_timeout)" % limit,
                )
                self._reset_for_peer(stream.sid)
                self._forget(stream)
        self._flush()
        if self.windows.receiving or any(s.data for s in self.streaming.values()):
            self._watch_stalls()

    def _went_idle(self) -> None:
        self.last_active = asyncio.get_running_loop().time()
        if self.draining:
            self._goaway(ErrorCodes.NO_ERROR, "server shutting down")

    def _on_timer(self) -> None:
        """Preface timeout first; then, with an idle timeout, a periodic look at the connection."""
        self._timer = None
        if self.closed:
            return
        if not self.preface_seen:
            logger.info("closing a gRPC connection that sent no HTTP/2 preface within %g s", PREFACE_TIMEOUT)
            self._abort()
            return
        idle = self.limits.idle_timeout
        if not idle:
            return
        loop = asyncio.get_running_loop()
        if not self.streams and loop.time() - self.last_active >= idle:
            self._goaway(ErrorCodes.NO_ERROR, "idle for %g s" % idle)
            return
        self._timer = loop.call_later(max(0.05, self.last_active + idle - loop.time()), self._on_timer)

    def _fail(self, reason: str) -> None:
        """h2 found a protocol violation and queued its GOAWAY: send it and close."""
        logger.info("closing a gRPC connection: %s", reason)
        self._flush()
        self.goaway_sent = True
        self._cancel_streams()
        self._maybe_close()

    def _goaway(self, code: ErrorCodes, reason: str) -> None:
        if self.closed or self.transport is None or self.goaway_sent:
            return
        if code == ErrorCodes.NO_ERROR and self.streams:
            # h2 sends nothing after its GOAWAY, so a graceful one waits until the streams in flight are
            # answered; meanwhile new streams are refused
            self.draining = True
            return
        if code != ErrorCodes.NO_ERROR:
            logger.info("closing a gRPC connection: %s", reason)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.close_connection(code, reason.encode()[:200])
        self._flush()
        self.goaway_sent = True
        if code != ErrorCodes.NO_ERROR:
            self._cancel_streams()
        self._maybe_close()

    def _cancel_streams(self) -> None:
        for stream in self.streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()
        self.windows.clear()
        self.streaming.clear()

    def _maybe_close(self) -> None:
        """Close once no stream is in flight: half-close first, so what we wrote is read, not reset."""
        if self.streams or self.transport is None or self.closed:
            return
        self.closed = True  # nothing more is read or written; incoming bytes are discarded
        # Closing a socket with unread input makes the kernel send a reset, which can destroy our last
        # frames (the response, the GOAWAY) in the client's buffer; so send FIN and let the client close,
        # and abort only if it does not within a few seconds.
        try:
            self.transport.write_eof()
        except (OSError, NotImplementedError, RuntimeError):
            self._abort()  # the peer is already gone
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, self._abort)

    def _abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self) -> None:
        """Graceful: new streams are refused; GOAWAY and close once the calls in flight are answered."""
        self._goaway(ErrorCodes.NO_ERROR, "server shutting down")


_EVENTS: Dict[type, Callable[[Connection, Any], None]] = {
    h2.events.RequestReceived: Connection._request_received,
    h2.events.DataReceived: Connection._data_received,
    h2.events.StreamEnded: Connection._stream_ended,
    h2.events.StreamReset: Connection._stream_reset,
    h2.events.WindowUpdated: Connection._window_updated,
    h2.events.RemoteSettingsChanged: Connection._settings_changed,
    h2.events.ConnectionTerminated: Connection._connection_terminated,
}
