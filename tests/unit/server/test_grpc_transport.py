"""envserve's HTTP/2 gRPC transport on a loopback port, driven by grpcio's C-core client and by raw frames."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import threading
import time

import grpc
import pytest
from hpack import Decoder, Encoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envserve.server.grpc import connection, flow, wire
from envserve.server.grpc.transport import GrpcError, GrpcServer, Limits, StatusCode, parse_timeout

MAX_MESSAGE = 4 << 20


async def _echo(message, metadata, timeout=None):
    return message


async def _meta(message, metadata, timeout=None):
    return ";".join(
        "%s=%s" % kv for kv in metadata if not kv[0].startswith(("grpc-", "user-agent", "te"))
    ).encode()


async def _timeout(message, metadata, timeout=None):
    return repr(timeout).encode()


async def _slow(message, metadata, timeout=None):
    await asyncio.sleep(float(message.decode()))
    return b"done"


async def _fail(message, metadata, timeout=None):
    raise GrpcError(StatusCode.NOT_FOUND, "nöt here: 100% sure")


async def _crash(message, metadata, timeout=None):
    raise RuntimeError("boom")


HANDLERS = {
    "/t.T/Echo": _echo,
    "/t.T/Meta": _meta,
    "/t.T/Timeout": _timeout,
    "/t.T/Slow": _slow,
    "/t.T/Fail": _fail,
    "/t.T/Crash": _crash,
}


class Running:
    def __init__(self, **limits):
        self.loop = asyncio.new_event_loop()
        self.server = GrpcServer(dict(HANDLERS), Limits(max_message=MAX_MESSAGE, **limits))
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
            pending = slow.future(b"0.5", timeout=60)
            time.sleep(0.1)
            started = time.monotonic()
            running.call(running.server.stop(60), timeout=90)
            assert pending.result() == b"done"
            assert time.monotonic() - started < 30  # the call's end, not the 60 s grace, ended the stop
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
    def __init__(self, port, settings=b"", timeout=30):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
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
            block = self.decoder.decode(payload) if kind == 0x1 else None  # every block: HPACK has state
            if got_sid != sid:
                continue
            if kind == 0x1:
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
    client = RawClient(server.port, timeout=120)
    client.call(1, "/t.T/Slow", b"60", extra=[("grpc-timeout", "100m")])
    started = time.monotonic()
    _headers, _data, trailers = client.response(1)
    assert trailers["grpc-status"] == str(StatusCode.DEADLINE_EXCEEDED)
    assert time.monotonic() - started < 30  # the deadline, not the handler's 60 s, ended the call
    client.call(3, "/t.T/Timeout", b"", extra=[("grpc-timeout", "250m")])
    _headers, data, trailers = client.response(3)
    assert trailers["grpc-status"] == "0" and data[5:] == b"0.25"  # the handler knows the deadline
    client.call(5, "/t.T/Timeout", b"")
    assert client.response(5)[1][5:] == b"None"
    client.call(7, "/t.T/Slow", b"0", extra=[("grpc-timeout", "soon")])
    _headers, _data, trailers = client.response(7)
    assert (
        trailers["grpc-status"] == str(StatusCode.INVALID_ARGUMENT)
        and "grpc-timeout" in trailers["grpc-message"]
    )


def test_ping_is_acknowledged(server):
    client = RawClient(server.port)
    client.send(frame(0x6, 0, 0, b"12345678"))
    _frames, ack = client.frames_until(lambda f: f[0] == 0x6)
    assert ack[1] & 1 and ack[3] == b"12345678"


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


def test_connection_without_preface_is_dropped(server, monkeypatch):
    monkeypatch.setattr(connection, "PREFACE_TIMEOUT", 0.3)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    OPEN.append(sock)
    sock.sendall(PREFACE[:10])  # a valid start, then silence
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while True:
            chunk = sock.recv(4096)  # returns b"" once the server closes (the timeout is 100x the wait)
            if not chunk:
                break
            received += chunk
    assert received[3] == 0x4  # only our SETTINGS (and a WINDOW_UPDATE) were ever sent
    assert not any(kind == 0x7 for kind, *_ in _parse_frames(received))


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


# --- attack traffic, from outside ---------------------------------------------------------------------------
# Each case: the server's answer (GOAWAY with an error code, or a close), bounded memory, and a normal call
# on a new connection answered right after.

HEADERS, DATA, RST, SETTINGS_F, PING, GOAWAY, WINDOW, CONTINUATION = 0x1, 0x0, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9
ENHANCE_YOUR_CALM, PROTOCOL_ERROR, FLOW_CONTROL_ERROR = 0xB, 0x1, 0x3


def _parse_frames(data):
    frames, pos = [], 0
    while len(data) - pos >= 9:
        hi, lo, kind, flags, sid = struct.unpack_from(">HBBBI", data, pos)
        length = (hi << 8) | lo
        if len(data) - pos - 9 < length:
            break
        frames.append((kind, flags, sid, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return frames


def _drain(sock):
    """Everything the server sends until it closes the connection (the socket's timeout bounds the wait)."""
    received = b""
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            received += chunk
    return _parse_frames(received)


def _send_all(sock, wire, chunk=1 << 16):
    """Send until done or the server hangs up (an attacker does not wait to be told)."""
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        for i in range(0, len(wire), chunk):
            sock.sendall(wire[i : i + chunk])


def _still_serving(port):
    fresh = RawClient(port)
    fresh.call(1, "/t.T/Echo", b"alive")
    assert fresh.response(1)[1][5:] == b"alive"


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_rapid_reset_ends_in_goaway_enhance_your_calm(server):
    client = RawClient(server.port)
    block = client.headers_block("/t.T/Slow")
    wire = b"".join(
        frame(HEADERS, 0x5, sid, block) + frame(RST, 0, sid, struct.pack(">I", 0x8))
        for sid in range(1, 2 * 5000, 2)
    )
    _send_all(client.sock, wire)
    frames = _drain(client.sock)
    assert _goaway_code(frames) == ENHANCE_YOUR_CALM
    streams_started = sum(1 for kind, *_ in frames if kind == HEADERS)
    assert streams_started == 0  # each reset call was cancelled before answering
    _still_serving(server.port)


def test_occasional_cancellations_are_not_an_attack(server):
    client = RawClient(server.port)
    for sid in range(1, 2 * 100, 2):  # fewer resets than the budget, then a normal call
        client.call(sid, "/t.T/Slow", b"30")
        client.send(frame(RST, 0, sid, struct.pack(">I", 0x8)))
    client.call(1001, "/t.T/Echo", b"still fine")
    assert client.response(1001)[1][5:] == b"still fine"


@pytest.mark.parametrize(
    ("fragment", "count"),
    [(b"", 100_000), (b"\x86" * 16000, 70)],
    ids=["100k-empty-continuations", "oversized-header-block"],
)
def test_continuation_flood_is_cut_short(server, fragment, count):
    client = RawClient(server.port)
    wire = frame(HEADERS, 0x0, 1, b"\x83") + frame(CONTINUATION, 0, 1, fragment) * count
    _send_all(client.sock, wire)
    assert _goaway_code(_drain(client.sock)) == PROTOCOL_ERROR  # h2: "too many continuation frames"
    _still_serving(server.port)


def test_header_list_over_the_advertised_limit_is_refused(server):
    client = RawClient(server.port)
    block = client.headers_block("/t.T/Echo", extra=[("x-big-%d" % i, "v" * 4000) for i in range(5)])
    wire = frame(HEADERS, 0x1, 1, block[:16000])
    rest = block[16000:]
    while rest:
        wire += frame(CONTINUATION, 0x4 if len(rest) <= 16000 else 0, 1, rest[:16000])
        rest = rest[16000:]
    _send_all(client.sock, wire)
    assert _goaway_code(_drain(client.sock)) == ENHANCE_YOUR_CALM  # h2: header list too large
    _still_serving(server.port)


@pytest.mark.parametrize(
    "extra",
    [[("", "empty name")], [("X-Upper", "v")], [("connection", "keep-alive")], [("x-nul", "a\x00b")]],
    ids=["empty-name", "uppercase-name", "connection-specific", "nul-in-value"],
)
def test_malformed_headers_are_a_protocol_error(server, extra):
    client = RawClient(server.port)
    client.send(frame(HEADERS, 0x5, 1, client.headers_block("/t.T/Echo", extra=extra)))
    assert _goaway_code(_drain(client.sock)) == PROTOCOL_ERROR
    _still_serving(server.port)


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (frame(DATA, 0x1, 1, b"x" * 20000), 0x6),  # a frame larger than SETTINGS_MAX_FRAME_SIZE
        (frame(HEADERS, 0x5, 1, b"\xff\xff\xff\xff\xff\xff\x7f"), PROTOCOL_ERROR),  # broken HPACK
        (frame(DATA, 0x1, 7, b"\x00\x00\x00\x00\x00"), PROTOCOL_ERROR),  # DATA on an idle stream
        (frame(0x5, 0x4, 1, b"\x00\x00\x00\x02"), PROTOCOL_ERROR),  # PUSH_PROMISE from a client
        (frame(WINDOW, 0, 0, struct.pack(">I", 2**31 - 1)), FLOW_CONTROL_ERROR),  # window overflow
    ],
    ids=["frame-too-large", "bad-hpack", "idle-stream-data", "push", "window-overflow"],
)
def test_protocol_violations_close_the_connection_with_goaway(server, wire, code):
    client = RawClient(server.port)
    client.send(wire)
    assert _goaway_code(_drain(client.sock)) == code
    _still_serving(server.port)


