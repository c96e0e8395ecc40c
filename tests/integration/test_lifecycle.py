"""Start-up, readiness and graceful shutdown of a real server process."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from tests.conftest import custom_model


def test_sigterm_finishes_in_flight_requests_and_exits_zero(tmp_path, start_server):
    custom_model(tmp_path, "slow", "Slow", extra={"seconds": 1.5})
    server = start_server(tmp_path)
    result = {}

    def call():
        result["response"] = httpx.post(
            server.url + "/v2/models/slow/infer",
            timeout=30,
            json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]},
        )

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.5)  # the request is now inside predict()
    server.proc.send_signal(signal.SIGTERM)
    thread.join(30)
    assert server.proc.wait(30) == 0, server.log
    response = result["response"]
    assert response.status_code == 200 and response.json()["outputs"][0]["data"] == [1.5]
    assert "readiness is now false" in server.log


def test_readiness_is_false_while_models_load(tmp_path, start_server):
    custom_model(tmp_path, "slow", "SlowLoad", extra={"load_seconds": 8})
    server = start_server(tmp_path, wait=False)
    assert server._listening.wait(30) and server.url, server.log
    live = httpx.get(server.url + "/v2/health/live", timeout=5)
    ready = httpx.get(server.url + "/v2/health/ready", timeout=5)
    assert live.status_code == 200 and live.json() == {"live": True}
    assert ready.status_code == 400 and ready.json() == {"ready": False}
    index = httpx.post(server.url + "/v2/repository/index", timeout=5).json()
    assert index == [{"name": "slow", "state": "LOADING", "reason": ""}]
    server.wait_ready()
    assert server.stop() == 0


def test_port_in_use_is_a_clear_error(tmp_path, start_server):
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "envserve", "serve", str(tmp_path), "--http-port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 3
    assert "cannot listen on 127.0.0.1:%d" % port in proc.stderr and "--http-port" in proc.stderr


def test_reload_keeps_serving_and_a_failed_reload_keeps_the_old_version(tmp_path, start_server):
    folder = custom_model(tmp_path, "m", "SlowLoad")
    server = start_server(tmp_path)
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}
    statuses = []
    stop = threading.Event()

    def hammer():
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                statuses.append(client.post("/v2/models/m/infer", json=body).status_code)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        with server.client() as client:
            r = client.post("/v2/repository/models/m/load")  # reload: the new copy takes 3 s to load
            assert r.status_code == 200, r.text
            (folder / "runtimes.py").write_text("raise ImportError('the new version is broken')\n")
            r = client.post("/v2/repository/models/m/load")
            assert r.status_code == 500
            assert "reloading model 'm' failed, the loaded version keeps serving" in r.json()["error"]
            assert "the new version is broken" in r.json()["error"]
            assert client.post("/v2/models/m/infer", json=body).status_code == 200
            (row,) = client.post("/v2/repository/index").json()
            assert row["state"] == "READY"
    finally:
        stop.set()
        thread.join(30)
    assert len(statuses) > 10 and set(statuses) == {200}, "a request failed during the reload"
