"""A bill of materials per model (CycloneDX 1.6 ML-BOM), from the live server and from ``envserve env bom``,
validated against the CycloneDX schema: the files' SHA-256, the Python and exact packages of the
environment the model runs in (Python 3.8 + scikit-learn 0.24.2 for the packed one, the server's own for
an in-process one), the runtime, and the MLflow run of an MLflow model."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
from importlib import metadata

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from examples import old_sklearn as envs
from tests.conftest import write_model

pytestmark = pytest.mark.slow  # the Python 3.8 environment is built once per session

RUN_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def _valid(doc):
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(doc))
    assert error is None, error
    return doc


def _components(doc):
    return {c["name"]: c for c in doc["components"]}


def _properties(doc):
    return {p["name"]: p["value"] for p in doc["metadata"]["component"]["properties"]}


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def repo(tmp_path, digits_model_file, digits):
    repo = tmp_path / "repo"
    write_model(repo, "digits", {"name": "digits", "implementation": "sklearn"}, digits_model_file)
    envs.write_model_folder(repo / "digits-py38", name="digits-py38")
    import joblib

    mlflow = repo / "iris-mlflow"
    mlflow.mkdir()
    (mlflow / "MLmodel").write_text(
        "artifact_path: model\nflavors:\n  sklearn:\n    pickled_model: model.pkl\n"
        "    serialization_format: pickle\n    sklearn_version: 1.5.0\n"
        "  python_function:\n    loader_module: mlflow.sklearn\n    model_path: model.pkl\n"
        "mlflow_version: 2.17.0\nmodel_uuid: 7d0c9f2a3b4e4f5a8b9c0d1e2f3a4b5c\n"
        "run_id: %s\nutc_time_created: '2021-03-04 05:06:07.000000'\n" % RUN_ID
    )
    (mlflow / "model.pkl").write_bytes(pickle.dumps(joblib.load(digits_model_file)))
    write_model(
        repo,
        "iris-mlflow",
        {"name": "iris-mlflow", "implementation": "mlflow", "parameters": {"environment": "server"}},
    )
    return repo


def test_the_server_serves_each_models_bom(repo, tmp_path, start_server):
    server = start_server(repo, env={"ENVSERVE_ENV_CACHE": str(tmp_path / "cache")})
    with server.client() as client:
        r = client.get("/envserve/models/digits-py38/bom")
        assert r.status_code == 200, r.text
        old = _valid(r.json())
        assert (
            old["specVersion"] == "1.6" and old["metadata"]["component"]["type"] == "machine-learning-model"
        )
        parts = _components(old)
        assert parts["python"]["version"].startswith("3.8.")
        assert parts["scikit-learn"]["version"] == "0.24.2"
        assert parts["scikit-learn"]["purl"] == "pkg:pypi/scikit-learn@0.24.2"
        assert parts["model.joblib"]["hashes"] == [
            {"alg": "SHA-256", "content": _sha256(repo / "digits-py38" / "model.joblib")}
        ]
        assert "old-sklearn.tar.gz" not in parts  # the environment is listed by its packages instead
        assert "pydantic" not in parts and "envserve" not in parts  # nothing of the server's environment
        props = _properties(old)
        assert props["envserve:runtime"] == "sklearn" and props["envserve:environment"] == "tarball"
        assert len(props["envserve:environment_hash"]) == 64

        own = _valid(client.get("/envserve/models/digits/bom").json())
        parts = _components(own)
        assert parts["scikit-learn"]["version"] == metadata.version("scikit-learn")
        assert parts["python"]["version"] == "%d.%d.%d" % sys.version_info[:3]
        assert _properties(own)["envserve:environment"] == "server"

        flow = _valid(client.get("/envserve/models/iris-mlflow/bom").json())
        props = _properties(flow)
        assert props["mlflow:run_id"] == RUN_ID and props["mlflow:utc_time_created"].startswith("2021-03-04")
        assert props["mlflow:flavors"] == "python_function,sklearn"
        assert _components(flow)["model.pkl"]["hashes"][0]["content"] == _sha256(
            repo / "iris-mlflow" / "model.pkl"
        )

        missing = client.get("/envserve/models/nope/bom")
        assert missing.status_code == 404 and "nope" in missing.text
    assert server.stop() == 0


def test_env_bom_writes_the_same_document_from_the_command_line(repo, tmp_path):
    out = tmp_path / "bom.json"
    proc = subprocess.run(
        [sys.executable, "-m", "envserve", "env", "bom", str(repo / "digits-py38"), "-o", str(out),
         "--cache", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = _valid(json.loads(out.read_text()))
    parts = _components(doc)
    assert parts["scikit-learn"]["version"] == "0.24.2" and parts["python"]["version"].startswith("3.8.")
    assert _properties(doc)["envserve:runtime"] == "sklearn"
    proc = subprocess.run(
        [sys.executable, "-m", "envserve", "env", "bom", str(tmp_path / "no-such-model")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "no such model folder" in proc.stderr