def test_exceeding_the_advertised_stream_limit_ends_the_connection(server):
    client = RawClient(server.port)
    for i in range(129):  # open streams (HEADERS without END_STREAM): one more than SETTINGS allows
        client.send(frame(HEADERS, 0x4, 1 + 2 * i, client.headers_block("/t.T/Echo")))
    assert _goaway_code(_drain(client.sock)) == PROTOCOL_ERROR
    _still_serving(server.port)


def test_data_beyond_the_window_is_a_flow_control_error_and_memory_stays_bounded(server):
    """120 streams of 1 MiB each, sent without waiting for any window: the server stops handing windows
    back once a few MiB are buffered, so the overrun is caught instead of buffered."""
    before = _rss_mib()
    client = RawClient(server.port)
    first = struct.pack(">BI", 0, MAX_MESSAGE - 1) + b"d" * (16384 - 5)
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        for i in range(120):  # built stream by stream: the test itself holds ~1 MiB at a time
            sid = 1 + 2 * i
            wire = frame(HEADERS, 0x4, sid, client.headers_block("/t.T/Echo")) + frame(DATA, 0, sid, first)
            client.sock.sendall(wire + frame(DATA, 0, sid, b"d" * 16384) * 63)
    frames = _drain(client.sock)
    assert _goaway_code(frames) == FLOW_CONTROL_ERROR
    assert _rss_mib() - before < 64  # 120 MiB were sent at it
    _still_serving(server.port)


