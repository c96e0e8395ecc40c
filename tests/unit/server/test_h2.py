"""envserve's HTTP/2 gRPC transport on a loopback port, driven by grpcio's C-core client and by raw frames."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time

import grpc
import pytest
from hpack import Decoder, Encoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envserve.server.grpc.h2 import GrpcError, H2GrpcServer, StatusCode, parse_timeout

MAX_MESSAGE = 4 << 20


async def _echo(message, metadata):
    return message


async def _meta(message, metadata):
    return ";".join(
        "%s=%s" % kv for kv in metadata if not kv[0].startswith(("grpc-", "user-agent", "te"))
    ).encode()


async def _slow(message, metadata):
    await asyncio.sleep(float(message.decode()))
    return b"done"


async def _fail(message, metadata):
    raise GrpcError(StatusCode.NOT_FOUND, "nöt here: 100% sure")


async def _crash(message, metadata):
    raise RuntimeError("boom")


HANDLERS = {
    "/t.T/Echo": _echo,
    "/t.T/Meta": _meta,
    "/t.T/Slow": _slow,
    "/t.T/Fail": _fail,
    "/t.T/Crash": _crash,
}


class Running:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.server = H2GrpcServer(dict(HANDLERS), MAX_MESSAGE)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = self.call(self.server.start("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.port

    def call(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.call(self.server.stop(0))
        self.stop_loop()

    def stop_loop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture()
def server():
    running = Running()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture()
def channel(server):
    with grpc.insecure_channel(
        server.address,
        options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
    ) as channel:
        yield channel


def _unary(channel, method):
    return channel.unary_unary(method)  # no serializers: bytes in, bytes out


def test_echo_small_and_multi_megabyte_messages_both_ways(channel):
    echo = _unary(channel, "/t.T/Echo")
    assert echo(b"hello", timeout=10) == b"hello"
    assert echo(b"", timeout=10) == b""
    big = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB: many DATA frames and window updates each way
    assert echo(big, timeout=30) == big


def test_many_concurrent_calls_on_one_connection(channel):
    echo = _unary(channel, "/t.T/Echo")
    futures = [echo.future(b"call-%d" % i * (i + 1), timeout=30) for i in range(200)]
    assert [f.result() for f in futures] == [b"call-%d" % i * (i + 1) for i in range(200)]


def test_metadata_reaches_the_handler(channel):
    got = _unary(channel, "/t.T/Meta")(
        b"", metadata=[("authorization", "Bearer x"), ("x-id", "7")], timeout=10
    )
    assert got.decode() == "authorization=Bearer x;x-id=7"


def test_error_status_and_non_ascii_message(channel):
    with pytest.raises(grpc.RpcError) as info:
        _unary(channel, "/t.T/Fail")(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "nöt here: 100% sure"


def test_unexpected_exception_is_internal_and_the_connection_survives(channel):
    with pytest.raises(grpc.RpcError) as info:
        _unary(channel, "/t.T/Crash")(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "internal server error" in info.value.details()
    assert _unary(channel, "/t.T/Echo")(b"still here", timeout=10) == b"still here"


def test_unknown_method_is_unimplemented(channel):
    with pytest.raises(grpc.RpcError) as info:
        _unary(channel, "/t.T/Nope")(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "/t.T/Nope" in info.value.details()


def test_oversized_message_is_resource_exhausted_and_others_continue(channel):
    echo = _unary(channel, "/t.T/Echo")
    with pytest.raises(grpc.RpcError) as info:
        echo(b"x" * (MAX_MESSAGE + 1), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit of %d bytes" % MAX_MESSAGE in info.value.details()
    assert echo(b"after", timeout=10) == b"after"


def test_gzip_compressed_request(channel):
    payload = b"compress me " * 10000
    assert _unary(channel, "/t.T/Echo")(payload, compression=grpc.Compression.Gzip, timeout=10) == payload


def test_graceful_stop_finishes_in_flight_calls_and_refuses_new_ones():
    running = Running()
    try:
        with grpc.insecure_channel(running.address) as channel:
            slow = _unary(channel, "/t.T/Slow")
            assert slow(b"0", timeout=10) == b"done"  # connection established
            pending = slow.future(b"0.5", timeout=10)
            time.sleep(0.1)
            started = time.monotonic()
            running.call(running.server.stop(5))
            assert pending.result() == b"done"
            assert time.monotonic() - started < 3
            with pytest.raises(grpc.RpcError) as info:
                _unary(channel, "/t.T/Echo")(b"x", timeout=2, wait_for_ready=False)
            assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        running.stop_loop()


def test_parse_timeout():
    assert parse_timeout("100m") == pytest.approx(0.1)
    assert (
        parse_timeout("2S") == 2
        and parse_timeout("1H") == 3600
        and parse_timeout("5n") == pytest.approx(5e-9)
    )
    assert parse_timeout("") is None and parse_timeout("10") is None and parse_timeout("123456789S") is None
    assert parse_timeout("-1S") is None and parse_timeout("1x") is None


# --- raw frames ------------------------------------------------------------------------------------------


def frame(kind, flags, sid, payload=b""):
    return struct.pack(">HBBBI", len(payload) >> 8, len(payload) & 0xFF, kind, flags, sid) + payload


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


OPEN = []


@pytest.fixture(autouse=True)
def _close_raw_sockets():
    yield
    while OPEN:
        OPEN.pop().close()


class RawClient:
    def __init__(self, port, settings=b""):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        OPEN.append(self.sock)
        self.sock.sendall(PREFACE + frame(0x4, 0, 0, settings))
        self.buffer = b""
        self.encoder = Encoder()
        self.decoder = Decoder()

    def send(self, data):
        self.sock.sendall(data)

    def headers_block(self, path, extra=()):
        return self.encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "test"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                *extra,
            ]
        )

    def call(self, sid, path, message, extra=()):
        body = struct.pack(">BI", 0, len(message)) + message
        self.send(frame(0x1, 0x4, sid, self.headers_block(path, extra)) + frame(0x0, 0x1, sid, body))

    def read_frame(self):
        while len(self.buffer) < 9:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        hi, lo, kind, flags, sid = struct.unpack(">HBBBI", self.buffer[:9])
        length = (hi << 8) | lo
        while len(self.buffer) < 9 + length:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        payload, self.buffer = self.buffer[9 : 9 + length], self.buffer[9 + length :]
        return kind, flags, sid, payload

    def frames_until(self, predicate, limit=1000):
        seen = []
        for _ in range(limit):
            got = self.read_frame()
            if got is None:
                return seen, None
            seen.append(got)
            if predicate(got):
                return seen, got
        raise AssertionError("no matching frame in %r" % seen)

    def response(self, sid):
        """(headers, data, trailers) of one stream, answering the server's SETTINGS on the way."""
        headers, data, trailers = [], b"", []
        while True:
            kind, flags, got_sid, payload = self.read_frame()
            if kind == 0x4 and not flags & 1:
                self.send(frame(0x4, 0x1, 0))
            if got_sid != sid:
                continue
            if kind == 0x1:
                block = self.decoder.decode(payload)
                if headers:
                    trailers = block
                else:
                    headers = block
            elif kind == 0x0:
                data += payload
            if kind in (0x0, 0x1) and flags & 0x1:
                return dict(headers), data, dict(trailers or headers)


