"""The REST edge under slow, oversized and many connections, against a real server on a loopback port
with raw sockets (what an attacker's client is): a silent or slow head is answered 408 and closed, an
oversized head 431 without the server's memory growing, a stalled body 408, a keep-alive connection closed
after its request budget; and with more connections open than the server serves, probes still answer
and everything else is refused 503 at once. Bounds here are generous (a slow machine's); the numbers
that matter are the server's settings, made small."""

from __future__ import annotations

import socket
import time
from typing import List
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import ServerProcess, custom_model


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("edge")
    custom_model(repo, "echo", "Echo")
    env = {
        "ENVSERVE_HEAD_TIMEOUT": "1",
        "ENVSERVE_BODY_TIMEOUT": "1",
        "ENVSERVE_MAX_REQUESTS_PER_CONNECTION": "3",
    }
    proc = ServerProcess(repo, ["--grpc-port", "-1"], env)
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def _connect(server) -> socket.socket:
    parts = urlsplit(server.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    return sock


def _answer(sock: socket.socket, limit: float = 30.0) -> bytes:
    """Everything the server sends until it closes the connection (or ``limit`` seconds pass)."""
    sock.settimeout(limit)
    chunks: List[bytes] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _rss_mb(pid):
    with open("/proc/%d/statm" % pid) as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_a_silent_connection_and_a_slow_head_are_answered_408_and_closed(server):
    silent = _connect(server)
    slow = _connect(server)
    slow.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Slow: a")
    for sock in (silent, slow):
        answer = _answer(sock)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
        assert b"did not arrive in time" in answer and b"connection: close" in answer
        sock.close()
    assert httpx.get(server.url + "/v2/health/live").status_code == 200


def test_an_oversized_head_is_431_and_holds_no_memory(server):
    before = _rss_mb(server.proc.pid)
    for _ in range(5):
        sock = _connect(server)
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(64):  # up to 4 MiB of one header; the server stops reading long before
                sock.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _answer(sock)
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large") or answer == b"", answer
        sock.close()
    assert _rss_mb(server.proc.pid) - before < 64  # not the 20 MiB sent, let alone more
    assert httpx.get(server.url + "/v2/health/live").status_code == 200


def test_a_stalled_body_is_408_and_a_connection_carries_its_request_budget(server):
    sock = _connect(server)
    sock.sendall(
        b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"inputs": '
    )
    answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
    sock.close()
    with httpx.Client(base_url=server.url) as client:
        answers = [client.get("/v2/health/live") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[-1].headers.get("connection") == "close"  # the third request: the budget is 3
    assert all(a.headers.get("connection") != "close" for a in answers[:-1])


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    repo = tmp_path_factory.mktemp("crowded")
    custom_model(repo, "echo", "Echo")
    env = {"ENVSERVE_MAX_CONNECTIONS": "4"}  # beyond 16 open connections: probes only
    proc = ServerProcess(repo, ["--grpc-port", "-1"], env)
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def test_with_too_many_connections_open_probes_still_answer_and_the_rest_is_refused(crowded):
    """40 connections sending half a head (held: within the 30 s head timeout) are more than the 16 the
    server serves; a new connection is still read: its probe answers, its inference is 503 at once; once
    they are gone, inference is served again."""
    server = crowded
    held = []
    try:
        for _ in range(40):
            sock = _connect(server)
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
            held.append(sock)
        for path, status in (("/v2/health/live", 200), ("/v2/health/ready", 200), ("/metrics", 200)):
            sock = _connect(server)
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
            try:
                answer = _answer(sock, 10)
            finally:
                sock.close()
            assert answer.startswith(b"HTTP/1.1 %d" % status), (path, answer[:200])
        sock = _connect(server)
        body = b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}]}'
        sock.sendall(
            b"POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        try:
            answer = _answer(sock, 10)
        finally:
            sock.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    finally:
        for sock in held:
            sock.close()
    body_json = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}]}
    for _ in range(100):  # the server sees the 40 go
        r = httpx.post(server.url + "/v2/models/echo/infer", json=body_json)
        if r.status_code == 200:
            break
        time.sleep(0.1)
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def recorder(tmp_path_factory):
    repo = tmp_path_factory.mktemp("large")
    custom_model(repo, "rec", "Recorder", extra={"log": str(repo / "calls.log")})
    proc = ServerProcess(repo, ["--grpc-port", "-1"])
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def test_probes_answer_while_a_large_binary_tensor_is_decoded(recorder):
    """A 24 MB binary BYTES tensor of three million elements takes a second or more to cut into values;
    that ran on the event loop and stalled every probe as long. It is decoded in a thread now, and the
    probes sent meanwhile answer promptly. The bound is ten times the 100 ms target, for a slow machine."""
    import json
    import struct
    import threading

    n = 3_000_000
    data = b"".join(struct.pack("<I", 4) + b"abcd" for _ in range(n))
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [n],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }
    ).encode()
    result = {}

    def post():
        with httpx.Client(timeout=300) as client:
            result["r"] = client.post(
                recorder.url + "/v2/models/rec/infer",
                content=header + data,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Inference-Header-Content-Length": str(len(header)),
                },
            )

    worst, probes = 0.0, 0
    sender = threading.Thread(target=post)
    with httpx.Client(timeout=60) as client:
        client.get(recorder.url + "/v2/health/live")  # connected before the big body
        sender.start()
        while sender.is_alive():
            started = time.monotonic()
            assert client.get(recorder.url + "/v2/health/live").status_code == 200
            worst = max(worst, time.monotonic() - started)
            probes += 1
            time.sleep(0.01)
    sender.join()
    assert result["r"].status_code == 200 and result["r"].json()["outputs"][0]["data"] == [1], result[
        "r"
    ].text
    assert probes >= 5, probes  # the probes ran while the body was being read
    assert worst < 1.0, worst