def test_windows_are_handed_back_as_messages_complete_not_as_bytes_arrive(server):
    """A client that respects flow control but never finishes its requests can make the server buffer
    only a bounded amount: after that the windows stay shut until messages complete."""
    client = H2Client(server.port)
    sids = [client.open("/t.T/Echo") for _ in range(100)]
    sent = client.fill(sids, MAX_MESSAGE)  # as much as the windows allow, never ending a stream
    conn = next(iter(server.server.connections))
    limits = server.server.limits
    bound = flow.CONNECTION_BUFFER + limits.max_concurrent_streams * limits.stream_window + MAX_MESSAGE
    assert conn.windows.buffered <= bound and sent <= bound
    # the oldest stream was always acknowledged: it can complete, and its answer arrives
    client.finish(sids[0], MAX_MESSAGE)
    assert client.response(sids[0]) == MAX_MESSAGE


def test_long_status_messages_are_capped_and_the_connection_survives(server):
    async def long_error(message, metadata, timeout=None):
        raise GrpcError(StatusCode.NOT_FOUND, "model " + "x" * 100_000 + " not found")

    server.server.handlers["/t.T/Long"] = long_error
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            _unary(channel, "/t.T/Long")(b"", timeout=30)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        details = info.value.details()
        assert details.startswith("model xxx") and details.endswith("...")
        assert len(details) == wire.MAX_STATUS_MESSAGE
        assert _unary(channel, "/t.T/Echo")(b"same connection", timeout=30) == b"same connection"


