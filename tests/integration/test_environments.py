"""Models in their own Python environments, served by real worker processes (the environments issue).

The scenario: the digits SVC trained on Python 3.8 + scikit-learn 0.24.2, packed with ``envserve env
pack`` from a venv whose interpreter was removed afterwards, served by this Python 3.11 server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from examples import old_sklearn as envs
from tests.conftest import write_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def old_sklearn():
    return envs.old_sklearn()


@pytest.fixture
def env_cache(tmp_path):
    return {"ENVSERVE_ENV_CACHE": str(tmp_path / "env-cache")}


def _body(rows):
    return {"inputs": [{"name": "predict", "shape": [len(rows), 64], "datatype": "FP32", "data": rows}]}


def _scenario_model(repo: Path, old_sklearn, name="mnist-svm", **params) -> Path:
    folder = repo / name
    folder.mkdir(parents=True)
    shutil.copy(old_sklearn["tarball"], folder / "old-sklearn.tar.gz")
    shutil.copy(old_sklearn["model"], folder / "model.joblib")
    settings = {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"environment_tarball": "./old-sklearn.tar.gz", **params},
    }
    (folder / "model-settings.json").write_text(json.dumps(settings))
    return folder


def _status(client, name):
    rows = [r for r in client.get("/envserve/models").json() if r["name"] == name]
    assert len(rows) == 1, rows
    return rows[0]


def _workers(client, name):
    """The model's workers; a model that has none (not loaded) fails the test with its state and reason."""
    status = _status(client, name)
    assert "workers" in status, status
    return status["workers"]


