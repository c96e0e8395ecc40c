"""Seldon Core v1 Python models, unchanged: the same user class (tests/fixtures/seldon/Linear.py) served
by Seldon's own wrapper and by envserve -- in process, and in a Python 3.8 environment without
seldon-core -- and answering every request kind alike (ndarray with names, tensor, strData, jsonData as
an object and as an array, binData, meta passthrough, tags, class names, feedback, metadata), its
metrics() in /metrics; a class that cannot be served fails alone with an error naming it.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from examples import old_sklearn
from tests.conftest import Reference, ServerProcess, free_port, reference_venv, write_model

pytestmark = pytest.mark.slow  # builds the Seldon wrapper's venv and the Python 3.8 environment once

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "seldon"
WEIGHTS = np.array([[1.0, -1.0], [0.5, 0.25], [-2.0, 3.0]])
PARAMETERS = [
    {"name": "scale", "value": "2.0", "type": "FLOAT"},
    {"name": "label", "value": "blue", "type": "STRING"},
]
UNIT = {"PREDICTIVE_UNIT_ID": "linear", "PREDICTIVE_UNIT_IMAGE": "team/linear:3"}


def _folder(root: Path, name: str, settings: dict) -> Path:
    folder = write_model(root, name, settings)
    shutil.copy(FIXTURES / "Linear.py", folder / "Linear.py")
    shutil.copy(FIXTURES / "Broken.py", folder / "Broken.py")
    np.save(folder / "weights.npy", WEIGHTS)
    return folder


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("seldon-models")
    repo = root / "repo"
    extra = {"model_name": "Linear", "parameters": PARAMETERS}
    _folder(repo, "linear", {"name": "linear", "implementation": "seldon", "parameters": {"extra": extra}})
    # the same class found by its module.Class name, constructed from an object of parameters
    _folder(
        repo,
        "linear-auto",
        {
            "name": "linear-auto",
            "implementation": "Linear.Linear",
            "parameters": {"extra": {"parameters": {"scale": 2.0, "label": "blue"}}},
        },
    )
    tarball = old_sklearn.old_sklearn()["tarball"]  # Python 3.8, numpy, no seldon-core
    py38 = _folder(
        repo,
        "linear-py38",
        {
            "name": "linear-py38",
            "implementation": "seldon",
            "parameters": {"environment_tarball": "./env.tar.gz", "extra": extra},
        },
    )
    shutil.copy(tarball, py38 / "env.tar.gz")
    for name, model_name in (("raises-in-load", "Broken.RaisesInLoad"), ("no-predict", "Broken.NoPredict")):
        _folder(
            repo,
            name,
            {"name": name, "implementation": "seldon", "parameters": {"extra": {"model_name": model_name}}},
        )
    _folder(
        repo,
        "import-fails",
        {
            "name": "import-fails",
            "implementation": "seldon",
            "parameters": {"extra": {"model_name": "Missing"}},
        },
    )

    reference = root / "reference"
    reference.mkdir()
    shutil.copy(FIXTURES / "Linear.py", reference / "Linear.py")
    np.save(reference / "weights.npy", WEIGHTS)
    venv = reference_venv("seldon")
    http, grpc, metrics = free_port(), free_port(), free_port()
    seldon = Reference(
        [
            str(venv / "bin" / "seldon-core-microservice"),
            "Linear",
            "--service-type",
            "MODEL",
            "--parameters",
            json.dumps(PARAMETERS),
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
            "--single-threaded",
            "1",
        ],
        "http://127.0.0.1:%d" % http,
        "/health/ping",
        root / "seldon.log",
        env={**UNIT, "PREDICTIVE_UNIT_METRICS_ENDPOINT": "/prometheus"},
        cwd=str(reference),
    )
    # the unit's contract would put envserve's metrics on Seldon's 6000: another test process may hold it
    ports = {"PREDICTIVE_UNIT_METRICS_SERVICE_PORT": str(free_port())}
    envserve = ServerProcess(repo, [], env={**UNIT, **ports, "ENVSERVE_ENV_CACHE": str(root / "env-cache")})
    try:
        seldon.wait()
        envserve.wait_ready(300)
        yield seldon, envserve, "http://127.0.0.1:%d/prometheus" % metrics
    finally:
        seldon.stop()
        envserve.stop()


def _cases():
    rows = [[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]]
    yield "ndarray", {"data": {"ndarray": rows}}
    yield "ndarray with names", {"data": {"names": ["a", "b", "c"], "ndarray": rows}}
    yield "tensor", {"data": {"tensor": {"shape": [2, 3], "values": [v for r in rows for v in r]}}}
    yield "meta passthrough", {"data": {"ndarray": rows}, "meta": {"puid": "p-1", "tags": {"team": "ml"}}}
    yield "strData", {"strData": "hello"}
    yield "jsonData object", {"jsonData": {"b": 1, "a": [1, 2]}, "meta": {"puid": "p-2"}}
    yield "jsonData array", {"jsonData": [1, 2, 3]}
    yield "binData", {"binData": base64.b64encode(b"\x00\x01abc").decode()}


def _post(url: str, body, model=None, path="/api/v1.0/predictions"):
    headers = {"X-Model-Name": model} if model else {}
    return httpx.post(url + path, json=body, headers=headers, timeout=120)


@pytest.mark.parametrize("model", ["linear", "linear-auto", "linear-py38"])
def test_every_request_kind_answers_as_seldons_wrapper(servers, model):
    seldon, envserve, _ = servers
    for case, body in _cases():
        ours, theirs = _post(envserve.url, body, model), _post(seldon.url, body)
        assert ours.status_code == theirs.status_code == 200, (case, ours.text, theirs.text)
        a, b = ours.json(), theirs.json()
        assert set(a) == set(b), (case, a, b)
        for key in ("strData", "binData", "jsonData"):
            assert a.get(key) == b.get(key), (case, key, a, b)
        if "data" in b:
            assert a["data"].get("names") == b["data"].get("names"), (case, a["data"], b["data"])
            assert set(a["data"]) == set(b["data"]), (case, a["data"], b["data"])
            for kind in ("ndarray", "tensor"):
                if kind in b["data"]:
                    assert a["data"][kind] == b["data"][kind], (case, a["data"], b["data"])
        assert a["meta"].get("tags") == b["meta"].get("tags"), (case, a["meta"], b["meta"])
        assert a["meta"]["tags"]["label"] == "blue"  # tags(), from the constructor's parameter
        assert a["meta"].get("puid") == b["meta"].get("puid"), (case, a["meta"], b["meta"])
        assert a["meta"].get("requestPath") == b["meta"].get("requestPath") == {"linear": "team/linear:3"}


def test_values_are_the_models(servers):
    _, envserve, _ = servers
    rows = [[1.0, 2.0, 3.0]]
    answer = _post(envserve.url, {"data": {"ndarray": rows}}, "linear-py38").json()
    assert answer["data"]["ndarray"] == (np.asarray(rows) @ WEIGHTS * 2.0).tolist()
    assert answer["data"]["names"] == ["low", "high"]
    assert _post(envserve.url, {"jsonData": {"x": 1}}, "linear").json()["jsonData"] == {
        "keys": ["x"],
        "names": [],
        "puid": None,
    }


def test_the_same_class_over_v2(servers):
    _, envserve, _ = servers
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1.0, 2.0, 3.0]}]}
    for model in ("linear", "linear-py38"):
        r = httpx.post(envserve.url + "/v2/models/%s/infer" % model, json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == pytest.approx(
            (np.array([1.0, 2.0, 3.0]) @ WEIGHTS * 2.0).tolist()
        )


def test_feedback_and_metadata(servers):
    seldon, envserve, _ = servers
    feedback = {"request": {"data": {"ndarray": [[1.0, 2.0, 3.0]]}}, "reward": 0.5}
    ours = _post(envserve.url, feedback, "linear", "/api/v1.0/feedback")
    theirs = _post(seldon.url, feedback, path="/api/v1.0/feedback")
    assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
    assert ours.json()["data"] == theirs.json()["data"], (ours.text, theirs.text)
    ours = httpx.get(envserve.url + "/api/v1.0/metadata", headers={"X-Model-Name": "linear"}, timeout=60)
    theirs = httpx.get(seldon.url + "/api/v1.0/metadata", timeout=60)
    assert ours.status_code == theirs.status_code == 200
    for key in ("versions", "inputs", "outputs"):
        assert ours.json()[key] == theirs.json()[key], (key, ours.text, theirs.text)


def test_custom_metrics_reach_metrics(servers):
    seldon, envserve, seldon_metrics = servers
    for _ in range(2):
        _post(envserve.url, {"strData": "x"}, "linear-py38")
        _post(seldon.url, {"strData": "x"})
    ours, theirs = (
        httpx.get(envserve.url + "/metrics", timeout=60).text,
        httpx.get(seldon_metrics, timeout=60).text,
    )
    for name in ("linear_calls_total", "linear_scale", "linear_think_ms_bucket", "linear_think_ms_count"):
        assert name in theirs, name
        assert name in ours, (name, ours[-2000:])
    line = next(x for x in ours.splitlines() if x.startswith("linear_calls_total") and "linear-py38" in x)
    assert float(line.rsplit(" ", 1)[1]) >= 2.0, line
    assert 'model="linear-py38"' in line and 'version=""' in line


def test_classes_that_cannot_serve_fail_alone(servers):
    _, envserve, _ = servers
    index = {
        m["name"]: m for m in httpx.post(envserve.url + "/v2/repository/index", json={}, timeout=60).json()
    }
    assert index["raises-in-load"]["state"] == "UNAVAILABLE"
    assert (
        "RaisesInLoad.load() raised FileNotFoundError: no such file: model.bin"
        in index["raises-in-load"]["reason"]
    )
    assert index["no-predict"]["state"] == "UNAVAILABLE"
    assert "Broken.NoPredict" in index["no-predict"]["reason"]
    assert index["import-fails"]["state"] == "UNAVAILABLE"
    assert "importing Missing failed: ModuleNotFoundError" in index["import-fails"]["reason"]
    # a predict that raises, and an answer the protocol cannot carry: 500 naming class and method
    r = _post(envserve.url, {"strData": "fail"}, "linear")
    assert (
        r.status_code == 500
        and "Linear.predict raised RuntimeError: asked to fail" in r.json()["status"]["info"]
    )
    r = _post(envserve.url, {"strData": "object"}, "linear-py38")
    assert r.status_code == 500 and "Linear.predict returned object" in r.json()["status"]["info"], r.text
    # a client's mistake stays a 400, and the others keep serving
    r = _post(envserve.url, {"data": {"tensor": {"shape": [5], "values": [1.0]}}}, "linear")
    assert r.status_code == 400 and "does not fit" in r.json()["status"]["info"], r.text
    assert _post(envserve.url, {"strData": "ok"}, "linear").json()["strData"] == "OK"
