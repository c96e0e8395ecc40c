"""What a model folder may run, served by a real server: malicious pickles are refused by the restricted
loader naming the global and the file, their code never runs (the marker file is never created), and the
other models serve — in the server (in process), inside a user's Seldon class as it loads, in an MLflow
folder, and in a worker on Python 3.8 (the loader runs inside the model's own environment). A model's own
settings cannot widen the policy; a model's own code runs only when the operator trusts model code."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest

from examples import old_sklearn as envs
from tests.conftest import custom_model, write_model

pytestmark = pytest.mark.slow  # the Python 3.8 environment is built once per session

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "seldon"


class _Touch:
    """Unpickling this runs ``os.system("touch <marker>")``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, ("touch %s" % self.marker,))


def _states(client):
    return {m["name"]: m for m in client.get("/envserve/models").json()}


def test_malicious_pickles_are_refused_before_they_run(tmp_path, start_server, digits_model_file, digits):
    repo = tmp_path / "repo"
    markers = {
        name: tmp_path / ("PWNED-" + name) for name in ("sklearn", "seldon", "mlflow", "py38", "off", "wider")
    }
    write_model(repo, "good", {"name": "good", "implementation": "sklearn"}, digits_model_file)
    # a real model with an attack after one of joblib's raw arrays, served in process
    evil = write_model(repo, "evil-sklearn", {"name": "evil-sklearn", "implementation": "sklearn"})
    model = joblib.load(digits_model_file)
    joblib.dump(
        {"model": model, "x": np.arange(64.0), "y": _Touch(markers["sklearn"])}, evil / "model.joblib"
    )
    # a Seldon class that unpickles a poisoned file as it loads: the loader it calls is envserve's
    seldon = write_model(
        repo,
        "evil-seldon",
        {
            "name": "evil-seldon",
            "implementation": "seldon",
            "parameters": {"extra": {"model_name": "Loader"}},
        },
    )
    (seldon / "Loader.py").write_text(
        "import joblib\n\n\nclass Loader:\n    def load(self):\n"
        "        self.pre = joblib.load('preprocessor.pkl')\n\n    def predict(self, X, names=None):\n"
        "        return X\n"
    )
    (seldon / "preprocessor.pkl").write_bytes(pickle.dumps(_Touch(markers["seldon"]), protocol=2))
    # an MLflow folder whose sklearn flavor points at the attack
    mlflow = repo / "evil-mlflow"
    mlflow.mkdir()
    (mlflow / "MLmodel").write_text(
        "flavors:\n  sklearn:\n    pickled_model: model.pkl\n    serialization_format: pickle\n"
        "  python_function:\n    loader_module: mlflow.sklearn\n    model_path: model.pkl\n"
    )
    (mlflow / "model.pkl").write_bytes(pickle.dumps(_Touch(markers["mlflow"]), protocol=0))
    write_model(
        repo,
        "evil-mlflow",
        {"name": "evil-mlflow", "implementation": "mlflow", "parameters": {"environment": "server"}},
    )
    # a model's own settings turning the checks off, or widening them: refused, the file never read
    off = write_model(
        repo,
        "unscanned",
        {"name": "unscanned", "implementation": "sklearn", "parameters": {"pickle_scan": False}},
    )
    (off / "model.pkl").write_bytes(pickle.dumps(_Touch(markers["off"])))
    wider = write_model(
        repo,
        "widened",
        {"name": "widened", "implementation": "sklearn", "parameters": {"pickle_allow": ["posix.*"]}},
    )
    (wider / "model.pkl").write_bytes(pickle.dumps(_Touch(markers["wider"])))
    # the Python 3.8 worker: the loader, on its own Python, refuses an attack nested in an object array
    py38 = envs.write_model_folder(repo / "evil-py38", name="evil-py38")
    # (written by hand as joblib lays it out: joblib.dump here would name numpy 2's modules, which the
    # environment's numpy 1.19 does not have, and the load would stop there before the attack)
    from joblib.numpy_pickle import NumpyArrayWrapper

    wrapper = NumpyArrayWrapper(np.ndarray, (3,), "C", np.dtype(object))
    outer = pickle.dumps(wrapper, protocol=2)
    assert outer.endswith(b"b.")  # BUILD, STOP: the array's own pickle goes between them
    nested = pickle.dumps([1, "a", _Touch(markers["py38"])], protocol=2)
    (py38 / "model.joblib").write_bytes(outer[:-1] + nested + b".")

    server = start_server(repo, env={"ENVSERVE_ENV_CACHE": str(tmp_path / "cache")})
    with server.client() as client:
        states = _states(client)
        expected = {
            "evil-sklearn": ("posix.system", "model.joblib"),
            "evil-seldon": ("posix.system", "preprocessor.pkl"),
            "evil-mlflow": ("posix.system", "model.pkl"),
            "evil-py38": ("posix.system", "model.joblib"),
        }
        for name, (global_name, filename) in expected.items():
            status = states[name]
            assert status["state"] == "UNAVAILABLE", status
            reason = status["reason"]
            assert global_name in reason and filename in reason and "pickle_allow" in reason, reason
            assert "nothing was loaded" in reason, reason
            r = client.post("/v2/models/%s/infer" % name, json={"inputs": []})
            assert r.status_code in (400, 503), r.text  # not READY: nothing of it answers
        x, _ = digits
        body = {
            "inputs": [{"name": "x", "shape": [2, 64], "datatype": "FP64", "data": x[:2].ravel().tolist()}]
        }
        r = client.post("/v2/models/good/infer", json=body)
        assert r.status_code == 200, r.text
        for name, said in (
            ("unscanned", "pickle_scan=false cannot be set by a model's settings"),
            ("widened", "cannot widen what the server unpickles (posix.*)"),
        ):
            assert states[name]["state"] == "UNAVAILABLE" and said in states[name]["reason"], states[name]
    for name in markers:
        assert not markers[name].exists(), "the %s pickle ran" % name
    assert server.stop() == 0