def _wait(predicate, timeout=10.0, what="condition", log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(
        "timed out after %ss waiting for %s%s" % (timeout, what, "\n" + log.log if log is not None else "")
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open("/proc/%d/stat" % pid) as f:
        return f.read().split()[2] != "Z"


def test_scenario_python38_sklearn0242_tarball(
    tmp_path, start_server, old_sklearn, digits_model_file, env_cache
):
    expected = envs.expected(old_sklearn)
    assert expected["python"].startswith("3.8.") and expected["sklearn"] == "0.24.2"
    _scenario_model(tmp_path, old_sklearn)
    write_model(
        tmp_path, "in-process", {"name": "in-process", "implementation": "sklearn"}, digits_model_file
    )
    server = start_server(tmp_path, env=env_cache)
    with server.client() as client:
        r = client.post("/v2/models/mnist-svm/infer", json=_body(expected["rows"]))
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == expected["predictions"]
        assert client.post("/v2/models/in-process/infer", json=_body(expected["rows"][:3])).status_code == 200

        status = _status(client, "mnist-svm")
        assert status["state"] == "READY" and status["runtime"] == "SKLearnRuntime"
        env = status["environment"]
        assert env["python"].startswith("3.8.") and env["kind"] == "tarball" and len(env["hash"]) == 64
        (worker,) = status["workers"]
        # The interpreter the venv was made from is gone: the worker runs the packed one, with the packed
        # libpython, from the cache directory.
        exe = os.readlink("/proc/%d/exe" % worker["pid"])
        assert exe.startswith(env["path"]), exe
        maps = Path("/proc/%d/maps" % worker["pid"]).read_text()
        assert os.path.join(env["path"], "lib", "libpython3.8.so") in maps
        # nothing of the server leaked into the worker: no pydantic/uvicorn/orjson modules are loaded
        assert "orjson" not in maps and "uvloop" not in maps
    assert server.stop() == 0


def test_warm_cache_restart_and_worker_processes(tmp_path, start_server, old_sklearn, env_cache):
    expected = envs.expected(old_sklearn)
    _scenario_model(tmp_path, old_sklearn, name="two-workers")
    settings_path = tmp_path / "two-workers" / "model-settings.json"
    doc = json.loads(settings_path.read_text())
    doc["parallel_workers"] = 2
    settings_path.write_text(json.dumps(doc))
    first = start_server(tmp_path, env=env_cache)
    assert "extracting" in first.log
    assert first.stop() == 0
    second = start_server(tmp_path, env=env_cache)
    assert "found in the cache" in second.log and "extracting" not in second.log
    with second.client() as client:
        pids = {w["pid"] for w in _workers(client, "two-workers")}
        assert len(pids) == 2
        r = client.post("/v2/models/two-workers/infer", json=_body(expected["rows"][:10]))
        assert r.json()["outputs"][0]["data"] == expected["predictions"][:10]
        # unload stops the workers
        assert client.post("/v2/repository/models/two-workers/unload").status_code == 200
        _wait(lambda: not any(_alive(p) for p in pids), what="workers to exit after unload")
    assert second.stop() == 0


def test_env_pack_zstd_by_default_and_served_from_it(tmp_path, start_server, old_sklearn, env_cache):
    """`envserve env pack` writes zstd unless told otherwise; the .tar.zst serves the model as the .tar.gz
    did, and the two models in one server extracted their tarballs once each."""
    import sys

    expected = envs.expected(old_sklearn)
    # the Python 3.8 environment, extracted from the .tar.gz by a first server, is what gets packed again
    _scenario_model(tmp_path / "first", old_sklearn)
    first = start_server(tmp_path / "first", env=env_cache)
    with first.client() as client:
        extracted = _status(client, "mnist-svm")["environment"]["path"]
    assert first.stop() == 0
    # without bytecode, as venv-pack and conda-pack leave it (the example's own tarball carries some)
    env_path = str(tmp_path / os.path.basename(extracted))
    shutil.copytree(extracted, env_path, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    packed = subprocess.run(
        [sys.executable, "-m", "envserve", "env", "pack", env_path],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert packed.returncode == 0, packed.stderr
    tarball = tmp_path / (os.path.basename(env_path) + ".tar.zst")
    assert tarball.read_bytes()[:4] == b"\x28\xb5\x2f\xfd", "not a zstd stream"
    assert "packed Python 3.8." in packed.stdout and "bytecode of" in packed.stdout
    unused = os.path.join("lib", "python3.8", "__pycache__", "tabnanny.cpython-38.pyc")  # never imported
    assert not os.path.exists(os.path.join(env_path, unused)), "env pack wrote into the environment"
    repo = tmp_path / "second"
    for name in ("zstd-a", "zstd-b"):  # one tarball, two models: one extraction
        folder = _scenario_model(repo, old_sklearn, name=name, environment_tarball="./env.tar.zst")
        shutil.copy(tarball, folder / "env.tar.zst")
    second = start_server(repo, env={"ENVSERVE_ENV_CACHE": str(tmp_path / "cache-2")})
    with second.client() as client:
        for name in ("zstd-a", "zstd-b"):
            r = client.post("/v2/models/%s/infer" % name, json=_body(expected["rows"][:20]))
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["data"] == expected["predictions"][:20]
            assert _status(client, name)["environment"]["python"].startswith("3.8.")
        # the bytecode compiled by env pack came with the environment
        assert os.path.isfile(os.path.join(_status(client, "zstd-a")["environment"]["path"], unused))
    # two copies of one tarball: the first extracted (and hashed as read), the second found the same hash
    assert second.log.count("extracting") == 1 and "found in the cache" in second.log, second.log
    # begun by `envserve serve` before the server's own imports and start, which overlap it
    assert "(begun while the server starts)" in second.log, second.log
    assert second.log.index("extracting") < second.log.index("listening on"), second.log
    assert second.stop() == 0


def test_venv_pack_tarball_and_environment_path(tmp_path, start_server, old_sklearn, env_cache):
    expected = envs.expected(old_sklearn)
    folder = _scenario_model(tmp_path, old_sklearn, name="venv-packed")
    shutil.copy(old_sklearn["venv_pack"], folder / "old-sklearn.tar.gz")
    # environment_path: point at the environment the first model's tarball was extracted into
    server = start_server(tmp_path, env=env_cache)
    with server.client() as client:
        r = client.post("/v2/models/venv-packed/infer", json=_body(expected["rows"][:20]))
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == expected["predictions"][:20]
        env_root = _status(client, "venv-packed")["environment"]["path"]
    server.stop()
    repo2 = tmp_path / "repo2"
    write_model(
        repo2,
        "by-path",
        {
            "name": "by-path",
            "implementation": "sklearn",
            "parameters": {"environment_path": os.path.join(env_root, "bin", "python")},
        },
        old_sklearn["model"],
    )
    server = start_server(repo2, env=env_cache)
    with server.client() as client:
        r = client.post("/v2/models/by-path/infer", json=_body(expected["rows"][:20]))
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == expected["predictions"][:20]
        assert _status(client, "by-path")["environment"]["kind"] == "path"


def test_server_default_tarball_from_mlserver_variable(tmp_path, start_server, old_sklearn, env_cache):
    expected = envs.expected(old_sklearn)
    write_model(
        tmp_path,
        "defaulted",
        {"name": "defaulted", "implementation": "mlserver_sklearn.SKLearnModel"},
        old_sklearn["model"],
    )
    server = start_server(tmp_path, env={**env_cache, "MLSERVER_ENV_TARBALL": str(old_sklearn["tarball"])})
    with server.client() as client:
        r = client.post("/v2/models/defaulted/infer", json=_body(expected["rows"][:5]))
        assert r.json()["outputs"][0]["data"] == expected["predictions"][:5]
        assert _status(client, "defaulted")["environment"]["python"].startswith("3.8.")


def test_spec_environment_on_python312(tmp_path, start_server, digits_model_file, env_cache, digits):
    import sklearn

    folder = write_model(
        tmp_path,
        "py312",
        {
            "name": "py312",
            "implementation": "sklearn",
            "parameters": {"environment": "requirements.txt", "environment_python": "3.12"},
        },
        digits_model_file,
    )
    # the pickle was made by the server's scikit-learn: the environment pins the same version
    (folder / "requirements.txt").write_text("scikit-learn==%s\n" % sklearn.__version__)
    server = start_server(tmp_path, env=env_cache)
    x, _ = digits
    import joblib

    with server.client() as client:
        r = client.post("/v2/models/py312/infer", json=_body(x[:50].tolist()))
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == joblib.load(digits_model_file).predict(x[:50]).tolist()
        status = _status(client, "py312")
        assert status["environment"]["python"].startswith("3.12.") and status["environment"]["kind"] == "spec"
    assert "building an environment for Python 3.12" in server.log
    # the environment was made in a work directory and moved: its console scripts run where it is now
    root = status["environment"]["path"]
    with open(os.path.join(root, "envserve-resolved.txt")) as f:
        (numpy,) = [line.strip().split("==")[1] for line in f if line.startswith("numpy==")]
    script = os.path.join(root, "bin", "numpy-config")
    ran = subprocess.run([script, "--version"], capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout.strip() == numpy, ran


def test_worker_crash_fails_in_flight_requests_and_restarts(tmp_path, start_server, env_cache, old_sklearn):
    folder = write_model(
        tmp_path,
        "slow",
        {
            "name": "slow",
            "implementation": "slow_runtime.Slow",
            "parameters": {"environment_tarball": str(old_sklearn["tarball"])},
        },
    )
    (folder / "slow_runtime.py").write_text(  # sleeps as many seconds as its input says
        "import time\nfrom envserve import Runtime\n\n"
        "class Slow(Runtime):\n"
        "    def predict(self, request):\n"
        "        seconds = float(request.inputs[0].data[0])\n"
        "        time.sleep(seconds)\n"
        "        return {'slept': [seconds]}\n"
    )
    server = start_server(tmp_path, env=env_cache)
    with server.client() as client:
        (worker,) = _workers(client, "slow")
        result = {}

        def call():
            result["r"] = httpx.post(
                server.url + "/v2/models/slow/infer",
                timeout=90,
                json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [60]}]},
            )

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(1.0)
        killed_at = time.monotonic()
        os.kill(worker["pid"], signal.SIGKILL)
        thread.join(60)
        r = result["r"]
        assert r.status_code == 503
        assert "was killed by SIGKILL while handling this request" in r.json()["error"]
        assert time.monotonic() - killed_at < 30  # failed by the kill, not after the 60 s predict
        fresh = _wait(
            lambda: [w for w in _workers(client, "slow") if w["alive"] and w["pid"] != worker["pid"]],
            timeout=60,
            what="a restarted worker",
        )
        assert _status(client, "slow")["restarts"] == 1 and fresh[0]["pid"] != worker["pid"]
        r = client.post(
            "/v2/models/slow/infer",
            json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.5]}]},
        )
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [0.5]


