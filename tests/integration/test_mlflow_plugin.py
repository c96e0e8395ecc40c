"""What replaced MLflow's --enable-mlserver, used as MLflow users would: `envserve mlflow serve -m URI`,
`mlflow deployments run-local -t envserve` (MLflow's own command, through envserve's plugin entry point),
and the deployment client on a model repository (`mlflow deployments create/list/get/predict/update/
delete -t envserve:/<folder>`), against a real MLflow tracking server. The image path (`envserve mlflow
build-docker`) is built for real in test_image.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import MLFLOW_SERVER_GROUP, Reference, ServerProcess, free_port

pytestmark = [pytest.mark.slow, MLFLOW_SERVER_GROUP]

MLFLOW = str(Path(sys.executable).parent / "mlflow")


def _predictions(mlflow_url, version, x):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.sklearn

        mlflow.set_tracking_uri(mlflow_url)
        return mlflow.sklearn.load_model("models:/digits/%s" % version).predict(x).tolist()


def _v2(x):
    return {"inputs": [{"name": "predict", "shape": list(x.shape), "datatype": "FP64", "data": x.tolist()}]}


@pytest.mark.parametrize(
    "command",
    [
        ["envserve", "mlflow", "serve", "-m", "models:/digits/1", "--env-manager", "local", "-p"],
        [
            "mlflow",
            "deployments",
            "run-local",
            "-t",
            "envserve",
            "--name",
            "mlflow-model",
            "-m",
            "models:/digits/1",
            "-C",
            "env_manager=local",
            "-C",
            "port=",
        ],
    ],
    ids=["envserve-mlflow-serve", "mlflow-deployments-run-local"],
)
def test_a_model_uri_is_served_as_enable_mlserver_served_it(tmp_path, registered_digits, digits, command):
    """The same endpoints out as `mlflow models serve -m URI --enable-mlserver`: V2 at
    /v2/models/mlflow-model/infer (MLflow's name for it), and MLflow's /invocations too."""
    x, _ = digits
    rows = x[-20:]
    expected = _predictions(registered_digits, 1, rows)
    port = free_port()
    argv = (
        [sys.executable, "-m", "envserve", *command[1:]]
        if command[0] == "envserve"
        else [MLFLOW, *command[1:]]
    )
    if argv[-1] == "port=":
        argv[-1] = "port=%d" % port
    else:
        argv.append(str(port))
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registered_digits,
        "ENVSERVE_ENV_CACHE": str(tmp_path / "cache"),
    }
    server = Reference(argv, "http://127.0.0.1:%d" % port, "/v2/health/ready", tmp_path / "log", env=env)
    try:
        server.wait(180)
        r = httpx.post(server.url + "/v2/models/mlflow-model/infer", json=_v2(rows), timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == expected
        r = httpx.post(server.url + "/invocations", json={"inputs": rows.tolist()}, timeout=60)
        assert r.status_code == 200 and r.json()["predictions"] == expected, r.text
    finally:
        server.stop()


def _mlflow(*args, env):
    done = subprocess.run(
        [MLFLOW, "deployments", *args], capture_output=True, text=True, env=env, timeout=300
    )
    return done


def test_mlflow_deployments_manage_a_servers_repository(tmp_path, registered_digits, digits):
    x, _ = digits
    rows = x[-15:]
    v1, v2 = _predictions(registered_digits, 1, rows), _predictions(registered_digits, 2, rows)
    assert v1 != v2
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registered_digits,
        "ENVSERVE_ENV_CACHE": str(tmp_path / "cache"),
    }
    server = ServerProcess(repo, [], env=env).wait_ready(120)
    try:
        target = "envserve:%s" % repo
        cfg = ["-C", "url=%s" % server.url, "-C", "env_manager=local"]
        env = {**env, "ENVSERVE_URL": server.url}
        done = _mlflow("create", "-t", target, "--name", "digits", "-m", "models:/digits/1", *cfg, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        settings = json.loads((repo / "digits" / "model-settings.json").read_text())
        assert settings["parameters"] == {"uri": "models:/digits/1", "environment": "server"}
        r = httpx.post(server.url + "/v2/models/digits/infer", json=_v2(rows), timeout=60)
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == v1
        again = _mlflow("create", "-t", target, "--name", "digits", "-m", "models:/digits/1", *cfg, env=env)
        assert again.returncode != 0 and "exists" in again.stderr

        listed = _mlflow("list", "-t", target, env=env)
        assert listed.returncode == 0 and "'name': 'digits'" in listed.stdout, listed.stdout + listed.stderr
        got = _mlflow("get", "-t", target, "--name", "digits", env=env)
        assert "models:/digits/1" in got.stdout and "READY" in got.stdout, got.stdout + got.stderr

        import pandas as pd

        (tmp_path / "in.json").write_text(pd.DataFrame(rows).to_json())  # as mlflow reads it
        predicted = _mlflow(
            "predict",
            "-t",
            target,
            "--name",
            "digits",
            "--input-path",
            str(tmp_path / "in.json"),
            "--output-path",
            str(tmp_path / "out.json"),
            env=env,
        )
        assert predicted.returncode == 0, predicted.stderr[-3000:]
        assert json.loads((tmp_path / "out.json").read_text())["predictions"] == v1

        done = _mlflow("update", "-t", target, "--name", "digits", "-m", "models:/digits/2", *cfg, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        r = httpx.post(server.url + "/v2/models/digits/infer", json=_v2(rows), timeout=60)
        assert r.json()["outputs"][0]["data"] == v2

        bad = _mlflow("create", "-t", target, "--name", "../escape", "-m", "models:/digits/1", *cfg, env=env)
        assert bad.returncode != 0 and "not a deployment name" in bad.stderr
        assert not (tmp_path / "escape").exists()

        done = _mlflow("delete", "-t", target, "--name", "digits", env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert not (repo / "digits").exists()
        r = httpx.post(server.url + "/v2/models/digits/infer", json=_v2(rows), timeout=60)
        assert r.status_code == 503 and "unloaded" in r.json()["error"], r.text  # docs/api.md
    finally:
        server.stop()


def test_the_guides_mlflow_commands_run_as_written(tmp_path, registered_digits, digits):
    """docs/from-mlserver.md's MLflow section: each server started as written answers the request."""
    from tests.integration.from_mlserver_doc import run_blocks

    x, _ = digits
    rows = x[:3]
    (tmp_path / "request.json").write_text(json.dumps(_v2(rows)))
    env = {"MLFLOW_TRACKING_URI": registered_digits, "ENVSERVE_ENV_CACHE": str(tmp_path / "cache")}
    printed = run_blocks(tmp_path, ("mlflow", "mlflow-background"), env)
    expected = _predictions(registered_digits, 1, rows)
    assert len(printed) == 2
    for text in printed:
        assert json.loads(text)["outputs"][0]["data"] == expected
