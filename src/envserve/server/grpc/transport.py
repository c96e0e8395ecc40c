"""Unary gRPC over cleartext HTTP/2: python-hyper's ``h2`` state machine with envserve's policies on top.

The HTTP/2 protocol itself (framing, HPACK, stream states, flow-control accounting, SETTINGS, PING,
CONTINUATION limits, header validation) is ``h2.connection.H2Connection``'s job, as in hypercorn and
httpcore. What this module owns is the gRPC layer and the server's policies:

- **gRPC framing**: unary calls, and bidirectional streams for the few services that need them (server
  reflection): the 5-byte message prefix, gzip requests, ``grpc-timeout`` deadlines, status and
  ``grpc-message`` trailers (percent-encoded and capped at :data:`MAX_STATUS_MESSAGE` characters),
  trailers-only errors;
- **calls are ordinary asyncio Tasks**, one per stream, cancelled when the stream is reset or the
  connection is lost (so a queued call whose client has gone never reaches the model);
- **memory per connection is bounded by the windows**: a stream's data is acknowledged (its window handed
  back) only while the connection buffers less than :data:`CONNECTION_BUFFER` bytes of unfinished
  messages; past that, only the oldest unfinished stream is acknowledged, so it always completes. The
  connection window is as large as all stream windows together plus one, so streams left waiting can
  never starve the oldest of connection window. No peer can make the server hold more than
  ``CONNECTION_BUFFER + max_concurrent_streams * stream_window + max_message`` bytes of requests;
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
import zlib
from collections import deque
from dataclasses import dataclass
from typing import (
    Any,
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Deque,
    Dict,
    List,
    Optional,
    Set,
    Tuple,
    Union,
)
from urllib.parse import quote

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

__all__ = [
    "GrpcError",
    "GrpcServer",
    "Handler",
    "Limits",
    "Metadata",
    "StatusCode",
    "StreamHandler",
    "parse_timeout",
]

from .hpack_memo import MemoDecoder, MemoEncoder

logger = logging.getLogger("envserve.grpc")

Metadata = List[Tuple[str, str]]
# A handler gets the request message's bytes, the call's metadata and its ``grpc-timeout`` in seconds (None:
# no deadline; the transport enforces it), returns the response message's bytes (or those bytes and
# metadata to send as trailers before ``grpc-status``), and raises GrpcError for a non-OK status.
Handler = Callable[[bytes, Metadata, Optional[float]], Awaitable[Union[bytes, Tuple[bytes, Metadata]]]]
# A bidirectional streaming handler gets the request messages as they arrive (the iterator ends when the
# client half-closes) and yields response messages; raising GrpcError ends the call with that status.
StreamHandler = Callable[[AsyncIterator[bytes], Metadata], AsyncGenerator[bytes, None]]


class StatusCode:
    """gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16

    NAMES = {
        0: "OK",
        1: "CANCELLED",
        2: "UNKNOWN",
        3: "INVALID_ARGUMENT",
        4: "DEADLINE_EXCEEDED",
        5: "NOT_FOUND",
        8: "RESOURCE_EXHAUSTED",
        12: "UNIMPLEMENTED",
        13: "INTERNAL",
        14: "UNAVAILABLE",
        16: "UNAUTHENTICATED",
    }


class GrpcError(Exception):
    """A call's non-OK status; ``metadata`` goes out with it (in the trailers-only response)."""

    def __init__(self, code: int, message: str, metadata: Optional[Metadata] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.metadata = metadata or []


#: Characters of a status message sent in ``grpc-message`` (before percent-encoding); the rest is cut.
MAX_STATUS_MESSAGE = 1024
#: Bytes of unfinished request messages one connection may buffer before it stops handing windows back.
CONNECTION_BUFFER = 4 << 20
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


_STATUS_UNTOUCHED = " !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_RESPONSE_HEADERS = [
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
    (b"grpc-accept-encoding", b"identity,gzip"),
]
_OK_TRAILERS = [(b"grpc-status", b"0")]