def test_server_sigkill_leaves_no_worker_behind(tmp_path, start_server, env_cache, old_sklearn):
    _scenario_model(tmp_path, old_sklearn, parallel_workers=2)
    server = start_server(tmp_path, env=env_cache)
    with server.client() as client:
        pids = [w["pid"] for w in _workers(client, "mnist-svm")]
    assert pids and all(_alive(p) for p in pids)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    _wait(lambda: not any(_alive(p) for p in pids), timeout=5, what="orphaned workers to exit")


def test_bad_environments_fail_alone(tmp_path, start_server, env_cache, digits_model_file, old_sklearn):
    repo = tmp_path / "repo"

    def model(name, **params):
        return write_model(
            repo, name, {"name": name, "implementation": "sklearn", "parameters": params}, digits_model_file
        )

    good = old_sklearn["tarball"].read_bytes()
    model("corrupt", environment_tarball="env.tar.gz")
    (repo / "corrupt" / "env.tar.gz").write_bytes(good[: len(good) // 3])
    model("traversal", environment_tarball="env.tar.gz")
    import io
    import tarfile

    with tarfile.open(repo / "traversal" / "env.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    model("missing", environment_tarball="nope.tar.gz")
    broken = model("python-broken", environment_path="brokenenv")
    (broken / "brokenenv" / "bin").mkdir(parents=True)
    (broken / "brokenenv" / "bin" / "python").symlink_to("/nonexistent/python3.8")
    bad_req = model("unresolvable", environment="requirements.txt")
    (bad_req / "requirements.txt").write_text("envserve-no-such-package-for-tests==9.9.9\n")
    no_python = model("no-interpreter", environment="requirements.txt", environment_python="3.5")
    (no_python / "requirements.txt").write_text("numpy\n")
    model("healthy")

    server = start_server(repo, env=env_cache)
    with server.client() as client:
        rows = {r["name"]: r for r in client.post("/v2/repository/index").json()}
        assert rows["healthy"]["state"] == "READY"
        reasons = {name: rows[name]["reason"] for name in rows if name != "healthy"}
        assert all(rows[n]["state"] == "UNAVAILABLE" for n in reasons), rows
        assert "corrupt or truncated" in reasons["corrupt"]
        assert "points outside the environment directory" in reasons["traversal"]
        assert "nope.tar.gz does not exist" in reasons["missing"]
        assert (
            "cannot start" in reasons["python-broken"]
            and "/nonexistent/python3.8" in reasons["python-broken"]
        )
        assert "envserve-no-such-package-for-tests" in reasons["unresolvable"]
        assert "no Python 3.5 interpreter" in reasons["no-interpreter"] and "3.8" in reasons["no-interpreter"]
        r = client.post("/v2/models/corrupt/infer", json=_body([[0] * 64]))
        assert r.status_code == 503 and "corrupt or truncated" in r.json()["error"]
        assert client.post("/v2/models/healthy/infer", json=_body([[0] * 64])).status_code == 200
    assert not (tmp_path / "escaped.txt").exists() and not (repo / "escaped.txt").exists()
    for name in ("corrupt", "unresolvable"):
        assert "model %s failed to load" % name in server.log
    # nothing half-made is left in the cache
    cache = Path(env_cache["ENVSERVE_ENV_CACHE"])
    leftovers = [p.name for p in (cache / "envs").iterdir() if not p.name.endswith((".json", ".lock"))]
    records = [p.name[:-5] for p in (cache / "envs").glob("*.json")]
    assert sorted(leftovers) == sorted(records)


def test_a_model_does_not_wait_for_another_models_extraction(
    tmp_path, old_sklearn, digits_model_file, digits
):
    """The Python 3.8 model's tarball is a FIFO nobody writes yet (a disk that does not deliver): its
    extraction waits, and meanwhile the in-process model is READY and answers, and the server's liveness
    answers."""
    import joblib

    from tests.conftest import ServerProcess

    expected = envs.expected(old_sklearn)
    rows = digits[0][:3].astype("float32")
    answers = joblib.load(digits_model_file).predict(rows).tolist()
    folder = _scenario_model(tmp_path, old_sklearn, name="slow-env")
    fifo = folder / "old-sklearn.tar.gz"
    fifo.unlink()
    os.mkfifo(fifo)
    write_model(tmp_path, "digits", {"name": "digits", "implementation": "sklearn"}, digits_model_file)
    server = ServerProcess(tmp_path, [], env={"ENVSERVE_ENV_CACHE": str(tmp_path / "cache")})
    written = threading.Event()

    def deliver():
        with open(fifo, "wb") as f:  # blocks until the server opens it for reading
            f.write(Path(old_sklearn["tarball"]).read_bytes())
        written.set()

    try:
        assert server._listening.wait(120) and server.url, server.log
        with httpx.Client(base_url=server.url, timeout=30) as client:
            _wait(
                lambda: client.get("/v2/models/digits/ready").status_code == 200,
                timeout=120,
                what="the in-process model while the other one's tarball is not there",
            )
            assert "extracting" in server.log and not written.is_set()
            assert client.get("/v2/health/live").status_code == 200
            r = client.post("/v2/models/digits/infer", json=_body(rows.tolist()))
            assert r.status_code == 200 and r.json()["outputs"][0]["data"] == answers, r.text
            assert client.get("/v2/models/slow-env/ready").status_code != 200
            feeder = threading.Thread(target=deliver, daemon=True)
            feeder.start()
            # a FIFO's mtime moves as it is written: the check that a tarball did not change while it was
            # read refuses it, by name; the model then loads from the real file through the repository API
            _wait(
                lambda: "server ready: 1 of 2" in server.log, timeout=300, what="the FIFO's end", log=server
            )
            assert written.is_set() and "changed while it was read" in server.log
            os.unlink(fifo)
            shutil.copy(old_sklearn["tarball"], fifo)
            r = client.post("/v2/repository/models/slow-env/load", timeout=300)
            assert r.status_code == 200, r.text
            r = client.post("/v2/models/slow-env/infer", json=_body(expected["rows"][:5]))
            assert r.json()["outputs"][0]["data"] == expected["predictions"][:5]
    finally:
        if not written.is_set():  # let a blocked extraction see the end of its file
            with contextlib.suppress(OSError):
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)
        server.stop()