def test_idle_connections_get_goaway_no_error():
    running = Running(idle_timeout=0.3)
    try:
        client = RawClient(running.port)
        client.call(1, "/t.T/Echo", b"once")
        assert client.response(1)[1][5:] == b"once"
        frames = _drain(client.sock)  # then nothing, until the idle timeout closes the connection
        assert _goaway_code(frames) == 0
        _still_serving(running.port)
    finally:
        running.close()


def test_connections_beyond_the_cap_are_refused_and_the_others_keep_working():
    running = Running(max_connections=4)
    try:
        clients = [RawClient(running.port) for _ in range(4)]
        for c in clients:  # all four established
            c.call(1, "/t.T/Echo", b"in")
            assert c.response(1)[1][5:] == b"in"
        extra = RawClient(running.port)
        assert _goaway_code(_drain(extra.sock)) == ENHANCE_YOUR_CALM
        clients[0].call(3, "/t.T/Echo", b"still")
        assert clients[0].response(3)[1][5:] == b"still"
        clients.pop().sock.close()
        deadline = time.monotonic() + 30
        while len(running.server.connections) > 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        _still_serving(running.port)
    finally:
        running.close()


def test_a_peer_that_never_reads_cannot_make_the_server_buffer_without_bound(server):
    client = RawClient(server.port)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.sock.settimeout(0.5)
    pings = frame(PING, 0, 0, b"12345678") * 4096
    sent = 0
    with contextlib.suppress(socket.timeout, BlockingIOError):
        for _ in range(200):  # up to 800k PINGs; the server stops reading long before
            client.sock.sendall(pings)
            sent += 1
    conn = next(iter(server.server.connections))
    assert sent < 200  # the server stopped reading: our sends blocked
    assert conn.transport.get_write_buffer_size() <= 2 * connection.WRITE_BUFFER_HIGH
    _still_serving(server.port)


