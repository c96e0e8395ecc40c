"""Prometheus metrics from a real server: request counts and latency per model/protocol/status, worker
restarts, environment cache hits and misses, and the separate metrics port."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import write_model


def _samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_endpoint_and_port(tmp_path, start_server, digits_model_file, digits):
    write_model(
        tmp_path,
        "digits",
        {"name": "digits", "implementation": "sklearn", "parameters": {"version": "3"}},
        digits_model_file,
    )
    write_model(
        tmp_path,
        "in-worker",
        {"name": "in-worker", "implementation": "sklearn", "parameters": {"environment_path": sys.prefix}},
        digits_model_file,
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    server = start_server(
        tmp_path, "--metrics-port", str(metrics_port), env={"ENVSERVE_ENV_CACHE": str(tmp_path / "cache")}
    )
    x, _ = digits
    body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64", "data": x[:1].tolist()}]}
    with server.client() as client:
        for _ in range(3):
            assert client.post("/v2/models/digits/infer", json=body).status_code == 200
        assert client.post("/v2/models/digits/infer", json={"inputs": []}).status_code == 400
        assert client.post("/v2/models/unknown-%d/infer" % time.time_ns(), json=body).status_code == 404
        assert client.post("/invocations?model=digits", json={"inputs": x[:2].tolist()}).status_code == 200
        assert client.post("/v1/models/digits:predict", json={"instances": x[:1].tolist()}).status_code == 200
        assert client.post("/v1/models/nobody:predict", json={"instances": [[1]]}).status_code == 404
        _grpc_calls(server.grpc_address, x)
        assert client.post("/v2/models/in-worker/infer", json=body).status_code == 200
        pid = client.get("/envserve/models").json()[1]["workers"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while client.post("/v2/models/in-worker/infer", json=body).status_code != 200:
            assert time.monotonic() < deadline
        r = client.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        samples = _samples(r.text)
    rest = (("model", "digits"), ("protocol", "rest"), ("version", "3"))
    assert samples[("envserve_requests_total", tuple(sorted(rest + (("status", "200"),))))] == 3
    assert samples[("envserve_requests_total", tuple(sorted(rest + (("status", "400"),))))] == 1
    unknown = (("model", ""), ("protocol", "rest"), ("status", "404"), ("version", ""))
    assert samples[("envserve_requests_total", unknown)] == 1  # unknown names do not become labels
    assert samples[("envserve_request_duration_seconds_count", rest)] == 4
    assert samples[("envserve_request_duration_seconds_sum", rest)] > 0
    mlflow = (("model", "digits"), ("protocol", "mlflow"), ("status", "200"), ("version", "3"))
    assert samples[("envserve_requests_total", mlflow)] == 1
    # one vocabulary for every protocol: the HTTP status (KServe V1 said ok/ModelNotFound, gRPC OK/NOT_FOUND)
    for protocol, answered in (("kserve-v1", 1), ("grpc", 2)):
        labels = (("model", "digits"), ("protocol", protocol), ("status", "200"), ("version", "3"))
        assert samples[("envserve_requests_total", labels)] == answered, protocol
        labels = (("model", ""), ("protocol", protocol), ("status", "404"), ("version", ""))
        assert samples[("envserve_requests_total", labels)] == 1, protocol
    statuses = {dict(k[1]).get("status") for k in samples if k[0] == "envserve_requests_total"}
    assert statuses <= {"200", "400", "404", "500", "503"}, statuses
    assert samples[("envserve_worker_restarts_total", (("model", "in-worker"), ("version", "")))] == 1
    assert samples[("envserve_model_ready", (("model", "digits"), ("version", "3")))] == 1
    assert samples[("envserve_queue_depth", (("model", "in-worker"), ("version", "")))] == 0
    assert samples[("envserve_environment_cache_total", (("result", "hit"),))] >= 0
    # the separate port serves the same text and nothing else
    r = httpx.get("http://127.0.0.1:%d/metrics" % metrics_port)
    assert r.status_code == 200 and "envserve_requests_total" in r.text
    assert httpx.get("http://127.0.0.1:%d/v2" % metrics_port).status_code == 404


def _grpc_calls(address, x):
    """Two answered ModelInfer calls and one for a model that does not exist."""
    import numpy as np
    import tritonclient.grpc as tritongrpc
    from tritonclient.utils import InferenceServerException

    client = tritongrpc.InferenceServerClient(url=address)
    try:
        for _ in range(2):
            inp = tritongrpc.InferInput("x", [1, 64], "FP64")
            inp.set_data_from_numpy(np.asarray(x[:1], dtype=np.float64))
            assert client.infer("digits", [inp]).as_numpy("predict") is not None
        try:
            client.infer("nobody", [inp])
        except InferenceServerException as exc:
            assert "not found" in str(exc)
        else:
            raise AssertionError("a call for a model that does not exist was answered")
    finally:
        client.close()


def test_mlservers_queue_metrics_prefix_and_switch(tmp_path, start_server, digits_model_file, digits):
    """MLServer's queue histograms count what the calls found before them (a worker pool, a batched
    model), its REST prefix setting renames the REST families, and mlserver_metrics false leaves them out."""
    write_model(
        tmp_path,
        "in-worker",
        {"name": "in-worker", "implementation": "sklearn", "parameters": {"environment_path": sys.prefix}},
        digits_model_file,
    )
    write_model(
        tmp_path,
        "batched",
        {"name": "batched", "implementation": "sklearn", "max_batch_size": 8, "max_batch_time": 0.05},
        digits_model_file,
    )
    (tmp_path / "settings.json").write_text('{"metrics_rest_server_prefix": "inference_rest"}')
    server = start_server(tmp_path, env={"ENVSERVE_ENV_CACHE": str(tmp_path / "cache")})
    x, _ = digits
    body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64", "data": x[:1].tolist()}]}
    with server.client() as client:
        for _ in range(4):
            assert client.post("/v2/models/in-worker/infer", json=body).status_code == 200
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(6) as pool:
            codes = list(
                pool.map(
                    lambda _: httpx.post(server.url + "/v2/models/batched/infer", json=body).status_code,
                    range(6),
                )
            )
        assert codes == [200] * 6
        samples = _samples(client.get("/metrics").text)
    assert samples[("parallel_request_queue_count", ())] == 4
    assert samples[("parallel_request_queue_sum", ())] == 0  # one at a time: nothing before any of them
    batched = (("model_name", "batched"), ("model_version", ""))
    assert samples[("batch_request_queue_count", batched)] == 6
    assert samples[("batch_request_queue_sum", batched)] >= 0
    rest = (
        ("app_name", "mlserver"),
        ("method", "POST"),
        ("path", "/v2/models/{model_name}/infer"),
        ("status_code", "200"),
    )
    assert samples[("inference_rest_requests_total", rest)] == 10
    assert not any(name.startswith("rest_server_") for name, _ in samples)
    # none in flight when scraped (the scrape itself is not counted, as MLServer does not count it)
    assert (
        samples[("inference_rest_requests_in_progress", (("app_name", "mlserver"), ("method", "POST")))] == 0
    )

    server.stop()
    (tmp_path / "settings.json").write_text('{"mlserver_metrics": false}')
    server = start_server(tmp_path, env={"ENVSERVE_ENV_CACHE": str(tmp_path / "cache")})
    with server.client() as client:
        assert client.post("/v2/models/in-worker/infer", json=body).status_code == 200
        text = client.get("/metrics").text
    assert "envserve_requests_total" in text
    for family in ("model_infer_request_success", "rest_server_requests", "parallel_request_queue"):
        assert family not in text, family