def test_a_server_wide_allow_list_admits_a_trusted_global(tmp_path, start_server):
    """``pickle_allow`` names what every model's pickles may build beside the defaults (here a harmless
    class the defaults do not include); the operator sets it, and a model may then narrow it."""
    repo = tmp_path / "repo"
    folder = write_model(repo, "weights", {"name": "weights", "implementation": "sklearn"})
    from sklearn.linear_model import LinearRegression

    model = LinearRegression().fit(np.arange(6.0).reshape(3, 2), [1.0, 2.0, 3.0])
    model.fit_info_ = __import__("ipaddress").ip_address("127.0.0.1")  # pickled as ipaddress.IPv4Address
    joblib.dump(model, folder / "model.joblib")
    server = start_server(repo)
    with server.client() as client:
        status = _states(client)["weights"]
        assert status["state"] == "UNAVAILABLE" and "ipaddress.IPv4Address" in status["reason"], status
    server.stop()
    server = start_server(repo, env={"ENVSERVE_PICKLE_ALLOW": "ipaddress.IPv4Address"})
    with server.client() as client:
        assert _states(client)["weights"]["state"] == "READY"
        body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 1.0]}]}
        r = client.post("/v2/models/weights/infer", json=body)
        assert r.status_code == 200 and json.loads(r.text)["outputs"][0]["data"] == pytest.approx(
            model.predict([[1.0, 1.0]]).tolist()
        ), r.text
    assert server.stop() == 0


def test_model_code_runs_only_when_the_operator_trusts_it(tmp_path, start_server, digits_model_file, digits):
    """By default a runtime class of the model's own is refused, saying what to set, and the model files
    that are data still serve; the operator's ``trust_model_code`` runs it."""
    repo = tmp_path / "repo"
    write_model(repo, "digits", {"name": "digits", "implementation": "sklearn"}, digits_model_file)
    custom_model(repo, "echo", "Echo")
    server = start_server(repo, env={"ENVSERVE_TRUST_MODEL_CODE": None})  # the default
    with server.client() as client:
        states = _states(client)
        assert states["digits"]["state"] == "READY", states
        echo = states["echo"]
        assert echo["state"] == "UNAVAILABLE", echo
        assert "runtimes.Echo" in echo["reason"] and "trust_model_code=false" in echo["reason"], echo
    assert server.stop() == 0
    server = start_server(repo, env={"ENVSERVE_TRUST_MODEL_CODE": "true"})
    with server.client() as client:
        assert _states(client)["echo"]["state"] == "READY"
    assert server.stop() == 0