class H2Client:
    """A well-behaved HTTP/2 client (python-hyper's h2, client side) for the flow-control cases."""

    def __init__(self, port):
        import h2.config
        import h2.connection

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        OPEN.append(self.sock)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.data = {}
        self.ended = set()
        self.sent = {}
        self._pump(0.5)

    def _pump(self, wait, acknowledge=True):
        import h2.events

        self.sock.settimeout(wait)
        try:
            chunk = self.sock.recv(1 << 16)
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(30)
        if not chunk:
            raise AssertionError("the server closed the connection")
        for event in self.conn.receive_data(chunk):
            if isinstance(event, h2.events.DataReceived):
                self.data[event.stream_id] = self.data.get(event.stream_id, b"") + event.data
                if acknowledge:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
        self.sock.sendall(self.conn.data_to_send())
        return True

    def open(self, path):
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", path),
                (":authority", "test"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        self.sent[sid] = 0
        return sid

    def _body(self, sid, size, message):
        if self.sent[sid] == 0:
            return struct.pack(">BI", 0, message) + b"m" * (size - 5)
        return b"m" * size

    def fill(self, sids, message):
        """Send on every stream as much as the windows allow (never ending one), until no window is left."""
        idle = 0
        while idle < 3:
            progress = False
            for sid in sids:
                while True:
                    room = min(
                        self.conn.local_flow_control_window(sid),
                        self.conn.max_outbound_frame_size,
                        message + 5 - self.sent[sid] - 1,  # stop one byte short: never complete
                    )
                    if room <= 5:
                        break
                    self.conn.send_data(sid, self._body(sid, room, message))
                    self.sent[sid] += room
                    progress = True
            self.sock.sendall(self.conn.data_to_send())
            got = self._pump(0.3)
            idle = 0 if (progress or got) else idle + 1
        return sum(self.sent.values())

    def finish(self, sid, message):
        while self.sent[sid] < message + 5:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            room = min(room, message + 5 - self.sent[sid])
            if room <= 0:
                self._pump(5)
                continue
            last = self.sent[sid] + room == message + 5
            self.conn.send_data(sid, self._body(sid, room, message), end_stream=last)
            self.sent[sid] += room
            self.sock.sendall(self.conn.data_to_send())

    def response(self, sid):
        deadline = time.monotonic() + 60
        while sid not in self.ended and time.monotonic() < deadline:
            self._pump(1)
        assert sid in self.ended
        return len(self.data.get(sid, b"")) - 5


# --- bidirectional streaming (the shape of server reflection) -----------------------------------------


async def _shout(requests, metadata):
    """Answers each request as it arrives; b"fail" ends the call with NOT_FOUND after what was sent."""
    async for message in requests:
        if message == b"fail":
            raise GrpcError(StatusCode.NOT_FOUND, "no such thing")
        yield message.upper()


async def _refuse(requests, metadata):
    raise GrpcError(StatusCode.UNAUTHENTICATED, "nope")
    yield b""  # pragma: no cover - makes this an async generator


class _Feed:
    """A request iterator for grpcio fed one message at a time, so a test can wait for each answer."""

    def __init__(self):
        import queue

        self.queue = queue.Queue()

    def send(self, message):
        self.queue.put(message)

    def close(self):
        self.queue.put(None)

    def __iter__(self):
        while True:
            item = self.queue.get(timeout=30)
            if item is None:
                return
            yield item


@pytest.fixture()
def streaming():
    running = Running()
    running.server.stream_handlers.update({"/t.S/Shout": _shout, "/t.S/Refuse": _refuse})
    try:
        yield running
    finally:
        running.close()


def test_each_streamed_request_is_answered_before_the_next_is_sent(streaming):
    """True bidirectional streaming: the client waits for each answer before sending the next request
    (reflection clients do), which a call answered only after the client half-closes would deadlock."""
    with grpc.insecure_channel(streaming.address) as channel:
        feed = _Feed()
        replies = channel.stream_stream("/t.S/Shout")(iter(feed), timeout=30)
        for word in (b"one", b"two", b"x" * 100_000):
            feed.send(word)
            assert next(replies) == word.upper()
        feed.close()
        assert list(replies) == []
        assert replies.code() == grpc.StatusCode.OK
        # the unary methods on the same connection are unaffected
        assert _unary(channel, "/t.T/Echo")(b"unary", timeout=10) == b"unary"


def test_a_streaming_error_follows_the_answers_already_sent(streaming):
    with grpc.insecure_channel(streaming.address) as channel:
        replies = channel.stream_stream("/t.S/Shout")(iter([b"a", b"b", b"fail", b"never"]), timeout=30)
        got = []
        with pytest.raises(grpc.RpcError) as info:
            for reply in replies:
                got.append(reply)
        assert got == [b"A", b"B"]
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and info.value.details() == "no such thing"
        with pytest.raises(grpc.RpcError) as info:
            list(channel.stream_stream("/t.S/Refuse")(iter([b"x"]), timeout=30))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and info.value.details() == "nope"


def test_a_streaming_client_that_never_reads_is_held_to_its_window(streaming):
    """Requests sent on a stream whose answers are not read: the server stops taking them (and handing
    the window back) once it cannot send, so what it holds stays within a window and a message."""
    client = H2Client(streaming.port)
    sid = client.open("/t.S/Shout")
    limits = streaming.server.limits
    framed = struct.pack(">BI", 0, 1000) + b"q" * 1000  # requests of 1 kB, back to back
    sent, total = 0, 24 << 20  # 24 MB of requests if the server took them all
    while sent < total:
        room = min(client.conn.local_flow_control_window(sid), client.conn.max_outbound_frame_size)
        if room <= 0:
            client.sock.sendall(client.conn.data_to_send())
            if not client._pump(0.5, acknowledge=False):  # reads frames, never hands a window back
                break
            continue
        offset = sent % len(framed)
        chunk = (framed[offset:] + framed * (room // len(framed) + 1))[:room]
        client.conn.send_data(sid, chunk)
        sent += room
        client.sock.sendall(client.conn.data_to_send())
    # the handler answered until the client's window was full, then waits; the requests it holds are
    # bounded by its window
    assert sent <= 4 * limits.stream_window + 70 * 1005, (sent, limits.stream_window)
    _still_serving(streaming.port)


def test_a_unary_stream_holds_no_more_than_its_message_declares(server):
    """The length prefix decides at once: a message declaring more than the limit is refused with its
    first five bytes (the rest is never waited for or held), and bytes beyond what a unary call's one
    message declares are INVALID_ARGUMENT before the stream ends."""
    client = RawClient(server.port)
    block = client.headers_block("/t.T/Echo")
    client.send(frame(HEADERS, 0x4, 1, block) + frame(DATA, 0, 1, struct.pack(">BI", 0, MAX_MESSAGE + 1)))
    _headers, _data, trailers = client.response(1)
    assert trailers["grpc-status"] == "8" and "larger than the server's limit" in trailers["grpc-message"]
    client.send(
        frame(HEADERS, 0x4, 3, block) + frame(DATA, 0, 3, struct.pack(">BI", 0, 3) + b"abc" + b"x" * 10)
    )
    _headers, _data, trailers = client.response(3)
    assert trailers["grpc-status"] == "3" and "exactly one message" in trailers["grpc-message"], trailers
    client.call(5, "/t.T/Echo", b"fine")
    assert client.response(5)[1][5:] == b"fine"


def test_a_stalled_request_times_out_and_the_connection_serves_on():
    running = Running(stall_timeout=0.5)
    try:
        client = RawClient(running.port)
        block = client.headers_block("/t.T/Echo")
        client.send(frame(HEADERS, 0x4, 1, block) + frame(DATA, 0, 1, struct.pack(">BI", 0, 100) + b"half"))
        _headers, _data, trailers = client.response(1)  # the socket's timeout (30 s) bounds the wait
        assert trailers["grpc-status"] == "4" and "stopped arriving" in trailers["grpc-message"], trailers
        client.call(3, "/t.T/Echo", b"after")
        assert client.response(3)[1][5:] == b"after"
    finally:
        running.close()


def test_resets_the_peer_makes_the_server_send_cost_its_reset_budget(server):
    """ "MadeYouReset": streams the server must reset because of what they carry (here, messages declaring
    more than the limit) are charged like the peer's own resets, so a flood of them ends in GOAWAY."""
    client = RawClient(server.port)
    block = client.headers_block("/t.T/Echo")
    oversized = struct.pack(">BI", 0, MAX_MESSAGE + 1)
    code = None
    for first in range(1, 2 * 2000, 2 * 50):  # 50 streams at a time, under the concurrent-stream limit
        wire = b"".join(
            frame(HEADERS, 0x4, sid, block) + frame(DATA, 0, sid, oversized)
            for sid in range(first, first + 100, 2)
        )
        try:
            client.send(wire)
            last_sid = first + 98
            seen, last = client.frames_until(
                lambda f, sid=last_sid: f[0] in (RST, GOAWAY) and f[2] in (sid, 0)
            )
        except (BrokenPipeError, ConnectionResetError):
            break
        code = _goaway_code(seen)
        if code is not None or last is None:
            break
    assert code == ENHANCE_YOUR_CALM, code
    _still_serving(server.port)
