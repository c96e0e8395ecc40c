"""Seldon-era model environments: Python 3.6 + scikit-learn 0.22 and Python 3.7 + scikit-learn 0.23, built
here from pyenv's interpreters with a digits SVC trained inside them (examples/old_sklearn.py RECIPES).
Served through the packed tarball and through environment_path, over V2 and Seldon's protocol, with the
training-time predictions; and every worker-side module (with the mlserver stand-in) imports there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from examples import old_sklearn
from tests.conftest import write_model

pytestmark = pytest.mark.slow  # builds two old environments once per machine

SRC = Path(__file__).resolve().parents[2] / "src"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_imports import WORKER_CLOSURE  # noqa: E402

OLD = ("3.6", "3.7")


@pytest.fixture(scope="module")
def builds():
    return {v: old_sklearn.old_sklearn(old_sklearn.RECIPES[v]) for v in OLD}


def _unpacked(paths, target: Path) -> Path:
    """An existing environment, as a team has it on disk: the packed tarball unpacked by hand."""
    with tarfile.open(paths["tarball"]) as tar:
        tar.extractall(target)  # our own tarball, made by the test's builder
    return target


def test_old_environments_serve_their_models(tmp_path, start_server, builds):
    repo = tmp_path / "repo"
    for version, paths in builds.items():
        tag = version.replace(".", "")
        folder = write_model(
            repo,
            "digits-py%s" % tag,
            {
                "name": "digits-py%s" % tag,
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"environment_tarball": "./env.tar.gz"},
            },
            paths["model"],
        )
        shutil.copy(paths["tarball"], folder / "env.tar.gz")
        env = _unpacked(paths, tmp_path / ("env%s" % tag))
        write_model(
            repo,
            "digits-py%s-path" % tag,
            {
                "name": "digits-py%s-path" % tag,
                "implementation": "sklearn",
                "parameters": {"environment_path": str(env)},
            },
            paths["model"],
        )
    server = start_server(repo, env={"ENVSERVE_ENV_CACHE": str(tmp_path / "cache")})
    with server.client() as client:
        status = {m["name"]: m for m in client.get("/envserve/models").json()}
        for version, paths in builds.items():
            expected = old_sklearn.expected(paths)
            assert expected["python"].startswith(version + "."), expected
            rows, predictions = expected["rows"], expected["predictions"]
            tag = version.replace(".", "")
            for name in ("digits-py%s" % tag, "digits-py%s-path" % tag):
                assert status[name]["state"] == "READY", status[name]
                assert status[name]["environment"]["python"].startswith(version + "."), status[name]
                body = {"inputs": [{"name": "x", "shape": [len(rows), 64], "datatype": "FP64", "data": rows}]}
                r = client.post("/v2/models/%s/infer" % name, json=body)
                assert r.status_code == 200, r.text
                assert r.json()["outputs"][0]["data"] == predictions, name
                seldon = client.post(
                    "/api/v1.0/predictions",
                    json={"data": {"ndarray": rows[:5]}},
                    headers={"X-Model-Name": name},
                )
                assert seldon.status_code == 200, seldon.text
                assert seldon.json()["data"]["ndarray"] == predictions[:5]
                # a client's mistake in the old environment is still a 400 naming it
                bad = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}
                r = client.post("/v2/models/%s/infer" % name, json=bad)
                assert r.status_code == 400 and "expects 64 features" in r.json()["error"], r.text


@pytest.mark.parametrize("version", OLD)
def test_every_worker_side_module_imports_there(tmp_path, builds, version):
    env = _unpacked(builds[version], tmp_path / "env")
    from envserve.compat import PATH
    from envserve.environments.cache import find_python, runtime_env

    python = find_python(str(env))
    assert python is not None
    code = "import sys; sys.path.append(%r)\n" % PATH
    code += "\n".join("import %s" % m for m in WORKER_CLOSURE)
    code += "\nimport mlserver, mlserver.codecs, mlserver.types, mlserver.utils, mlserver.handlers"
    code += "\nprint(sys.version_info[:2])"
    proc = subprocess.run(
        [python, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **runtime_env(str(env)), "PYTHONPATH": str(SRC)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().replace("(", "[").replace(")", "]")) == [
        int(p) for p in version.split(".")
    ]


@pytest.mark.parametrize("version", OLD + ("3.8",))
def test_the_pickle_loader_holds_in_old_environments(tmp_path, builds, version):
    """The restricted loader as a worker runs it there (that Python, its numpy and scikit-learn): the
    environment's own model loads as joblib loads it, every attack of the corpus is refused under both
    policies, and 1,500 mutations of files written there are refused or loaded — nothing runs, nothing
    crashes."""
    paths = builds[version] if version in builds else old_sklearn.old_sklearn()  # 3.8: the default recipe
    env = _unpacked(paths, tmp_path / "env")
    python = str(env / "bin" / "python")
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "pickles"
    environ = {**os.environ, "PYTHONPATH": str(SRC)}
    same = subprocess.run(
        [python, "-W", "ignore", "-c",
         "import sys, joblib, numpy as np\n"
         "from envserve.runtimes.pickles import Policy, load_pickle\n"
         "m = load_pickle(sys.argv[1], Policy.for_model(['sklearn']))\n"
         "x = np.random.RandomState(0).rand(20, 64) * 16\n"
         "print((m.predict(x) == joblib.load(sys.argv[1]).predict(x)).all())\n",
         str(paths["model"])],
        capture_output=True, text=True, timeout=300, env=environ,
    )  # fmt: skip
    assert same.stdout.strip() == "True", same.stderr
    marker = tmp_path / "PWNED"
    for policy in ("default", "permissive"):
        corpus = subprocess.run(
            [python, str(fixtures / "attacks.py"), str(marker), str(tmp_path), policy],
            capture_output=True, text=True, timeout=300, env=environ,
        )  # fmt: skip
        assert corpus.returncode == 0, corpus.stderr
        outcomes = [line.split("\t")[2] for line in corpus.stdout.splitlines()]
        assert len(outcomes) >= 24 and all(o.startswith("refused ") for o in outcomes), corpus.stdout
    fuzz = subprocess.run(
        [python, "-W", "ignore", str(fixtures / "fuzz.py"), str(marker), str(tmp_path), "5", "1500"],
        capture_output=True, text=True, timeout=600, env=environ,
    )  # fmt: skip
    assert fuzz.returncode == 0, "the loading process died (%s): %s" % (fuzz.returncode, fuzz.stderr[-2000:])
    assert fuzz.stdout.splitlines()[-1].endswith(" error 0"), fuzz.stdout[-2000:]
    assert not marker.exists()