def _goaway_code(frames):
    for kind, _flags, _sid, payload in frames:
        if kind == 0x7:
            return struct.unpack(">II", payload[:8])[1]
    return None


def test_raw_call_and_trailers_only_error(server):
    client = RawClient(server.port)
    client.call(1, "/t.T/Echo", b"abc")
    headers, data, trailers = client.response(1)
    assert headers[":status"] == "200" and headers["content-type"] == "application/grpc"
    assert data == b"\x00\x00\x00\x00\x03abc" and trailers["grpc-status"] == "0"
    client.call(3, "/t.T/Missing", b"")
    headers, data, trailers = client.response(3)
    assert data == b"" and trailers["grpc-status"] == str(StatusCode.UNIMPLEMENTED)


def test_request_arriving_one_byte_at_a_time(server):
    client = RawClient(server.port)
    body = struct.pack(">BI", 0, 5) + b"bytes"
    wire = frame(0x1, 0x4, 1, client.headers_block("/t.T/Echo")) + frame(0x0, 0x1, 1, body)
    for i in range(len(wire)):
        client.send(wire[i : i + 1])
    _headers, data, trailers = client.response(1)
    assert data[5:] == b"bytes" and trailers["grpc-status"] == "0"


def test_server_honours_the_clients_flow_control_window(server):
    client = RawClient(server.port, settings=struct.pack(">HI", 0x4, 100))  # 100-byte stream window
    client.call(1, "/t.T/Echo", b"z" * 1000)
    got = b""
    deadline = time.monotonic() + 1
    client.sock.settimeout(0.3)
    try:
        while time.monotonic() < deadline:
            item = client.read_frame()
            if item and item[0] == 0x0:
                got += item[3]
    except socket.timeout:
        pass
    assert len(got) == 100  # no more than the window allows
    client.sock.settimeout(10)
    client.send(frame(0x8, 0, 1, struct.pack(">I", 10000)))
    _headers, data, trailers = client.response(1)
    assert len(got + data) == 1005 and trailers["grpc-status"] == "0"


def test_deadline_from_grpc_timeout_header(server):
    client = RawClient(server.port)
    client.call(1, "/t.T/Slow", b"2", extra=[("grpc-timeout", "100m")])
    started = time.monotonic()
    _headers, _data, trailers = client.response(1)
    assert trailers["grpc-status"] == str(StatusCode.DEADLINE_EXCEEDED)
    assert time.monotonic() - started < 1.5
    client.call(3, "/t.T/Slow", b"0", extra=[("grpc-timeout", "soon")])
    _headers, _data, trailers = client.response(3)
    assert (
        trailers["grpc-status"] == str(StatusCode.INVALID_ARGUMENT)
        and "grpc-timeout" in trailers["grpc-message"]
    )


