"""A small HTTP/2 server for unary gRPC calls, on asyncio (uvloop when installed).

Why not grpcio's server: grpc.aio spends ~120 µs of Python/C-core hand-offs on every unary call (measured,
bench/RESULTS.md), three times what uvicorn+httptools spends on an HTTP/1.1 request. gRPC inference calls
are unary, so a server needs only a narrow slice of HTTP/2 (RFC 9113): the connection preface, SETTINGS,
HEADERS/CONTINUATION with HPACK (RFC 7541, decoded by the ``hpack`` package), DATA with flow control in both
directions, PING, RST_STREAM, WINDOW_UPDATE and GOAWAY. That slice is implemented here as one
``asyncio.Protocol`` per connection: frames are parsed from the receive buffer without copies, a complete
request (END_STREAM) is dispatched to its handler in a task, and the whole response (HEADERS, DATA, trailers)
leaves in one write.

Responses are HPACK-encoded statelessly (static-table references and literals "without indexing"), so the
peer's dynamic table is never touched and no encoder state is kept. Incoming header blocks made only of
indexed fields (what clients send after their first request) are decoded once and memoised until the
decoder's dynamic table changes.

Limits that protect the server: concurrent streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS, excess
streams refused), header list size, header block size (CONTINUATION floods), message size (the server's
max request size), and reading pauses while the peer does not drain our writes. Protocol violations close the
connection with GOAWAY and the RFC's error code; a bad request fails only its own stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import zlib
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, Tuple
from urllib.parse import quote

from hpack import Decoder
from hpack.exceptions import HPACKError

__all__ = ["GrpcError", "H2GrpcServer", "Handler", "Metadata", "StatusCode", "parse_timeout"]

logger = logging.getLogger("envserve.grpc")

Metadata = List[Tuple[str, str]]
# A handler gets the request message's bytes and the call's metadata, returns the response message's bytes,
# and raises GrpcError for a non-OK status.
Handler = Callable[[bytes, Metadata], Awaitable[bytes]]


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
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# Frame types and flags (RFC 9113 section 6)
(DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION) = (
    range(10)
)
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Error codes (section 7)
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65535
MAX_WINDOW = 2**31 - 1
MAX_FRAME_SIZE = 16384  # what we accept (the protocol's default; clients split larger messages)
STREAM_WINDOW = 1 << 20  # what we let a client send per stream before it must wait for a WINDOW_UPDATE
CONNECTION_WINDOW = 1 << 24
MAX_CONCURRENT_STREAMS = 128
MAX_HEADER_LIST_SIZE = 16384
MAX_HEADER_BLOCK = 65536
PREFACE_TIMEOUT = 10.0  # seconds a new connection has to send the HTTP/2 connection preface
LINGER_SECONDS = 2.0  # after our FIN, how long a client may take to close before the socket is aborted
MAX_PENDING_CONTROL = 1000  # PING/SETTINGS answered while the peer is not reading: then we stop reading

_unpack_head = struct.Struct(">HBBBI").unpack_from  # length hi16, length lo8, type, flags, stream id


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">HBBBI", n >> 8, n & 0xFF, kind, flags, stream_id & 0x7FFFFFFF) + payload


def _int_literal(value: int, prefix_bits: int, first: int) -> bytes:
    """HPACK integer (RFC 7541 5.1) with ``first`` holding the pattern bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes, name_index: int = 0) -> bytes:
    """A header field as a literal without indexing: never changes the peer's dynamic table."""
    head = _int_literal(name_index, 4, 0x00) if name_index else b"\x00" + _int_literal(len(name), 7, 0) + name
    return head + _int_literal(len(value), 7, 0) + value


_STATUS_200 = b"\x88"  # static table entry 8, ":status: 200"
_CONTENT_TYPE = _literal(b"content-type", b"application/grpc", name_index=31)
_RESPONSE_HEADERS = _STATUS_200 + _CONTENT_TYPE + _literal(b"grpc-accept-encoding", b"identity,gzip")
_OK_TRAILERS = _literal(b"grpc-status", b"0")


