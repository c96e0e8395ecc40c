"""MLflow model folders (an MLmodel file) served natively or through python_function, in the server's
environment or in the environment the model declares."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from tests.conftest import write_model

pytestmark = pytest.mark.slow  # builds the models' own environments


@pytest.fixture(scope="module")
def mlflow_models(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.sklearn
        from mlflow.models import infer_signature
        from sklearn import datasets, linear_model, svm

    root = tmp_path_factory.mktemp("mlflow-models")
    iris = datasets.load_iris(as_frame=True)
    x, y = iris.data, iris.target
    columns = linear_model.LogisticRegression(max_iter=500).fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(
            columns, str(root / "iris"), signature=infer_signature(x, columns.predict(x))
        )
    digits = datasets.load_digits()
    dx = digits.images.reshape((len(digits.images), -1)).astype(np.float32)
    tensor = svm.SVC(gamma=0.001).fit(dx[:500], digits.target[:500])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(
            tensor,
            str(root / "digits"),
            serialization_format="cloudpickle",
            signature=infer_signature(dx[:5], tensor.predict(dx[:5])),
        )
    import operator

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    negated = make_pipeline(FunctionTransformer(operator.neg), linear_model.LogisticRegression(max_iter=500))
    negated.fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(  # MLflow 3's default format: skops, with the type skops must be told of
            negated,
            str(root / "negated"),
            signature=infer_signature(x, negated.predict(x)),
            skops_trusted_types=["_operator.neg"],
        )
    assert (root / "iris" / "model.skops").exists() and (root / "negated" / "model.skops").exists()
    return {"root": root, "iris": (columns, x), "digits": (tensor, dx), "negated": (negated, x)}


def test_mlflow_models_in_the_server_environment(tmp_path, start_server, mlflow_models):
    import shutil

    for name in ("iris", "digits"):
        shutil.copytree(mlflow_models["root"] / name, tmp_path / name)
        (tmp_path / name / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "implementation": "mlserver_mlflow.MLflowRuntime",
                    "parameters": {"environment": "server"},
                }
            )
        )
    server = start_server(tmp_path)
    columns, x = mlflow_models["iris"]
    tensor, dx = mlflow_models["digits"]
    with server.client() as client:
        meta = client.get("/v2/models/iris").json()
        assert meta["platform"] == "mlflow"
        assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [(c, "FP64") for c in x.columns]
        assert meta["outputs"] == [{"name": "predict", "datatype": "INT64", "shape": [-1]}]
        rows = x.iloc[45:55]
        body = {
            "inputs": [
                {"name": c, "shape": [10], "datatype": "FP64", "data": rows[c].tolist()} for c in x.columns
            ]
        }
        r = client.post("/v2/models/iris/infer", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == columns.predict(rows).tolist()
        # one [N, 4] input is split into the signature's columns, in order
        r = client.post(
            "/v2/models/iris/infer",
            json={
                "inputs": [
                    {
                        "name": "features",
                        "shape": [10, 4],
                        "datatype": "FP64",
                        "data": rows.to_numpy().tolist(),
                    }
                ]
            },
        )
        assert r.json()["outputs"][0]["data"] == columns.predict(rows).tolist()
        r = client.post("/v2/models/iris/infer", json={"inputs": [body["inputs"][0]]})
        assert r.status_code == 400 and "missing input column(s) 'sepal width (cm)'" in r.json()["error"]

        meta = client.get("/v2/models/digits").json()
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
        r = client.post(
            "/v2/models/digits/infer",
            json={
                "inputs": [
                    {"name": "input", "shape": [20, 64], "datatype": "FP32", "data": dx[-20:].tolist()}
                ]
            },
        )
        assert r.json()["outputs"][0]["data"] == tensor.predict(dx[-20:]).tolist()
        status = {m["name"]: m for m in client.get("/envserve/models").json()}
        assert status["iris"]["environment"] is None and status["digits"]["runtime"] == "MLflowRuntime"


@pytest.mark.slow
def test_mlflow_model_in_its_own_environment(tmp_path, start_server, mlflow_models):
    """No settings beyond the MLflow folder: the runtime is guessed from MLmodel and the environment is
    built from the model's own python_env.yaml (mlflow, scikit-learn, ... pinned as logged)."""
    import shutil

    shutil.copytree(mlflow_models["root"] / "iris", tmp_path / "iris")
    write_model(tmp_path, "iris", {"name": "iris"})
    server = start_server(tmp_path, env={"ENVSERVE_ENV_CACHE": str(tmp_path / "cache")})
    columns, x = mlflow_models["iris"]
    with server.client() as client:
        status = {m["name"]: m for m in client.get("/envserve/models").json()}["iris"]
        assert status["state"] == "READY", status
        assert status["environment"]["kind"] == "spec" and status["environment"]["source"].endswith(
            "python_env.yaml"
        )
        rows = x.iloc[:30]
        body = {
            "inputs": [
                {"name": c, "shape": [30], "datatype": "FP64", "data": rows[c].tolist()} for c in x.columns
            ]
        }
        r = client.post("/v2/models/iris/infer", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == columns.predict(rows).tolist()


def test_mlflow_3_skops_models_load_without_mlflow(tmp_path, start_server, mlflow_models):
    """MLflow 3 saves scikit-learn models with skops: served from an environment with scikit-learn and
    skops but no mlflow, skops building only the types it trusts and those the MLmodel lists *and* the
    operator allows (the MLmodel comes from where the file comes from); a file whose types are not listed,
    or a model that narrows the operator's list, is refused, naming them."""
    import shutil

    import yaml

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("scikit-learn==1.9.1\nskops==0.16.0\npandas>=2,<3\npyyaml>=6,<7\n")
    for name in ("iris", "negated"):
        shutil.copytree(mlflow_models["root"] / name, tmp_path / "repo" / name)
    shutil.copytree(mlflow_models["root"] / "negated", tmp_path / "repo" / "unlisted")
    mlmodel = tmp_path / "repo" / "unlisted" / "MLmodel"
    doc = yaml.safe_load(mlmodel.read_text())
    doc["flavors"]["sklearn"]["skops_trusted_types"] = None  # the list removed: the type is not trusted
    mlmodel.write_text(yaml.safe_dump(doc))
    shutil.copytree(mlflow_models["root"] / "negated", tmp_path / "repo" / "narrowed")
    for name in ("iris", "negated", "unlisted", "narrowed"):
        parameters = {"environment": str(requirements), "environment_python": "3.11"}
        if name == "narrowed":
            parameters["pickle_allow"] = []  # narrower than the server's
        write_model(tmp_path / "repo", name, {"name": name, "parameters": parameters})
    env = {"ENVSERVE_ENV_CACHE": str(tmp_path / "cache"), "ENVSERVE_PICKLE_ALLOW": "_operator.neg"}
    server = start_server(tmp_path / "repo", env=env)
    with server.client() as client:
        status = {m["name"]: m for m in client.get("/envserve/models").json()}
        for name in ("iris", "negated"):
            assert status[name]["state"] == "READY", status[name]
            model, x = mlflow_models[name]
            rows = x.iloc[40:60]
            body = {
                "inputs": [
                    {"name": c, "shape": [20], "datatype": "FP64", "data": rows[c].tolist()}
                    for c in x.columns
                ]
            }
            r = client.post("/v2/models/%s/infer" % name, json=body)
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["data"] == model.predict(rows).tolist()
        for name in ("unlisted", "narrowed"):
            refused = status[name]
            assert refused["state"] == "UNAVAILABLE"
            assert "holds types skops does not trust: _operator.neg" in refused["reason"], refused
            assert "the operator allows them in the server's pickle_allow" in refused["reason"], refused
    assert "needs mlflow" not in server.log


def test_a_pyfunc_model_gets_the_requests_parameters_as_its_params(tmp_path, start_server):
    """MLflow's inference params, as MLServer's MLflow runtime passes them: the V2 request's parameters
    (but content_type, headers and envserve's own) reach PythonModel.predict as ``params``; the
    signature's default applies when the request has none."""
    import textwrap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.pyfunc
        from mlflow.models import infer_signature

    code = tmp_path / "scaler.py"
    code.write_text(
        textwrap.dedent(
            """
            import mlflow


            class Scaler(mlflow.pyfunc.PythonModel):
                def predict(self, context, model_input, params=None):
                    factor = (params or {}).get("multiplier", 1.0)
                    return model_input * factor


            mlflow.models.set_model(Scaler())
            """
        )
    )
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    folder = tmp_path / "repo" / "scaler"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.pyfunc.save_model(
            str(folder), python_model=str(code), signature=infer_signature(x, x, params={"multiplier": 1.0})
        )
    (folder / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "scaler",
                "implementation": "mlserver_mlflow.MLflowRuntime",
                "parameters": {"environment": "server"},
            }
        )
    )
    server = start_server(tmp_path / "repo")
    body = {"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP64", "data": x.tolist()}]}
    with server.client() as client:
        r = client.post("/v2/models/scaler/infer", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0]
        r = client.post(
            "/v2/models/scaler/infer", json=dict(body, parameters={"multiplier": 3.0, "content_type": "np"})
        )
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [3.0, 6.0, 9.0, 12.0]
