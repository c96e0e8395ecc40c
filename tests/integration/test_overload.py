"""Production behaviour under load: probes answer while models compute, overload is shed with 503 instead
of queued without bound, and a request whose client has gone never reaches the model.

Bounds here hold on a machine ten times slower than a quiet one: they separate "answered while the model
computes" from "answered after it" (seconds apart), never a latency target. The targets (probe < 100 ms,
503 within milliseconds) are measured by ``scripts/bench --suite overload``.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time

import httpx
import pytest

from tests.conftest import custom_model

BODY = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}


def _custom(repo, name, cls, worker=False, max_queue_size=None, **extra):
    params = {"extra": extra}
    if worker:
        params["environment_path"] = sys.prefix
    if max_queue_size is not None:
        params["max_queue_size"] = max_queue_size
    custom_model(repo, name, cls, **params)


def _rows(n):
    return {"inputs": [{"name": "x", "shape": [n, 1], "datatype": "FP32", "data": [[0.5]] * n}]}


def _rss_mb(pid):
    with open("/proc/%d/statm" % pid) as f:
        return int(f.read().split()[1]) * 4096 / 2**20


class Probes(threading.Thread):
    """Polls liveness and readiness until stopped; keeps every (status, seconds)."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url = url
        self.results = []
        self.stopped = threading.Event()

    def run(self):
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stopped.is_set():
                for path in ("/v2/health/live", "/v2/health/ready"):
                    started = time.monotonic()
                    status = client.get(path).status_code
                    self.results.append((status, time.monotonic() - started))
                time.sleep(0.02)

    def stop(self):
        self.stopped.set()
        self.join(60)
        return self.results


def _in_background(fn):
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", fn()), daemon=True)
    thread.start()
    return thread, box


def test_probes_answer_while_an_in_process_model_computes_a_long_request(tmp_path, start_server):
    _custom(tmp_path, "slow", "Recorder", log=str(tmp_path / "calls.log"), seconds=8)
    server = start_server(tmp_path)
    thread, box = _in_background(
        lambda: httpx.post(server.url + "/v2/models/slow/infer", json={**BODY, "id": "long"}, timeout=120)
    )
    deadline = time.monotonic() + 60
    while not (tmp_path / "calls.log").exists():  # the model is computing now
        assert time.monotonic() < deadline
        time.sleep(0.01)
    probes = Probes(server.url)
    probes.start()
    time.sleep(2)
    results = probes.stop()
    assert thread.is_alive()  # all of this happened while the 8 s call ran
    assert len(results) >= 10 and all(status == 200 for status, _ in results)
    assert max(seconds for _, seconds in results) < 1.0  # never waited for the model (8 s)
    thread.join(120)
    assert box["result"].status_code == 200


def test_a_fast_model_answers_inline_and_a_large_request_still_leaves_the_loop_free(tmp_path, start_server):
    _custom(tmp_path, "rows", "PerRow", seconds_per_row=0.0002)
    server = start_server(tmp_path)
    with server.client() as client:
        for _ in range(20):  # one row: ~0.2 ms, learnt as fast
            assert client.post("/v2/models/rows/infer", json=_rows(1)).json()["outputs"][0]["data"] == [1]
        status = next(m for m in client.get("/envserve/models").json() if m["name"] == "rows")
        # its cost is learnt (whether it is under the inline budget depends on the machine's load: a
        # bound here failed on a busy machine; the inline decision is unit-tested with given costs)
        assert status["call_seconds"] is not None and status["call_seconds"] > 0
    thread, box = _in_background(
        lambda: httpx.post(server.url + "/v2/models/rows/infer", json=_rows(40000), timeout=120)
    )
    time.sleep(0.5)  # 40,000 rows: ~8 s, predicted from the rows, so it runs on the model's thread
    probes = Probes(server.url)
    probes.start()
    time.sleep(2)
    results = probes.stop()
    assert thread.is_alive()
    assert all(status == 200 for status, _ in results) and max(s for _, s in results) < 1.0
    thread.join(120)
    assert box["result"].json()["outputs"][0]["data"] == [40000]