def _status_block(code: int, message: str) -> bytes:
    block = _literal(b"grpc-status", str(code).encode())
    if message:
        # The spec's percent-encoding: everything outside printable ASCII, and '%' itself.
        encoded = quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
        block += _literal(b"grpc-message", encoded.encode("ascii"))
    return block


_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_timeout(value: str) -> Optional[float]:
    """``grpc-timeout`` (at most 8 digits and a unit) in seconds; None when malformed."""
    if 2 <= len(value) <= 9 and value[:-1].isdigit() and value[-1] in _TIMEOUT_UNITS:
        return int(value[:-1]) * _TIMEOUT_UNITS[value[-1]]
    return None


class _Stream:
    __slots__ = (
        "closed",
        "data",
        "headers",
        "pending",
        "recv_unacked",
        "send_window",
        "sid",
        "started",
        "task",
    )

    def __init__(self, sid: int, send_window: int) -> None:
        self.sid = sid
        self.headers: Metadata = []
        self.data = bytearray()
        self.send_window = send_window
        self.recv_unacked = 0
        self.started = False
        # What to cancel when the stream is reset: the future the call waits on, then the task running it.
        self.task: Optional[asyncio.Future[Any]] = None
        self.pending: Optional[Tuple[memoryview, bytes]] = None  # (DATA payload not yet sent, trailer block)
        self.closed = False

    def cancel(self) -> None:
        """Nothing more is sent on this stream; a call still running for it is cancelled."""
        self.closed = True
        if self.task is not None:
            self.task.cancel()


