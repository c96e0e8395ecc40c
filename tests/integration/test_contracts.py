"""Started with no arguments, envserve serves the contract its environment describes -- the variables each
operator sets (../shared/reference/operator-contracts.md, sections 1a, 1b, 2, 3), on free loopback ports
instead of the operators' fixed ones -- and refuses a malformed contract with one line naming the variable.
Real server processes; the probes and calls each operator's sidecar makes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import httpx
import pytest

from tests.conftest import ServerProcess, free_port


@pytest.fixture
def model_dir(tmp_path, digits_model_file):
    folder = tmp_path / "mnt-models"  # what the storage initializer leaves in /mnt/models
    folder.mkdir()
    shutil.copy(digits_model_file, folder / "model.joblib")
    return folder


def _seldon_env(model_dir, http, grpc, metrics, parameters):
    return {  # section 1a's variables (SDep iris, predictor default, node classifier)
        "PREDICTIVE_UNIT_SERVICE_PORT": str(http),
        "PREDICTIVE_UNIT_HTTP_SERVICE_PORT": str(http),
        "MLSERVER_HTTP_PORT": str(http),
        "PREDICTIVE_UNIT_GRPC_SERVICE_PORT": str(grpc),
        "MLSERVER_GRPC_PORT": str(grpc),
        "MLSERVER_MODEL_URI": str(model_dir),
        "PREDICTIVE_UNIT_PARAMETERS": json.dumps(parameters),
        "PREDICTIVE_UNIT_ID": "classifier",
        "MLSERVER_MODEL_NAME": "classifier",
        "PREDICTIVE_UNIT_IMAGE": "team/envserve:1",
        "PREDICTOR_ID": "default",
        "PREDICTOR_LABELS": '{"version":"default"}',
        "SELDON_DEPLOYMENT_ID": "iris",
        "SELDON_EXECUTOR_ENABLED": "true",
        "PREDICTIVE_UNIT_METRICS_SERVICE_PORT": str(metrics),
        "PREDICTIVE_UNIT_METRICS_ENDPOINT": "/prometheus",
        "MLSERVER_METRICS_PORT": str(metrics),
        "MLSERVER_METRICS_ENDPOINT": "/prometheus",
    }


#: Generous: a first load imports scikit-learn, which takes seconds on a busy machine with coverage on.
TIMEOUT = 120


def _post(*args, **kwargs):
    return httpx.post(*args, timeout=TIMEOUT, **kwargs)


def _get(*args, **kwargs):
    return httpx.get(*args, timeout=TIMEOUT, **kwargs)


def _start(env) -> ServerProcess:
    return ServerProcess(None, [], env=env).wait_ready(120)


def test_seldon_core_v1_protocol_seldon(model_dir, digits):
    x, _ = digits
    from joblib import load

    model = load(model_dir / "model.joblib")
    http, grpc, metrics = free_port(), free_port(), free_port()
    for method, expected in (("predict", model.predict(x[:3]).tolist()), (None, None)):
        parameters = [{"name": "model_uri", "value": str(model_dir), "type": "STRING"}]
        if method:
            parameters.insert(0, {"name": "method", "value": method, "type": "STRING"})
        server = _start(_seldon_env(model_dir, http, grpc, metrics, parameters))
        try:
            assert "Seldon Core v1, protocol seldon (unit classifier" in server.lines[0], server.lines[0]
            assert server.url == "http://127.0.0.1:%d" % http
            url = server.url
            assert _get(url + "/health/ping").text == "pong"
            for path in ("/health/status", "/api/v1.0/health/status", "/metadata"):
                assert _get(url + path).status_code == 200, path
            body = {"data": {"ndarray": x[:3].tolist()}}
            answer = _post(url + "/predict", json=body)  # what the executor calls
            if method == "predict":
                assert answer.status_code == 200, answer.text
                doc = answer.json()
                assert doc["meta"]["requestPath"] == {"classifier": "team/envserve:1"}
                assert doc["data"]["ndarray"] == expected
            else:  # SKLEARN_SERVER's default method is predict_proba, which this SVC lacks: a 400 saying so
                assert answer.status_code == 400, answer.text
                assert "has no predict_proba()" in answer.json()["status"]["info"]
            scraped = _get("http://127.0.0.1:%d/prometheus" % metrics)
            assert scraped.status_code == 200 and "envserve_requests_total" in scraped.text
        finally:
            server.stop()


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("PREDICTIVE_UNIT_PARAMETERS", "[{not json", "PREDICTIVE_UNIT_PARAMETERS is not valid JSON"),
        (
            "PREDICTIVE_UNIT_PARAMETERS",
            '[{"name":"method","value":"guess","type":"STRING"}]',
            "method 'guess' is not one of predict_proba, predict, decision_function",
        ),
        (
            "PREDICTIVE_UNIT_HTTP_SERVICE_PORT",
            "nine-thousand",
            "PREDICTIVE_UNIT_HTTP_SERVICE_PORT must be a port",
        ),
        ("MLSERVER_HTTP_PORT", "80a", "MLSERVER_HTTP_PORT must be a port number"),
        ("MLSERVER_MODEL_EXTRA", "[1]", "MLSERVER_MODEL_EXTRA must be a JSON object"),
    ],
)
def test_malformed_contract_variables_stop_the_start_naming_them(tmp_path, variable, value, message):
    env = (
        {"PREDICTIVE_UNIT_ID": "classifier"}
        if variable.startswith("PREDICTIVE")
        else {"MLSERVER_MODEL_NAME": "m"}
    )
    env[variable] = value
    proc = subprocess.run(
        [sys.executable, "-m", "envserve", "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**__import__("os").environ, **env},
    )
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_kserve_and_seldon_v2_start_the_model_mlserver_variables_name(model_dir, digits):
    x, _ = digits
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = {  # section 2 (kserve-mlserver with a storageUri)
        "MLSERVER_MODEL_IMPLEMENTATION": "mlserver_sklearn.SKLearnModel",
        "MLSERVER_HTTP_PORT": str(http),
        "MLSERVER_GRPC_PORT": str(grpc),
        "MLSERVER_METRICS_PORT": str(metrics),
        "MLSERVER_MODEL_NAME": "sklearn-digits",
        "MLSERVER_MODEL_URI": str(model_dir),
        "MLSERVER_MODEL_VERSION": "v1",
        "K_SERVICE": "sklearn-digits-predictor",
    }
    server = _start(env)
    try:
        assert "KServe (kserve-mlserver) variables" in server.lines[0], server.lines[0]
        url = server.url
        assert _get(url + "/v2/health/live").status_code == 200
        assert _get(url + "/v2/models/sklearn-digits/ready").status_code == 200
        body = {"inputs": [{"name": "input-0", "shape": [2, 64], "datatype": "FP32", "data": x[:2].tolist()}]}
        for path in ("/v2/models/sklearn-digits/infer", "/v2/models/sklearn-digits/versions/v1/infer"):
            r = _post(url + path, json=body)
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["shape"] == [2, 1]  # as MLServer's SKLearnModel answers
        assert _get("http://127.0.0.1:%d/metrics" % metrics).status_code == 200
    finally:
        server.stop()


def test_seldon_core_2_loads_by_internal_name_on_request(tmp_path, digits_model_file, digits):
    x, _ = digits
    agent = tmp_path / "agent" / "models" / "iris_1" / "1"  # as the agent lays a model out
    agent.mkdir(parents=True)
    shutil.copy(digits_model_file, agent / "model.joblib")
    (agent / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "iris_1",
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib", "version": "1", "extra": {"team": "ml"}},
            }
        )
    )
    http, grpc = free_port(), free_port()
    env = {  # section 3
        "MLSERVER_HTTP_PORT": str(http),
        "MLSERVER_GRPC_PORT": str(grpc),
        "MLSERVER_MODELS_DIR": str(tmp_path / "agent" / "models"),
        "MLSERVER_PARALLEL_WORKERS": "1",
        "MLSERVER_LOAD_MODELS_AT_STARTUP": "false",
        "MLSERVER_GRPC_MAX_MESSAGE_LENGTH": "1048576000",
        "MLSERVER_DEBUG": "false",
        "MLSERVER_METRICS_PORT": str(free_port()),
    }
    server = _start(env)
    try:
        assert "Seldon Core 2 variables" in server.lines[0], server.lines[0]
        url = server.url
        index = _post(url + "/v2/repository/index", json={}).json()
        assert all(m["state"] != "READY" for m in index), index  # nothing loaded at start
        for _ in range(2):  # the agent retries a load: idempotent
            r = _post(url + "/v2/repository/models/iris_1/load")
            assert r.status_code == 200, r.text
        body = {"inputs": [{"name": "predict", "shape": [1, 64], "datatype": "FP32", "data": x[:1].tolist()}]}
        r = _post(url + "/v2/models/iris_1/infer", json=body, headers={"seldon-model": "iris"})
        assert r.status_code == 200, r.text
        assert _post(url + "/v2/repository/models/iris_1/unload").status_code == 200
        assert _post(url + "/v2/repository/models/nope_1/unload").status_code == 404
    finally:
        server.stop()


def test_an_empty_models_folder_makes_the_model_unavailable_naming_it(tmp_path):
    empty = tmp_path / "mnt-models"
    empty.mkdir()
    http = free_port()
    server = ServerProcess(
        None,
        [],
        env={
            "PREDICTIVE_UNIT_ID": "classifier",
            "PREDICTIVE_UNIT_HTTP_SERVICE_PORT": str(http),
            "PREDICTIVE_UNIT_GRPC_SERVICE_PORT": str(free_port()),
            "PREDICTIVE_UNIT_METRICS_SERVICE_PORT": str(free_port()),
            "MLSERVER_MODEL_URI": str(empty),
        },
    )
    try:
        assert server._listening.wait(60), server.log
        url = "http://127.0.0.1:%d" % http
        deadline = __import__("time").monotonic() + 60
        while True:
            index = _post(url + "/v2/repository/index", json={}).json()
            if (index and index[0]["state"] != "LOADING") or __import__("time").monotonic() > deadline:
                break
        assert index[0]["name"] == "classifier" and index[0]["state"] == "UNAVAILABLE", index
        assert str(empty) in index[0]["reason"], index
        assert _post(url + "/predict", json={"data": {"ndarray": [[1.0]]}}).status_code == 503
    finally:
        server.stop()