@pytest.mark.parametrize("worker", [False, True], ids=["in-process", "worker"])
def test_twice_the_capacity_is_shed_with_503_and_nothing_waits_past_the_queue(tmp_path, start_server, worker):
    """A model that takes 200 ms per call (5/s) receives 40 requests/s for 5 s, max_queue_size 4: eight
    times its capacity, so the shedding shows even when a busy machine slows the client's sending."""
    service, queue = 0.2, 4
    _custom(
        tmp_path,
        "slow",
        "Recorder",
        worker,
        log=str(tmp_path / "calls.log"),
        seconds=service,
        max_queue_size=queue,
    )
    server = start_server(tmp_path, env={"ENVSERVE_ENV_CACHE": str(tmp_path / "cache")})
    from envserve.workers.pool import DEPTH

    ahead = queue + (
        DEPTH if worker else 1
    )  # calls an accepted request can find before it: waiting + running
    before = _rss_mb(server.proc.pid)
    probes = Probes(server.url)
    probes.start()

    async def drive():
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:

            async def one(i):
                started = time.monotonic()
                r = await client.post("/v2/models/slow/infer", json={**BODY, "id": str(i)})
                return r.status_code, r.headers.get("retry-after"), r.json(), time.monotonic() - started

            tasks = []
            for i in range(200):  # open loop: 40/s whatever the answers
                tasks.append(asyncio.ensure_future(one(i)))
                await asyncio.sleep(1 / 40)
            return await asyncio.gather(*tasks)

    results = asyncio.run(drive())
    after_load = probes.stop()
    statuses = [r[0] for r in results]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 20 and statuses.count(503) >= 50, statuses
    for status, retry_after, doc, seconds in results:
        if status == 503:
            assert retry_after == "1" and "max_queue_size" in doc["error"]
        else:
            # never waited longer than the calls ahead of it allow (plus generous slack for a slow machine)
            assert seconds < (ahead + 1) * service + 5, (seconds, doc)
    assert all(status == 200 for status, _ in after_load)  # probes kept answering through the overload
    assert max(s for _, s in after_load) < 1.0
    assert _rss_mb(server.proc.pid) - before < 50
    # the overload is over: the next request waits for nothing
    with server.client() as client:
        started = time.monotonic()
        assert client.post("/v2/models/slow/infer", json=BODY).status_code == 200
        assert time.monotonic() - started < 5


@pytest.mark.parametrize("worker", [False, True], ids=["in-process", "worker"])
def test_a_request_whose_client_left_while_it_waited_never_runs(tmp_path, start_server, worker):
    log = tmp_path / "calls.log"
    _custom(tmp_path, "slow", "Recorder", worker, log=str(log), seconds=2)
    server = start_server(tmp_path, env={"ENVSERVE_ENV_CACHE": str(tmp_path / "cache")})
    if worker:  # a worker pipelines up to DEPTH calls: fill them so the next one waits in the queue
        from envserve.workers.pool import DEPTH
    else:
        DEPTH = 1
    first = [
        _in_background(
            lambda i=i: httpx.post(
                server.url + "/v2/models/slow/infer", json={**BODY, "id": "a%d" % i}, timeout=120
            )
        )
        for i in range(DEPTH)
    ]
    deadline = time.monotonic() + 60
    while not log.exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    if worker:  # every pipelining slot of the worker is taken: what comes next waits in the queue
        while httpx.get(server.url + "/envserve/models").json()[0]["workers"][0]["inflight"] < DEPTH:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    # a client that sends its request and hangs up while it waits for the model
    host, port = server.url.split("//")[1].split(":")
    body = httpx.Request("POST", "http://x/", json={**BODY, "id": "gone"}).read()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        time.sleep(0.5)
    last = httpx.post(server.url + "/v2/models/slow/infer", json={**BODY, "id": "last"}, timeout=120)
    assert last.status_code == 200
    for thread, box in first:
        thread.join(120)
        assert box["result"].status_code == 200
    ran = log.read_text().split()
    assert "last" in ran and "gone" not in ran, ran


def test_grpc_overload_is_unavailable_and_a_cancelled_call_never_runs(tmp_path, start_server):
    grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc]: scripts/setup")
    import numpy as np

    log = tmp_path / "calls.log"
    _custom(tmp_path, "slow", "Recorder", log=str(log), seconds=1, max_queue_size=2)
    server = start_server(tmp_path)
    client = grpcclient.InferenceServerClient(server.grpc_address)
    inp = grpcclient.InferInput("x", [1], "FP32")
    inp.set_data_from_numpy(np.array([1], dtype=np.float32))
    results = {}

    def call(i):
        try:
            client.infer("slow", [inp], request_id=str(i), client_timeout=120)
            results[i] = "OK"
        except Exception as exc:  # tritonclient's InferenceServerException
            results[i] = "%s %s" % (exc.status(), exc.message())

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(120)
    refused = [v for v in results.values() if v != "OK"]
    assert len(refused) >= 3, results  # one running, two waiting, the rest shed
    assert all("StatusCode.UNAVAILABLE" in v and "max_queue_size" in v for v in refused), refused
    client.close()