class _Connection(asyncio.Protocol):
    def __init__(self, server: H2GrpcServer) -> None:
        self.server = server
        self.transport: Optional[asyncio.Transport] = None
        self.buffer = bytearray()
        self.preface_done = False
        self.streams: Dict[int, _Stream] = {}
        self.last_stream_id = 0
        self.send_window = DEFAULT_WINDOW
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = 16384
        self.recv_unacked = 0
        self.decoder = Decoder(max_header_list_size=MAX_HEADER_LIST_SIZE)
        self.memo: Dict[bytes, Metadata] = {}
        self.memo_state: Tuple[int, int, object] = (-1, -1, None)
        # An unfinished header block: (stream id, flags of its HEADERS frame, fragments so far)
        self.continuation: Optional[Tuple[int, int, bytearray]] = None
        self.goaway_sent = False
        self.write_paused = False
        self.control_frames = 0
        self.closed = False
        self._linger: Optional[asyncio.TimerHandle] = None

    # asyncio callbacks -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        transport.set_write_buffer_limits(high=1 << 20)  # type: ignore[attr-defined]
        # A connection that never completes the HTTP/2 preface holds a socket for nothing: drop it.
        self._linger = asyncio.get_running_loop().call_later(PREFACE_TIMEOUT, self._preface_timeout)
        settings = struct.pack(
            ">HIHIHIHI",
            0x3,  # MAX_CONCURRENT_STREAMS
            MAX_CONCURRENT_STREAMS,
            0x4,  # INITIAL_WINDOW_SIZE
            STREAM_WINDOW,
            0x6,  # MAX_HEADER_LIST_SIZE
            MAX_HEADER_LIST_SIZE,
            0x2,  # ENABLE_PUSH
            0,
        )
        transport.write(  # type: ignore[attr-defined]
            _frame(SETTINGS, 0, 0, settings)
            + _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", CONNECTION_WINDOW - DEFAULT_WINDOW))
        )

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        if self._linger is not None:
            self._linger.cancel()
        self.server.connections.discard(self)
        for stream in self.streams.values():
            stream.cancel()
        self.streams.clear()
        self.server._connection_closed()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.control_frames = 0
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.buffer:
            self.buffer += data
            data = bytes(self.buffer)
            self.buffer.clear()
        if not self.preface_done:
            if len(data) < 24:
                if not PREFACE.startswith(data):
                    self._goaway(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    return
                self.buffer += data
                return
            if data[:24] != PREFACE:
                self._goaway(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            data = data[24:]
            self.preface_done = True
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
        # Frames are parsed from an immutable bytes object, so payload views may outlive this call.
        view = memoryview(data)
        pos = 0
        end = len(data)
        try:
            while end - pos >= 9 and not self.closed:
                hi, lo, kind, flags, sid = _unpack_head(data, pos)
                length = (hi << 8) | lo
                if length > MAX_FRAME_SIZE:
                    raise _ConnectionError(FRAME_SIZE_ERROR, "frame of %d bytes exceeds the maximum" % length)
                if end - pos - 9 < length:
                    break
                self._frame_received(kind, flags, sid & 0x7FFFFFFF, view[pos + 9 : pos + 9 + length])
                pos += 9 + length
        except _ConnectionError as exc:
            self._goaway(exc.code, exc.reason)
            return
        if pos < end and not self.closed:
            self.buffer += view[pos:]

    # frames ----------------------------------------------------------------------------------------
    def _frame_received(self, kind: int, flags: int, sid: int, payload: memoryview) -> None:
        if self.continuation is not None and kind != CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == DATA:
            self._data(flags, sid, payload)
        elif kind == HEADERS:
            self._headers(flags, sid, payload)
        elif kind == CONTINUATION:
            if self.continuation is None or self.continuation[0] != sid:
                raise _ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION")
            fragments = self.continuation[2]
            fragments += payload
            if len(fragments) > MAX_HEADER_BLOCK:
                raise _ConnectionError(ENHANCE_YOUR_CALM, "header block too large")
            if flags & END_HEADERS:
                first_flags = self.continuation[1]
                self.continuation = None
                self._header_block(first_flags, sid, bytes(fragments))
        elif kind == SETTINGS:
            self._settings(flags, sid, payload)
        elif kind == WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == PING:
            if sid != 0 or len(payload) != 8:
                raise _ConnectionError(PROTOCOL_ERROR if sid else FRAME_SIZE_ERROR, "bad PING")
            if not flags & ACK:
                self._control(_frame(PING, ACK, 0, bytes(payload)))
        elif kind == RST_STREAM:
            if sid == 0 or len(payload) != 4:
                raise _ConnectionError(PROTOCOL_ERROR, "bad RST_STREAM")
            self._drop(sid)
        elif kind == PRIORITY:
            if sid == 0 or len(payload) != 5:
                raise _ConnectionError(PROTOCOL_ERROR, "bad PRIORITY")
        elif kind == GOAWAY:
            self.goaway_sent = True  # the peer is leaving: no new streams; close when in-flight ones end
            self._maybe_close()
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "clients must not push")
        # unknown frame types are ignored (section 4.1)

    def _control(self, frame: bytes) -> None:
        self.control_frames += 1
        if self.write_paused and self.control_frames > MAX_PENDING_CONTROL:
            raise _ConnectionError(ENHANCE_YOUR_CALM, "too many control frames while not reading")
        assert self.transport is not None
        self.transport.write(frame)

    def _settings(self, flags: int, sid: int, payload: memoryview) -> None:
        if sid != 0:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if len(payload):
                raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        for offset in range(0, len(payload), 6):
            ident, value = struct.unpack_from(">HI", payload, offset)
            if ident == 0x4:  # INITIAL_WINDOW_SIZE: applies to every open stream (section 6.9.2)
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif ident == 0x5:  # MAX_FRAME_SIZE
                if not 16384 <= value <= 16777215:
                    raise _ConnectionError(PROTOCOL_ERROR, "invalid MAX_FRAME_SIZE")
                self.peer_max_frame = value
            elif ident == 0x2 and value > 1:
                raise _ConnectionError(PROTOCOL_ERROR, "invalid ENABLE_PUSH")
        self._control(_frame(SETTINGS, ACK, 0))
        self._flush_pending()

    def _window_update(self, sid: int, payload: memoryview) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE")
        increment = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if increment == 0:
                raise _ConnectionError(PROTOCOL_ERROR, "zero WINDOW_UPDATE")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window overflow")
        else:
            stream = self.streams.get(sid)
            if stream is None:
                return
            if increment == 0:
                self._reset(sid, PROTOCOL_ERROR)
                return
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                self._reset(sid, FLOW_CONTROL_ERROR)
                return
        self._flush_pending()

    def _headers(self, flags: int, sid: int, payload: memoryview) -> None:
        if sid == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        start, stop = 0, len(payload)
        if flags & PADDED:
            if stop < 1 or payload[0] >= stop:
                raise _ConnectionError(PROTOCOL_ERROR, "bad padding")
            stop -= payload[0]
            start = 1
        if flags & PRIORITY_FLAG:
            start += 5
            if start > stop:
                raise _ConnectionError(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
        block = payload[start:stop]
        if flags & END_HEADERS:
            self._header_block(flags, sid, bytes(block))
        else:
            self.continuation = (sid, flags, bytearray(block))

    def _table_state(self) -> Tuple[int, int, object]:
        table = self.decoder.header_table
        entries = table.dynamic_entries
        # The newest entry itself (not its id): holding it keeps the identity check exact.
        return (table.maxsize, len(entries), entries[0] if entries else None)

    def _decode(self, block: bytes) -> Metadata:
        # A client repeating a call sends the same header block, made of references to the dynamic table
        # and literals "without indexing". As long as the table is unchanged, the same bytes mean the same
        # headers, so decoded blocks are memoised until a decode changes the table (an insertion always puts
        # a new entry object first; a resize changes maxsize).
        state = self._table_state()
        memo_state = self.memo_state
        if state[0] == memo_state[0] and state[1] == memo_state[1] and state[2] is memo_state[2]:
            cached = self.memo.get(block)
            if cached is not None:
                return cached
        else:
            self.memo.clear()
            self.memo_state = state
        try:
            headers = [(str(k), str(v)) for k, v in self.decoder.decode(block)]
        except HPACKError as exc:
            raise _ConnectionError(COMPRESSION_ERROR, "HPACK: %s" % exc) from None
        after = self._table_state()
        if after[0] == state[0] and after[1] == state[1] and after[2] is state[2]:
            if len(self.memo) < 64:
                self.memo[block] = headers
        else:
            self.memo.clear()
            self.memo_state = after
        return headers

    def _header_block(self, flags: int, sid: int, block: bytes) -> None:
        headers = self._decode(block)  # always decode: the HPACK state is shared by the connection
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client
            if not flags & END_STREAM:
                raise _ConnectionError(PROTOCOL_ERROR, "trailers without END_STREAM")
            self._request_complete(stream)
            return
        if sid % 2 == 0 or sid <= self.last_stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "invalid stream id %d" % sid)
        self.last_stream_id = sid
        if self.goaway_sent:
            return  # after GOAWAY new streams are ignored (the peer knows the last stream id)
        if len(self.streams) >= MAX_CONCURRENT_STREAMS:
            self._reset(sid, REFUSED_STREAM)
            return
        stream = _Stream(sid, self.peer_initial_window)
        stream.headers = headers
        self.streams[sid] = stream
        if flags & END_STREAM:
            self._request_complete(stream)

    def _data(self, flags: int, sid: int, payload: memoryview) -> None:
        size = len(payload)
        self.recv_unacked += size
        if self.recv_unacked >= CONNECTION_WINDOW // 2:
            self._control(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.recv_unacked)))
            self.recv_unacked = 0
        stream = self.streams.get(sid)
        if sid == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        if stream is None or stream.started:
            if sid > self.last_stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, "DATA on an idle stream")
            self._reset(sid, STREAM_CLOSED)
            return
        start, stop = 0, size
        if flags & PADDED:
            if size < 1 or payload[0] >= size:
                raise _ConnectionError(PROTOCOL_ERROR, "bad padding")
            start, stop = 1, size - payload[0]
        stream.data += payload[start:stop]
        if len(stream.data) > self.server.max_message + 5:
            self.streams.pop(sid, None)
            self._respond_error(
                stream,
                StatusCode.RESOURCE_EXHAUSTED,
                "request message larger than the server's limit of %d bytes" % self.server.max_message,
            )
            self._reset(sid, CANCEL)
            return
        if flags & END_STREAM:
            self._request_complete(stream)
        else:
            stream.recv_unacked += size
            if stream.recv_unacked >= STREAM_WINDOW // 2:
                self._control(_frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", stream.recv_unacked)))
                stream.recv_unacked = 0

    def _drop(self, sid: int) -> None:
        stream = self.streams.pop(sid, None)
        if stream is not None:
            stream.cancel()

    def _reset(self, sid: int, code: int) -> None:
        self._drop(sid)
        self._control(_frame(RST_STREAM, 0, sid, struct.pack(">I", code)))

    # requests ----------------------------------------------------------------------------------------
    def _request_complete(self, stream: _Stream) -> None:
        if stream.started:
            raise _ConnectionError(PROTOCOL_ERROR, "stream %d already complete" % stream.sid)
        stream.started = True
        # Run the call eagerly, right here: an in-process model answers without ever suspending, and then
        # no task is created or scheduled (what Python 3.12's eager task factory does). A call that does
        # suspend is handed to a task once the future it waits on is done.
        coro = self._run(stream)
        try:
            waited = coro.send(None)
        except StopIteration:
            return
        self._hand_over(stream, coro, waited)

    def _hand_over(self, stream: _Stream, coro: Any, waited: Any) -> None:
        if getattr(waited, "_asyncio_future_blocking", None):
            waited._asyncio_future_blocking = False
            stream.task = waited
            waited.add_done_callback(lambda _: self._resume(stream, coro))
        else:  # a bare yield (asyncio.sleep(0)): resume on the next loop iteration
            self._resume(stream, coro)

    def _resume(self, stream: _Stream, coro: Any) -> None:
        # The awaited future is done, so the coroutine's next send() returns (or raises) its result.
        stream.task = asyncio.ensure_future(coro)

    async def _run(self, stream: _Stream) -> None:
        method = path = content_type = encoding = timeout = ""
        metadata: Metadata = []
        for name, value in stream.headers:
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
            else:
                metadata.append((name, value))
        try:
            if method != "POST":
                raise GrpcError(StatusCode.UNIMPLEMENTED, "gRPC calls are POST requests, got %r" % method)
            if not content_type.startswith("application/grpc"):
                raise GrpcError(StatusCode.INVALID_ARGUMENT, "content-type must be application/grpc")
            handler = self.server.handlers.get(path)
            if handler is None:
                raise GrpcError(StatusCode.UNIMPLEMENTED, "unknown method %s" % path)
            message = self._message(stream.data, encoding)
            if timeout:
                seconds = parse_timeout(timeout)
                if seconds is None:
                    raise GrpcError(StatusCode.INVALID_ARGUMENT, "malformed grpc-timeout %r" % timeout)
                try:
                    reply = await asyncio.wait_for(handler(message, metadata), seconds)
                except asyncio.TimeoutError:
                    raise GrpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded") from None
            else:
                reply = await handler(message, metadata)
        except GrpcError as exc:
            self._respond_error(stream, exc.code, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("unexpected error in gRPC call %s", path)
            self._respond_error(stream, StatusCode.INTERNAL, "internal server error; see the server log")
        else:
            self._respond(stream, reply)

    def _message(self, data: bytearray, encoding: str) -> bytes:
        if len(data) < 5:
            raise GrpcError(StatusCode.INVALID_ARGUMENT, "request has no gRPC message")
        compressed, length = struct.unpack_from(">BI", data)
        if length != len(data) - 5:
            raise GrpcError(
                StatusCode.INVALID_ARGUMENT,
                "unary call must carry exactly one message (length prefix %d, %d bytes sent)"
                % (length, len(data) - 5),
            )
        if length > self.server.max_message:
            raise GrpcError(StatusCode.RESOURCE_EXHAUSTED, "request message larger than the server's limit")
        message = bytes(data[5:])
        if not compressed:
            return message
        if encoding != "gzip":
            raise GrpcError(
                StatusCode.UNIMPLEMENTED, "message compressed with %r; this server accepts gzip" % encoding
            )
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = inflater.decompress(message, self.server.max_message + 1)
        except zlib.error as exc:
            raise GrpcError(StatusCode.INTERNAL, "cannot decompress the request: %s" % exc) from None
        if len(out) > self.server.max_message or inflater.unconsumed_tail:
            raise GrpcError(StatusCode.RESOURCE_EXHAUSTED, "decompressed request exceeds the server's limit")
        return out

    def _respond(self, stream: _Stream, reply: bytes) -> None:
        payload = struct.pack(">BI", 0, len(reply)) + reply
        self._send(stream, _RESPONSE_HEADERS, payload, _OK_TRAILERS)

    def _respond_error(self, stream: _Stream, code: int, message: str) -> None:
        # trailers-only response: one HEADERS frame ending the stream
        self._send(stream, _STATUS_200 + _CONTENT_TYPE + _status_block(code, message), b"", b"")

    def _send(self, stream: _Stream, headers: bytes, payload: bytes, trailers: bytes) -> None:
        if self.closed or stream.closed:
            return
        sid = stream.sid
        if not payload and not trailers:
            self.transport.write(_frame(HEADERS, END_HEADERS | END_STREAM, sid, headers))  # type: ignore[union-attr]
            self._stream_done(stream)
        else:
            out = [_frame(HEADERS, END_HEADERS, sid, headers)]
            stream.pending = (memoryview(payload), trailers)
            self._write_data(stream, out)
            self.transport.write(b"".join(out))  # type: ignore[union-attr]
        if self.goaway_sent:
            self._maybe_close()

    def _write_data(self, stream: _Stream, out: List[bytes]) -> None:
        """Append as much of the stream's pending DATA as the windows allow, then its trailers."""
        assert stream.pending is not None
        payload, trailers = stream.pending
        max_frame = self.peer_max_frame
        while payload:
            allowed = min(len(payload), self.send_window, stream.send_window, max_frame)
            if allowed <= 0:
                stream.pending = (payload, trailers)
                return
            out.append(_frame(DATA, 0, stream.sid, bytes(payload[:allowed])))
            payload = payload[allowed:]
            self.send_window -= allowed
            stream.send_window -= allowed
        out.append(_frame(HEADERS, END_HEADERS | END_STREAM, stream.sid, trailers))
        stream.pending = None
        self._stream_done(stream)

    def _flush_pending(self) -> None:
        out: List[bytes] = []
        for stream in list(self.streams.values()):
            if stream.pending is not None:
                self._write_data(stream, out)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
            if self.goaway_sent:
                self._maybe_close()

    def _stream_done(self, stream: _Stream) -> None:
        stream.closed = True
        self.streams.pop(stream.sid, None)

    # shutdown ----------------------------------------------------------------------------------------
    def _goaway(self, code: int, reason: str) -> None:
        if self.closed or self.transport is None:
            return
        if code != NO_ERROR:
            logger.info("closing a gRPC connection: %s", reason)
        self.transport.write(
            _frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream_id, code) + reason.encode()[:200])
        )
        self.goaway_sent = True
        if code != NO_ERROR:
            for stream in self.streams.values():
                stream.cancel()
            self.streams.clear()
        self._maybe_close()

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
        else:
            if self._linger is not None:
                self._linger.cancel()
            self._linger = asyncio.get_running_loop().call_later(LINGER_SECONDS, self._abort)

    def _preface_timeout(self) -> None:
        if not self.preface_done:
            self._abort()

    def _abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self) -> None:
        """Graceful: tell the client no new streams will be accepted; close once in-flight calls end."""
        if not self.goaway_sent:
            self._goaway(NO_ERROR, "server shutting down")


class _ConnectionError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class H2GrpcServer:
    """Serve unary gRPC methods (``/package.Service/Method`` -> Handler) over cleartext HTTP/2."""

    def __init__(self, handlers: Dict[str, Handler], max_message: int) -> None:
        self.handlers = handlers
        self.max_message = max_message
        self.connections: Set[_Connection] = set()
        self._server: Optional[asyncio.AbstractServer] = None
        self._idle = asyncio.Event()

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
        for conn in list(self.connections):
            conn._abort()
        if self._server is not None:
            await self._server.wait_closed()