def test_ping_is_acknowledged(server):
    client = RawClient(server.port)
    client.send(frame(0x6, 0, 0, b"12345678"))
    _frames, ack = client.frames_until(lambda f: f[0] == 0x6)
    assert ack[1] & 1 and ack[3] == b"12345678"


def test_too_many_concurrent_streams_are_refused(server):
    client = RawClient(server.port)
    for i in range(129):  # open streams (HEADERS without END_STREAM)
        client.send(frame(0x1, 0x4, 1 + 2 * i, client.headers_block("/t.T/Echo")))
    _frames, reset = client.frames_until(lambda f: f[0] == 0x3)
    assert reset[2] == 1 + 2 * 128 and struct.unpack(">I", reset[3])[0] == 0x7  # REFUSED_STREAM
    client.send(frame(0x0, 0x1, 1, struct.pack(">BI", 0, 2) + b"ok"))  # the first stream still works
    _headers, data, _trailers = client.response(1)
    assert data[5:] == b"ok"


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (frame(0x0, 0x1, 1, b"x" * 20000), 0x6),  # a frame larger than SETTINGS_MAX_FRAME_SIZE
        (frame(0x1, 0x5, 1, b"\xff\xff\xff\xff\xff\xff\x7f"), 0x9),  # HPACK index out of range
        (frame(0x0, 0x1, 7, b"\x00\x00\x00\x00\x00"), 0x1),  # DATA on an idle stream
        (frame(0x1, 0x0, 1, b"\x82") + frame(0x9, 0, 1, b"\x86" * 16000) * 6, 0xB),  # CONTINUATION flood
        (frame(0x5, 0x4, 1, b"\x00\x00\x00\x02"), 0x1),  # PUSH_PROMISE from a client
        (frame(0x8, 0, 0, struct.pack(">I", 2**31 - 1)), 0x3),  # connection window overflow
    ],
    ids=["frame-too-large", "bad-hpack", "idle-stream-data", "continuation-flood", "push", "window-overflow"],
)
def test_protocol_violations_close_the_connection_with_goaway(server, wire, code):
    client = RawClient(server.port)
    client.send(wire)
    frames, _ = client.frames_until(lambda f: f[0] == 0x7)
    assert _goaway_code(frames) == code
    assert client.read_frame() is None  # closed
    # the server itself is unaffected
    fresh = RawClient(server.port)
    fresh.call(1, "/t.T/Echo", b"fine")
    assert fresh.response(1)[1][5:] == b"fine"


def test_not_http2_is_closed(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    OPEN.append(sock)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    assert b"HTTP/1.1" not in received  # only our SETTINGS, then the connection is closed


def test_memoised_header_blocks_follow_the_dynamic_table():
    from envserve.server.grpc.h2 import _Connection

    def insert(name, value):  # literal with incremental indexing, new name (RFC 7541 6.2.1)
        return b"\x40" + bytes([len(name)]) + name + bytes([len(value)]) + value

    conn = _Connection(server=None)
    assert conn._decode(insert(b"x-id", b"1")) == [("x-id", "1")]
    newest = b"\xbe"  # indexed field 62: the newest dynamic entry
    assert conn._decode(newest) == [("x-id", "1")]
    assert conn._decode(newest) == [("x-id", "1")] and newest in conn.memo  # served from the memo
    assert conn._decode(insert(b"x-id", b"2")) == [("x-id", "2")]
    assert conn._decode(newest) == [("x-id", "2")]  # same bytes, new meaning: the memo was dropped
    assert conn._decode(b"\x20") == []  # table size update to 0 evicts everything
    with pytest.raises(Exception, match="HPACK"):
        conn._decode(newest)


def test_connection_without_preface_is_dropped(server, monkeypatch):
    from envserve.server.grpc import h2

    monkeypatch.setattr(h2, "PREFACE_TIMEOUT", 0.3)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    OPEN.append(sock)
    sock.sendall(PREFACE[:10])  # a valid start, then silence
    started = time.monotonic()
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    assert time.monotonic() - started < 3
    assert received.startswith(b"\x00\x00\x18\x04")  # only our SETTINGS frame was ever sent


_frames = st.tuples(
    st.integers(0, 10),  # type, including unknown 10
    st.sampled_from([0, 0x1, 0x4, 0x5, 0x8, 0x20, 0x2D]),  # flag combinations
    st.sampled_from([0, 1, 2, 3, 5, 2**31 - 1]),  # stream ids
    st.binary(max_size=40),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_frames, min_size=1, max_size=8))
def test_random_frames_never_break_the_server(server, frames):
    problems = []
    server.loop.set_exception_handler(lambda loop, context: problems.append(context))
    client = RawClient(server.port)
    client.send(b"".join(frame(*f) for f in frames))
    client.sock.settimeout(0.05)
    with contextlib.suppress(OSError):
        while client.sock.recv(65536):
            pass
    client.sock.close()
    assert not problems, problems
    fresh = RawClient(server.port)
    fresh.call(1, "/t.T/Echo", b"alive")
    assert fresh.response(1)[1][5:] == b"alive"
    fresh.sock.close()