def parse_timeout(value: str) -> Optional[float]:
    """``grpc-timeout`` (at most 8 digits and a unit) in seconds; None when malformed."""
    if 2 <= len(value) <= 9 and value[:-1].isdigit() and value[-1] in _TIMEOUT_UNITS:
        return int(value[:-1]) * _TIMEOUT_UNITS[value[-1]]
    return None


def status_headers(code: int, message: str) -> List[Tuple[bytes, bytes]]:
    """``grpc-status`` and the percent-encoded, length-capped ``grpc-message``."""
    block = [(b"grpc-status", str(code).encode())]
    if message:
        if len(message) > MAX_STATUS_MESSAGE:
            message = message[: MAX_STATUS_MESSAGE - 3] + "..."
        block.append((b"grpc-message", quote(message, safe=_STATUS_UNTOUCHED).encode("ascii")))
    return block


def _start_task(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task[Any]:
    # Python 3.12's eager start runs the call up to its first suspension right away (an in-process model
    # answers without a trip through the event loop); it is an ordinary Task either way.
    if _EAGER is not None:
        return _EAGER(loop, coro)  # type: ignore[no-any-return]
    return loop.create_task(coro)


_EAGER = getattr(asyncio, "eager_task_factory", None) if sys.version_info >= (3, 12) else None


class _Stream:
    __slots__ = ("data", "deferred", "drained", "headers", "inbox", "pending", "sid", "started", "task")

    def __init__(self, sid: int, headers: List[Tuple[bytes, bytes]]) -> None:
        self.sid = sid
        self.headers = headers
        self.data = bytearray()
        self.deferred = 0  # flow-controlled bytes received but not yet handed back to the peer
        self.task: Optional[asyncio.Task[Any]] = None
        # unsent DATA and the trailers that follow it (None: a streaming call has more to send)
        self.pending: Optional[Tuple[memoryview, Optional[List[Tuple[bytes, bytes]]]]] = None
        # streaming calls only: request messages not yet taken by the handler (None ends them), whether
        # response headers went out, and a waiter for the peer to read what was written
        self.inbox: Optional[asyncio.Queue[Optional[bytes]]] = None
        self.started = False
        self.drained: Optional[asyncio.Event] = None


def _call_headers(stream: _Stream) -> Tuple[str, str, str, str, str, Metadata]:
    """(method, path, content-type, grpc-encoding, grpc-timeout, metadata) of a call's request headers."""
    method = path = content_type = encoding = timeout = ""
    metadata: Metadata = []
    for raw_name, raw_value in stream.headers:
        name = raw_name.decode("latin-1")
        value = raw_value.decode("latin-1")
        if name[0] == ":":
            if name == ":path":
                path = value
            elif name == ":method":
                method = value
        elif name == "content-type":
            content_type = value
        elif name == "grpc-encoding":
            encoding = value
        elif name == "grpc-timeout":
            timeout = value
        elif name != "te":
            metadata.append((name, value))
    return method, path, content_type, encoding, timeout, metadata


def _check_call(method: str, content_type: str) -> None:
    if method != "POST":
        raise GrpcError(StatusCode.UNIMPLEMENTED, "gRPC calls are POST requests, got %r" % method)
    if not content_type.startswith("application/grpc"):
        raise GrpcError(StatusCode.INVALID_ARGUMENT, "content-type must be application/grpc")


def _deadline(timeout: str) -> Optional[float]:
    if not timeout:
        return None
    seconds = parse_timeout(timeout)
    if seconds is None:
        raise GrpcError(StatusCode.INVALID_ARGUMENT, "malformed grpc-timeout %r" % timeout)
    return seconds


class _Connection(asyncio.Protocol):
    def __init__(self, server: GrpcServer) -> None:
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
        self.streams: Dict[int, _Stream] = {}  # open streams: receiving, running or sending
        self.receiving: Dict[int, _Stream] = {}  # streams whose request message is not complete yet
        self.streaming: Dict[int, _Stream] = {}  # streaming calls whose client has not half-closed
        self.buffered = 0  # bytes held in unfinished request messages
        self.stalled: Deque[_Stream] = deque()  # streams with deferred acknowledgements, oldest first
        self.resets = float(RESET_BUDGET)
        self.reset_clock = 0.0
        self.preface_seen = False
        self.goaway_sent = False
        self.draining = False
        self.closed = False
        self.write_paused = False
        self.last_active = 0.0
        self._timer: Optional[asyncio.TimerHandle] = None

    # asyncio callbacks -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
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
        for stream in self.streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()
        self.receiving.clear()
        self.streaming.clear()
        self.stalled.clear()
        self.server.connections.discard(self)
        self.server._connection_closed()

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
        stream = _Stream(sid, event.headers)
        self.streams[sid] = stream
        if self.server.stream_handlers and self._start_streaming(stream):
            if event.stream_ended is not None:
                self._streaming_ended(stream)
            return
        self.receiving[sid] = stream
        if event.stream_ended is not None:
            self._start(stream)

    def _data_received(self, event: h2.events.DataReceived) -> None:
        sid = event.stream_id
        stream = self.receiving.get(sid)
        size = event.flow_controlled_length or 0
        if stream is None and sid in self.streaming:
            self._streaming_data(self.streaming[sid], event.data or b"", size, event.stream_ended is not None)
            return
        if stream is None:  # trailers-only responses are already on their way; drop late data
            if size:
                self.conn.acknowledge_received_data(size, sid)
            return
        data = event.data or b""
        stream.data += data
        self.buffered += len(data)
        if len(stream.data) > self.limits.max_message + 5:
            self._finish_receiving(stream)
            self._ack(stream, size)
            self._respond_error(
                stream,
                StatusCode.RESOURCE_EXHAUSTED,
                "request message larger than the server's limit of %d bytes" % self.limits.max_message,
            )
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.reset_stream(sid, ErrorCodes.CANCEL)
            self._forget(stream)
            return
        oldest = next(iter(self.receiving))  # dicts keep insertion order: stream ids only grow
        if self.buffered <= CONNECTION_BUFFER or sid == oldest:
            self._ack(stream, size)
        else:
            if not stream.deferred:
                self.stalled.append(stream)
            stream.deferred += size
        if event.stream_ended is not None:
            self._start(stream)

    def _stream_ended(self, event: h2.events.StreamEnded) -> None:
        stream = self.receiving.get(event.stream_id)
        if stream is not None:
            self._start(stream)
        elif event.stream_id in self.streaming:
            self._streaming_ended(self.streaming[event.stream_id])

    def _stream_reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:  # h2 has closed it: its call must not answer on it, whatever follows
            self._forget(stream)
        if event.remote_reset:
            now = asyncio.get_running_loop().time()
            self.resets = min(float(RESET_BUDGET), self.resets + (now - self.reset_clock) * RESET_REFILL)
            self.reset_clock = now
            self.resets -= 1
            if self.resets < 0:
                self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, "too many stream resets")

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

    # flow control ------------------------------------------------------------------------------------
    def _ack(self, stream: _Stream, size: int) -> None:
        if size:
            self.conn.acknowledge_received_data(size, stream.sid)

    def _finish_receiving(self, stream: _Stream) -> None:
        """The stream's message is complete (or abandoned): its bytes no longer count, stalled peers move."""
        if self.receiving.pop(stream.sid, None) is None:
            return
        self.buffered -= len(stream.data)
        if stream.deferred:
            self._ack(stream, stream.deferred)
            stream.deferred = 0
        stalled = self.stalled
        while stalled:
            first = stalled[0]
            if first.sid in self.receiving and first.deferred:
                oldest = next(iter(self.receiving))
                if self.buffered > CONNECTION_BUFFER and first.sid != oldest:
                    break
                self._ack(first, first.deferred)
                first.deferred = 0
            stalled.popleft()

    def _forget(self, stream: _Stream) -> None:
        self._finish_receiving(stream)
        self.streaming.pop(stream.sid, None)
        self.streams.pop(stream.sid, None)
        if stream.task is not None:
            stream.task.cancel()
            stream.task = None
        if not self.streams:
            self._went_idle()

    # calls -------------------------------------------------------------------------------------------
    def _start(self, stream: _Stream) -> None:
        self._finish_receiving(stream)
        loop = asyncio.get_running_loop()
        self.last_active = loop.time()
        task = _start_task(loop, self._call(stream))
        if not task.done():
            stream.task = task

    async def _call(self, stream: _Stream) -> None:
        method, path, content_type, encoding, timeout, metadata = _call_headers(stream)
        data, stream.data = stream.data, bytearray()
        try:
            _check_call(method, content_type)
            handler = self.server.handlers.get(path)
            if handler is None:
                raise GrpcError(StatusCode.UNIMPLEMENTED, "unknown method %s" % path)
            message = self.server.message(data, encoding)
            del data
            seconds = _deadline(timeout)
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
    def _start_streaming(self, stream: _Stream) -> bool:
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

    def _streaming_data(self, stream: _Stream, data: bytes, size: int, ended: bool) -> None:
        """Cut complete messages out of the stream's bytes for the handler. The peer's window is handed
        back at once while the handler keeps up, and only as it takes messages when it does not, so a
        client that sends faster than the handler reads holds at most a window of messages here."""
        assert stream.inbox is not None
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
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.conn.reset_stream(stream.sid, ErrorCodes.CANCEL)
                self._forget(stream)
                return
            if len(buffer) < 5 + length:
                break
            stream.inbox.put_nowait(bytes(buffer[: 5 + length]))
            del buffer[: 5 + length]
        if stream.inbox.qsize() <= 1 and stream.deferred:
            self._ack(stream, stream.deferred)
            stream.deferred = 0
        if ended:
            self._streaming_ended(stream)

    def _streaming_ended(self, stream: _Stream) -> None:
        if self.streaming.pop(stream.sid, None) is not None and stream.inbox is not None:
            if stream.data:
                stream.inbox.put_nowait(bytes(stream.data))  # a truncated message: the handler's error
                stream.data = bytearray()
            stream.inbox.put_nowait(None)

    async def _requests(self, stream: _Stream, encoding: str) -> AsyncGenerator[bytes, None]:
        inbox = stream.inbox
        assert inbox is not None
        while True:
            framed = await inbox.get()
            if inbox.empty() and stream.deferred and stream.sid in self.streams and not self.closed:
                self._ack(stream, stream.deferred)  # the handler has caught up: let the peer send more
                stream.deferred = 0
                self._flush()
            if framed is None:
                return
            yield self.server.message(bytearray(framed), encoding)

    async def _call_streaming(self, stream: _Stream, handler: StreamHandler) -> None:
        method, path, content_type, encoding, timeout, metadata = _call_headers(stream)

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
            _check_call(method, content_type)
            seconds = _deadline(timeout)
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

    async def _send_message(self, stream: _Stream, reply: bytes) -> None:
        if self.closed or stream.sid not in self.streams:
            raise asyncio.CancelledError()
        if not stream.started:
            stream.started = True
            self.conn.send_headers(stream.sid, _RESPONSE_HEADERS)
        framed = struct.pack(">BI", 0, len(reply)) + reply
        if stream.pending is not None:
            framed = stream.pending[0].tobytes() + framed
        stream.pending = (memoryview(framed), None)
        self._send_stream(stream)
        self._flush()
        while stream.pending is not None:  # the peer is not reading: take no more requests until it does
            assert stream.drained is not None
            stream.drained.clear()
            await stream.drained.wait()
            if self.closed or stream.sid not in self.streams:
                raise asyncio.CancelledError()

    def _end_streaming(self, stream: _Stream, code: int, message: str) -> None:
        self.streaming.pop(stream.sid, None)
        if not stream.started:
            self._respond_error(stream, code, message)
            return
        if self.closed or stream.sid not in self.streams:
            return
        trailers = _OK_TRAILERS if code == StatusCode.OK else status_headers(code, message)
        payload = stream.pending[0] if stream.pending is not None else memoryview(b"")
        stream.pending = (payload, trailers)
        self._send_stream(stream)
        self._flush()

    # responses ---------------------------------------------------------------------------------------
    def _respond(self, stream: _Stream, reply: bytes, trailing: Optional[Metadata] = None) -> None:
        if self.closed or stream.sid not in self.streams:
            return
        self.conn.send_headers(stream.sid, _RESPONSE_HEADERS)
        trailers = [(k.encode("ascii"), v.encode("ascii")) for k, v in trailing or ()] + _OK_TRAILERS
        stream.pending = (memoryview(struct.pack(">BI", 0, len(reply)) + reply), trailers)
        self._send_stream(stream)
        self._flush()

    def _respond_error(
        self, stream: _Stream, code: int, message: str, metadata: Optional[Metadata] = None
    ) -> None:
        if self.closed or stream.sid not in self.streams:
            return
        # trailers-only: one HEADERS block ending the stream (h2 splits it to the peer's frame size)
        extra = [(k.encode("ascii"), v.encode("ascii")) for k, v in metadata or ()]
        self.conn.send_headers(
            stream.sid,
            _RESPONSE_HEADERS[:2] + extra + status_headers(code, message),
            end_stream=True,
        )
        self._stream_done(stream)
        self._flush()

    def _send_stream(self, stream: _Stream) -> None:
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

    def _stream_done(self, stream: _Stream) -> None:
        self.streams.pop(stream.sid, None)
        stream.task = None
        if not self.streams:
            self._went_idle()

    def _flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self.closed:
            self.transport.write(out)

    # lifetime ----------------------------------------------------------------------------------------
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
        self.receiving.clear()
        self.streaming.clear()
        self.stalled.clear()

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


