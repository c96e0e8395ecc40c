"""MLflow scoring-server endpoints and Seldon Core v1's protocol, over the same data plane as V2 —
including for a model that runs in its own environment (a worker process)."""

from __future__ import annotations

import base64
import json
import shutil

import pytest

from tests.conftest import custom_model, write_model
from tests.integration.test_mlflow_models import mlflow_models  # noqa: F401 - shared fixture

# one process sets up the module's servers (MLflow models in their environments), not both
pytestmark = pytest.mark.xdist_group("compat-protocols")


@pytest.fixture(scope="module")
def served(tmp_path_factory, mlflow_models, digits_model_file):  # noqa: F811
    from tests.conftest import ServerProcess

    repo = tmp_path_factory.mktemp("compat")
    shutil.copytree(mlflow_models["root"] / "iris", repo / "iris")
    (repo / "iris" / "model-settings.json").write_text(
        json.dumps({"name": "iris", "parameters": {"environment": "server"}})
    )
    write_model(repo, "digits", {"name": "digits", "implementation": "sklearn"}, digits_model_file)
    custom_model(repo, "echo", "Echo")
    server = ServerProcess(repo, [])
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def test_mlflow_invocations_formats(served, mlflow_models):  # noqa: F811
    columns, x = mlflow_models["iris"]
    rows = x.iloc[60:70]
    expected = columns.predict(rows).tolist()
    with served.client() as client:
        split = {"dataframe_split": {"columns": list(x.columns), "data": rows.to_numpy().tolist()}}
        r = client.post("/invocations?model=iris", json=split)
        assert r.status_code == 200, r.text
        assert r.json() == {"predictions": expected}
        records = {"dataframe_records": rows.to_dict(orient="records")}
        assert (
            client.post("/invocations", json=records, headers={"X-Model-Name": "iris"}).json()["predictions"]
            == expected
        )
        csv = rows.to_csv(index=False)
        r = client.post("/invocations?model=iris", content=csv.encode(), headers={"content-type": "text/csv"})
        assert r.json()["predictions"] == expected
        r = client.post("/invocations?model=iris", json={"instances": rows.to_dict(orient="records")})
        assert r.json()["predictions"] == expected
        # a matrix has no column names: MLflow's signature check refuses it, and so does envserve
        r = client.post("/invocations?model=iris", json={"instances": rows.to_numpy().tolist()})
        assert r.status_code == 400 and "Model is missing inputs" in r.json()["message"]
        r = client.post("/invocations?model=digits", json={"inputs": [[0.0] * 64, [1.0] * 64]})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 2
        # several models: the model must be named, and the error says how
        r = client.post("/invocations", json=split)
        assert r.status_code == 400 and "name one with the query parameter ?model=NAME" in r.json()["error"]
        r = client.post(
            "/invocations?model=iris", json={"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}
        )
        assert r.status_code == 400 and "1 columns passed, passed data had 2 columns" in r.json()["error"]
        assert r.json()["error_code"] == "BAD_REQUEST"
        r = client.post("/invocations?model=iris", json={"instances": [1], "inputs": [1]})
        assert r.status_code == 400 and "exactly one of" in r.json()["error"]
        assert client.get("/ping").status_code == 200 and client.get("/health").json() == {"status": "ok"}
        assert client.get("/version").json() == __import__("envserve").__version__


def test_seldon_v1_protocol(served, digits, digits_model_file):
    import joblib

    x, _ = digits
    expected = joblib.load(digits_model_file).predict(x[:3]).tolist()
    with served.client() as client:
        r = client.post("/api/v1.0/predictions?model=digits", json={"data": {"ndarray": x[:3].tolist()}})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["data"]["ndarray"] == expected and doc["meta"]["requestPath"] == {"digits": ""}
        tensor = {
            "data": {"tensor": {"shape": [3, 64], "values": x[:3].ravel().tolist()}},
            "meta": {"puid": "p-1"},
        }
        doc = client.post("/api/v1.0/predictions?model=digits", json=tensor).json()
        assert doc["data"]["tensor"] == {"shape": [3], "values": [float(v) for v in expected]}
        assert doc["meta"]["puid"] == "p-1"
        doc = client.post("/api/v1.0/predictions?model=echo", json={"strData": "hello"}).json()
        assert doc["strData"] == "hello"
        doc = client.post("/api/v1.0/predictions?model=echo", json={"jsonData": {"a": [1, 2]}}).json()
        assert doc["jsonData"] == {"a": [1, 2]}
        raw = base64.b64encode(b"\x00\xffbin\x00").decode()
        doc = client.post("/api/v1.0/predictions?model=echo", json={"binData": raw}).json()
        assert base64.b64decode(doc["binData"]) == b"\x00\xffbin\x00"
        # Seldon-style errors
        r = client.post("/api/v1.0/predictions?model=digits", json={"data": {"ndarray": [[1, 2], [3]]}})
        assert r.status_code == 400
        assert r.json() == {
            "status": {
                "code": 400,
                "info": "data.ndarray is ragged: every row must have the same length",
                "reason": "MICROSERVICE_BAD_DATA",
                "status": "FAILURE",
            }
        }
        r = client.post("/api/v1.0/predictions?model=nope", json={"data": {"ndarray": [[1]]}})
        assert r.status_code == 404 and r.json()["status"]["status"] == "FAILURE"
        assert client.get("/health/ping").text == "pong"  # as Seldon's wrapper answers it
        assert client.get("/health/status").status_code == 200
        meta = client.get("/metadata?model=iris").json()
        assert meta["name"] == "iris" and len(meta["inputs"]) == 4


@pytest.mark.slow
def test_invocations_for_a_model_in_its_own_environment(tmp_path, start_server, old_sklearn_paths):
    from examples import old_sklearn

    expected = old_sklearn.expected(old_sklearn_paths)
    folder = old_sklearn.write_model_folder(tmp_path / "mnist-svm-py38")
    assert folder.exists()
    server = start_server(tmp_path, env={"ENVSERVE_ENV_CACHE": str(tmp_path / "cache")})
    with server.client() as client:
        r = client.post("/invocations", json={"instances": expected["rows"][:10]})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == expected["predictions"][:10]
        r = client.post("/api/v1.0/predictions", json={"data": {"ndarray": expected["rows"][:10]}})
        assert r.json()["data"]["ndarray"] == expected["predictions"][:10]
        status = client.get("/envserve/models").json()[0]
        assert status["environment"]["python"].startswith("3.8.")


@pytest.fixture(scope="session")
def old_sklearn_paths():
    from examples import old_sklearn

    return old_sklearn.old_sklearn()
