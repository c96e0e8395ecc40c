"""Seldon's MLFLOW_SERVER parameter ``xtype``: a Seldon ``data`` message reaches the MLflow model as that
server hands it over — the array itself (``ndarray``) or a DataFrame whose columns are ``data.names``."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.inprocess.conftest import client, served

PROBE = textwrap.dedent(
    """
    import mlflow
    import numpy as np


    class Probe(mlflow.pyfunc.PythonModel):
        # a DataFrame answers its column "b" times ten; an array its first column
        def predict(self, context, model_input, params=None):
            if hasattr(model_input, "columns"):
                return model_input["b"].to_numpy() * 10
            return np.asarray(model_input)[:, 0]


    mlflow.models.set_model(Probe())
    """
)
MESSAGE = {"data": {"names": ["a", "b"], "ndarray": [[1, 2], [3, 4]]}}


@pytest.fixture(scope="module")
def probe_model(tmp_path_factory):
    import warnings

    work = tmp_path_factory.mktemp("xtype")
    (work / "probe.py").write_text(PROBE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mlflow asks for type hints on predict (at import too)
        import mlflow.pyfunc

        mlflow.pyfunc.save_model(str(work / "model"), python_model=str(work / "probe.py"))
    return work / "model"


def _repo(tmp_path, model, extra):
    folder = tmp_path / "probe"
    folder.mkdir()
    settings = {
        "name": "probe",
        "implementation": "mlflow",
        "parameters": {"uri": str(model), "environment": "server"},
    }
    if extra is not None:
        settings["parameters"]["extra"] = extra
    (folder / "model-settings.json").write_text(json.dumps(settings))
    return tmp_path


@pytest.mark.parametrize(
    "xtype,expected",
    [("DataFrame", [20, 40]), ("ndarray", [1, 3])],
)
def test_xtype_hands_the_model_a_dataframe_or_the_array(tmp_path, arun, probe_model, xtype, expected):
    async def go():
        async with served(_repo(tmp_path, probe_model, {"xtype": xtype})) as server, client(server) as c:
            r = await c.post("/api/v1.0/predictions", json=MESSAGE)
            assert r.status_code == 200, r.text
            assert r.json()["data"]["ndarray"] == expected
            # without names, a DataFrame has no column "b": the model's KeyError is the client's mistake
            r = await c.post("/api/v1.0/predictions", json={"data": {"ndarray": [[1, 2]]}})
            if xtype == "DataFrame":
                assert r.status_code == 400 and "'b'" in r.text, r.text
            else:
                assert r.status_code == 200 and r.json()["data"]["ndarray"] == [1]

    arun(go())