_EVENTS: Dict[type, Callable[[_Connection, Any], None]] = {
    h2.events.RequestReceived: _Connection._request_received,
    h2.events.DataReceived: _Connection._data_received,
    h2.events.StreamEnded: _Connection._stream_ended,
    h2.events.StreamReset: _Connection._stream_reset,
    h2.events.WindowUpdated: _Connection._window_updated,
    h2.events.RemoteSettingsChanged: _Connection._settings_changed,
    h2.events.ConnectionTerminated: _Connection._connection_terminated,
}


class GrpcServer:
    """Serve gRPC methods (``/package.Service/Method`` -> Handler, or StreamHandler for bidirectional
    streaming ones) over cleartext HTTP/2."""

    def __init__(
        self,
        handlers: Dict[str, Handler],
        limits: Limits,
        stream_handlers: Optional[Dict[str, StreamHandler]] = None,
    ) -> None:
        self.handlers = handlers
        self.stream_handlers = stream_handlers or {}
        self.limits = limits
        self.connections: Set[_Connection] = set()
        self._server: Optional[asyncio.AbstractServer] = None
        self._idle = asyncio.Event()

    def message(self, data: bytearray, encoding: str) -> bytes:
        """One request message: exactly one length-prefixed (maybe gzipped) message."""
        limit = self.limits.max_message
        if len(data) < 5:
            raise GrpcError(StatusCode.INVALID_ARGUMENT, "request has no gRPC message")
        compressed, length = struct.unpack_from(">BI", data)
        if length != len(data) - 5:
            raise GrpcError(
                StatusCode.INVALID_ARGUMENT,
                "unary call must carry exactly one message (length prefix %d, %d bytes sent)"
                % (length, len(data) - 5),
            )
        message = bytes(memoryview(data)[5:])
        if not compressed:
            return message
        if encoding != "gzip":
            raise GrpcError(
                StatusCode.UNIMPLEMENTED, "message compressed with %r; this server accepts gzip" % encoding
            )
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = inflater.decompress(message, limit + 1)
        except zlib.error as exc:
            raise GrpcError(StatusCode.INTERNAL, "cannot decompress the request: %s" % exc) from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise GrpcError(StatusCode.RESOURCE_EXHAUSTED, "decompressed request exceeds the server's limit")
        return out

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port, reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    def _connection_closed(self) -> None:
        if not self.connections:
            self._idle.set()

    async def stop(self, grace: Optional[float]) -> None:
        """Stop accepting, let in-flight calls finish (up to ``grace`` seconds), then close."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        if self.connections:
            self._idle.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        calls = [s.task for conn in self.connections for s in conn.streams.values() if s.task is not None]
        for conn in list(self.connections):
            conn._abort()
        await asyncio.sleep(0)  # let the aborted transports close (which cancels their calls)
        for task in calls:
            task.cancel()
        if calls:  # the cancelled calls unwind (their generators closed) before the loop may stop
            await asyncio.wait(calls, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
