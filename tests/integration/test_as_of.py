"""Environments rebuilt as of a model's training time: unpinned requirements resolve with the package index
as it was then (uv's --exclude-newer against the real PyPI), and the resolved pins are recorded. six 1.12.0
(December 2018) was the newest six until 1.13.0 (November 2019); numpy 1.15.4 the newest numpy with
Python 3.7 wheels on 2019-01-01."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # builds environments from PyPI

SIX = """
import numpy as np
import six

from envserve.runtimes.base import Runtime


class SixVersion(Runtime):
    def predict(self, request):
        return np.array([six.__version__, np.__version__], dtype=object)
"""


def _records(cache):
    return [json.loads(p.read_text()) for p in sorted((cache / "envs").glob("*.json"))]


def test_env_prepare_as_of_the_mlflow_models_creation(tmp_path):
    folder = tmp_path / "repo" / "old"
    folder.mkdir(parents=True)
    (folder / "MLmodel").write_text(
        "flavors:\n  python_function:\n    loader_module: mlflow.sklearn\n"
        "utc_time_created: '2019-01-01 10:00:00.000000'\n"
    )
    (folder / "python_env.yaml").write_text("python: 3.7.3\nbuild_dependencies: []\ndependencies:\n  - six\n")
    (folder / "model-settings.json").write_text(json.dumps({"name": "old", "implementation": "mlflow"}))
    cache = tmp_path / "cache"
    argv = [sys.executable, "-m", "envserve", "env", "prepare", str(tmp_path / "repo"), "--cache", str(cache)]
    proc = subprocess.run([*argv, "--as-of", "created"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "as of 2019-01-01T10:00:00Z" in proc.stdout
    (record,) = _records(cache)
    assert record["as_of"] == "2019-01-01T10:00:00Z" and record["python_version"].startswith("3.7.")
    assert "six==1.12.0" in record["resolved"] and "numpy==1.15.4" in record["resolved"]

    # without --as-of the same spec is another environment, with today's six
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    newer = [r for r in _records(cache) if "as_of" not in r]
    assert len(newer) == 1 and "six==1.12.0" not in newer[0]["resolved"]

    # a date that is not one is refused, naming it
    proc = subprocess.run([*argv, "--as-of", "last spring"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "'last spring' is not a date" in proc.stderr


def test_a_model_served_in_an_environment_as_of_a_date(tmp_path, start_server):
    folder = tmp_path / "repo" / "six-version"
    folder.mkdir(parents=True)
    (folder / "probe.py").write_text(SIX)
    (folder / "requirements.txt").write_text("six\n")
    settings = {
        "name": "six-version",
        "implementation": "probe.SixVersion",
        "parameters": {
            "environment": "./requirements.txt",
            "environment_python": "3.7",
            "environment_as_of": "2019-06-01",
        },
    }
    (folder / "model-settings.json").write_text(json.dumps(settings))
    server = start_server(tmp_path / "repo", env={"ENVSERVE_ENV_CACHE": str(tmp_path / "cache")})
    with server.client() as client:
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [0.0]}]}
        r = client.post("/v2/models/six-version/infer", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == ["1.12.0", "1.16.4"]
        status = {m["name"]: m for m in client.get("/envserve/models").json()}["six-version"]
        assert status["environment"]["python"].startswith("3.7.")
    assert server.stop() == 0
