"""A base image (environments baked, no models) started with podman exactly as each operator starts it
(../shared/reference/operator-contracts.md: variables, user, read-only mounts and root filesystem, dropped
capabilities), probed as the operator probes it, and asked through the path its sidecar calls: the models
arrive at run time in /mnt/models and find their environments in the image by content hash.

Shares the cached base image and wheelhouse of test_image.py; skips only where podman cannot run at all.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from joblib import load

from examples import old_sklearn
from tests.conftest import EXAMPLES, ROOT, free_port, write_model
from tests.integration.test_image import (  # noqa: F401
    BASE,
    _base_image,
    _drop_replaced_images,
    _run,
    containers,
    wheelhouse,
)

# podman's storage and the images built there are shared: these modules run on one test process
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("podman")]

IMAGE = "localhost/envserve-base:test"


def _sklearn_pin() -> str:
    lock = (ROOT / "requirements" / "lock.txt").read_text()
    return re.search(r"^scikit-learn==\S+", lock, re.M).group(0)


@pytest.fixture(scope="module")
def models(tmp_path_factory, digits_model_file):
    """What the operators' storage initialisers download: the seed's Python 3.8 model with its packed
    environment, a model whose environment is its own requirements file, and a bare scikit-learn model."""
    root = tmp_path_factory.mktemp("mnt")
    old_sklearn.write_model_folder(EXAMPLES / "models" / "mnist-svm-py38")
    shutil.copytree(EXAMPLES / "models" / "mnist-svm-py38", root / "repo" / "mnist-svm-py38")
    spec = write_model(
        root / "repo",
        "digits-spec",
        {
            "name": "digits-spec",
            "implementation": "sklearn",
            "parameters": {"environment": "./requirements.txt"},
        },
        digits_model_file,
    )
    (spec / "requirements.txt").write_text(_sklearn_pin() + "\n")
    bare = root / "bare"
    bare.mkdir()
    shutil.copy(digits_model_file, bare / "model.joblib")
    os.system("chmod -R a+rX %s" % root)  # every operator mounts models read-only for a non-root uid
    return root


@pytest.fixture(scope="module")
def base_image(containers, wheelhouse, models, tmp_path_factory):  # noqa: F811
    _base_image(containers)
    log = tmp_path_factory.mktemp("base-image") / "build.log"
    argv = [sys.executable, "-m", "envserve", "image", "build", "--no-models", "--base", BASE]
    argv += ["--environment", str(models / "repo" / "mnist-svm-py38")]  # a model folder: its tarball
    argv += ["--environment", str(models / "repo" / "digits-spec" / "requirements.txt")]  # a spec
    argv += ["--wheelhouse", str(wheelhouse), "--builder", "buildah", "-t", IMAGE]
    with open(log, "w") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=containers, timeout=1800)
    assert proc.returncode == 0, log.read_text()[-6000:]
    _drop_replaced_images(containers)
    return IMAGE


class Container:
    def __init__(self, env, argv):
        self.env = env
        self.name = "envserve-contract-%s" % uuid.uuid4().hex[:8]
        _run(["podman", "run", "-d", "--init", "--pull", "never", "--name", self.name, *argv], env=env)

    def logs(self) -> str:
        proc = _run(["podman", "logs", self.name], env=self.env, check=False)
        return proc.stdout + proc.stderr

    def wait(self, url: str, seconds: float = 180) -> None:
        """Until ``url`` answers 200 (the operator's probe), or the container exits."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            state = _run(
                ["podman", "inspect", "-f", "{{.State.Running}}", self.name], env=self.env, check=False
            )
            if state.stdout.strip() == "false":
                break
            time.sleep(0.2)
        raise AssertionError("%s never answered 200; logs:\n%s" % (url, self.logs()[-6000:]))

    def stop(self) -> None:
        _run(["podman", "rm", "-f", "-t", "2", self.name], env=self.env, check=False)


DOC_IMAGE = "registry.corp/envserve-base:1"


def _documented_run(name, image, env=None, **folders):
    """The ``podman run`` line docs/deploy.md gives for ``name``, as written: its image replaced by the
    one under test, ``$MODEL_DIR``/``$AGENT_DIR`` by ``folders``, host ports by free loopback ones, and
    without ``--rm`` (the logs are read after a failure). Returns ({container port: host port}, argv)."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    block = re.search(r"<!-- podman: %s -->\n```sh\n(.*?)```" % re.escape(name), text, re.S)
    assert block, "docs/deploy.md has no podman block %r" % name
    words = shlex.split(block.group(1).replace("\\\n", " "))
    assert words[:2] == ["podman", "run"] and words[-1] == DOC_IMAGE, words
    ports, argv, rest = {}, [], iter(words[2:])
    for word in rest:
        if word == "--rm":
            continue
        if word == "-p":
            inside = int(next(rest).rsplit(":", 1)[1])
            ports[inside] = free_port()
            argv += ["-p", "127.0.0.1:%d:%d" % (ports[inside], inside)]
            continue
        for variable, folder in folders.items():
            word = word.replace("$" + variable, str(folder))
        argv.append(word.replace(DOC_IMAGE, image))
    for variable, value in (env or {}).items():  # a documented variable changed, added or (None) dropped
        at = [i for i, w in enumerate(argv) if w.startswith(variable + "=") and argv[i - 1] == "-e"]
        for i in reversed(at):
            del argv[i - 1 : i + 1]
        if value is not None:
            argv[-1:-1] = ["-e", "%s=%s" % (variable, value)]
    return ports, argv


def _assert_served_from_the_image(logs: str) -> None:
    assert "found in the cache" in logs, logs[-4000:]
    assert "extracting" not in logs and "building an environment" not in logs, logs[-4000:]


def test_image_is_a_base_image(base_image, containers, models):  # noqa: F811
    info = json.loads(_run(["podman", "image", "inspect", base_image], env=containers).stdout)[0]
    config = info["Config"]
    assert config["Cmd"] == ["/opt/envserve/venv/bin/envserve", "serve"]
    assert re.fullmatch(r"\d+:\d+", config["User"]), config["User"]  # numeric: runAsNonRoot can check it
    from envserve.environments.cache import file_digest

    tarball = file_digest(str(models / "repo" / "mnist-svm-py38" / "old-sklearn.tar.gz"))
    assert tarball in info["Labels"]["io.envserve.baked"].split(",")
    assert len(info["Labels"]["io.envserve.baked"].split(",")) == 2
    assert not any(v.startswith(("ENVSERVE_HTTP_PORT", "ENVSERVE_HOST")) for v in config["Env"])


def test_mlserver_seed_run_read_only_as_an_arbitrary_uid(base_image, containers, models):  # noqa: F811
    """MLServer's image as the seed runs it (-v "$PWD":/mnt/models -e MLSERVER_ENV_TARBALL=...), here
    also as OpenShift runs images: an arbitrary uid in group 0, read-only root filesystem."""
    ports, argv = _documented_run("mlserver", base_image, MODEL_DIR=models / "repo")
    box = Container(containers, argv)
    try:
        url = "http://127.0.0.1:%d" % ports[8080]
        box.wait(url + "/v2/health/ready")
        expected = old_sklearn.expected(old_sklearn.old_sklearn())
        body = {
            "inputs": [
                {"name": "predict", "shape": [10, 64], "datatype": "FP32", "data": expected["rows"][:10]}
            ]
        }
        r = httpx.post(url + "/v2/models/mnist-svm-py38/infer", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert [int(v) for v in r.json()["outputs"][0]["data"]] == expected["predictions"][:10]
        model = load(models / "repo" / "digits-spec" / "model.joblib")
        rows = expected["rows"][:5]
        r = httpx.post(
            url + "/v2/models/digits-spec/infer",
            json={"inputs": [{"name": "predict", "shape": [5, 64], "datatype": "FP64", "data": rows}]},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert [int(v) for v in r.json()["outputs"][0]["data"]] == model.predict(rows).tolist()
        status = {m["name"]: m for m in httpx.get(url + "/envserve/models", timeout=10).json()}
        assert status["mnist-svm-py38"]["environment"]["python"].startswith("3.8.")
        # baked with its bytecode: this read-only root could never be given it at run time
        svm = (
            "%s/lib/python*/site-packages/sklearn/svm/__pycache__"
            % status["digits-spec"]["environment"]["path"]
        )
        found = _run(["podman", "exec", box.name, "sh", "-c", "ls " + svm], env=containers, check=False)
        assert "_classes.cpython-" in found.stdout, "baked without bytecode: %s" % found.stderr
        logs = box.logs()
        assert "envserve's own settings" in logs.splitlines()[0] or "envserve" in logs.splitlines()[0]
        _assert_served_from_the_image(logs)
        assert _run(["podman", "exec", box.name, "id", "-u"], env=containers).stdout.strip() == "4242"
    finally:
        box.stop()


@pytest.mark.parametrize("model", ["python38", "digits"])
def test_kserve_in_place_of_kserve_mlserver(base_image, containers, models, model):  # noqa: F811
    """The Python 3.8 model in its packed environment (MLSERVER_ENV_TARBALL from the InferenceService's
    env), and the digits model in the server's own process (no such variable)."""
    if model == "python38":
        folder, env = models / "repo" / "mnist-svm-py38", None
        expected = old_sklearn.expected(old_sklearn.old_sklearn())
        rows, predictions = expected["rows"][:3], expected["predictions"][:3]
    else:
        folder, env = models / "bare", {"MLSERVER_ENV_TARBALL": None}
        rows = old_sklearn.expected(old_sklearn.old_sklearn())["rows"][:3]
        predictions = load(folder / "model.joblib").predict(rows).tolist()
    ports, argv = _documented_run("kserve", base_image, env=env, MODEL_DIR=folder)
    box = Container(containers, argv)
    try:
        url = "http://127.0.0.1:%d" % ports[8080]
        box.wait(url + "/v2/models/sklearn-digits/ready")
        assert httpx.get(url + "/v2/health/ready", timeout=5).status_code == 200
        body = {"inputs": [{"name": "input-0", "shape": [3, 64], "datatype": "FP32", "data": rows}]}
        r = httpx.post(url + "/v2/models/sklearn-digits/infer", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["shape"] == [3, 1]  # as MLServer 1.7 answers for an mlserver_sklearn model
        assert [int(v) for v in out["data"]] == predictions
        logs = box.logs()
        assert "KServe (kserve-mlserver)" in logs.splitlines()[0], logs.splitlines()[0]
        if model == "python38":
            _assert_served_from_the_image(logs)
        status = {m["name"]: m for m in httpx.get(url + "/envserve/models", timeout=10).json()}
        python = (status["sklearn-digits"].get("environment") or {}).get("python") or "server"
        assert python.startswith("3.8.") == (model == "python38"), status["sklearn-digits"]
    finally:
        box.stop()


def _seldon_node_model(models, model):
    """(model folder, container env changes, 4 rows, their predictions) of a Seldon Core v1 graph node: the
    digits model in the server's process, or the Python 3.8 model in its packed environment
    (MLSERVER_ENV_TARBALL set in the node's container env)."""
    expected = old_sklearn.expected(old_sklearn.old_sklearn())
    x = expected["rows"][:4]
    if model == "digits":
        folder = models / "bare"
        return folder, None, x, load(folder / "model.joblib").predict(x).tolist()
    env = {"MLSERVER_ENV_TARBALL": "/mnt/models/old-sklearn.tar.gz"}
    return models / "repo" / "mnist-svm-py38", env, x, expected["predictions"][:4]


@pytest.mark.parametrize("model", ["digits", "python38"])
def test_seldon_core_v1_prepackaged_sklearn_server(base_image, containers, models, model):  # noqa: F811
    """SKLEARN_SERVER with the digits model in the server's process, and the Python 3.8 model in its
    packed environment (MLSERVER_ENV_TARBALL set in the graph node's container env)."""
    folder, env, x, predictions = _seldon_node_model(models, model)
    ports, argv = _documented_run("seldon-v1", base_image, env=env, MODEL_DIR=folder)
    box = Container(containers, argv)
    try:
        url = "http://127.0.0.1:%d" % ports[9000]
        box.wait(url + "/health/status")
        r = httpx.post(url + "/predict", json={"data": {"ndarray": x}}, timeout=60)
        assert r.status_code == 200, r.text
        assert [int(v) for v in r.json()["data"]["ndarray"]] == predictions
        r = httpx.post(
            url + "/api/v1.0/predictions",
            data={"json": json.dumps({"data": {"ndarray": x[:2]}})},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert [int(v) for v in r.json()["data"]["ndarray"]] == predictions[:2]
        if model == "python38":
            _assert_served_from_the_image(box.logs())
        assert httpx.get(url + "/api/v1.0/health/status", timeout=5).status_code == 200
        scraped = httpx.get("http://127.0.0.1:%d/prometheus" % ports[6000], timeout=5)
        assert scraped.status_code == 200 and "envserve_requests_total" in scraped.text
        assert "Seldon Core v1, protocol seldon (unit classifier" in box.logs().splitlines()[0]
        # Seldon's preStop hook runs /bin/sh -c '/bin/sleep N' in the container
        assert (
            _run(
                ["podman", "exec", box.name, "/bin/sh", "-c", "/bin/sleep 0.1"], env=containers, check=False
            ).returncode
            == 0
        )
    finally:
        box.stop()


@pytest.mark.parametrize("model", ["digits", "python38"])
def test_seldon_core_v1_protocol_v2(base_image, containers, models, model):  # noqa: F811
    """SKLEARN_SERVER with ``protocol: v2``: MLServer's variables, probes on /v2/health/* answered within
    the operator's 1 s timeout, and the executor's calls by the node name over REST and gRPC."""
    import numpy as np
    import tritonclient.grpc as tritongrpc

    folder, env, x, predictions = _seldon_node_model(models, model)
    ports, argv = _documented_run("seldon-v1-v2", base_image, env=env, MODEL_DIR=folder)
    box = Container(containers, argv)
    client = None
    try:
        url = "http://127.0.0.1:%d" % ports[9000]
        box.wait(url + "/v2/health/ready")  # each probe with the operator's 1 s timeout
        assert httpx.get(url + "/v2/health/live", timeout=1).status_code == 200
        assert httpx.get(url + "/v2/models/classifier/ready", timeout=5).status_code == 200
        assert httpx.get(url + "/v2/models/classifier", timeout=5).json()["name"] == "classifier"
        body = {"inputs": [{"name": "predict", "shape": [4, 64], "datatype": "FP64", "data": x}]}
        for path in ("/v2/models/classifier/infer", "/v2/models/classifier/versions/v1/infer"):
            r = httpx.post(url + path, json=body, timeout=60)
            assert r.status_code == 200, (path, r.text)
            assert [int(v) for v in r.json()["outputs"][0]["data"]] == predictions
        client = tritongrpc.InferenceServerClient("127.0.0.1:%d" % ports[9500])
        tensor = tritongrpc.InferInput("predict", [4, 64], "FP64")
        tensor.set_data_from_numpy(np.asarray(x, dtype=np.float64))
        answer = client.infer("classifier", [tensor], client_timeout=60)
        assert answer.as_numpy(answer.get_response().outputs[0].name).ravel().tolist() == predictions
        scraped = httpx.get("http://127.0.0.1:%d/prometheus" % ports[6000], timeout=5)
        assert scraped.status_code == 200 and "envserve_requests_total" in scraped.text
        logs = box.logs()
        assert "Seldon Core v1, protocol v2" in logs.splitlines()[0], logs.splitlines()[0]
        if model == "python38":
            _assert_served_from_the_image(logs)
    finally:
        if client is not None:
            client.close()
        box.stop()


def test_seldon_core_2_agent_flow_over_grpc(base_image, containers, models):  # noqa: F811
    """In place of MLServer in a Seldon Core 2 Server: nothing loads at start; the agent loads, infers and
    unloads by internal names over gRPC, with the models folder read-only and runAsUser 1000, fsGroup 2000.
    The agent's settings keep parameters.environment_tarball: the Python 3.8 model finds it baked."""
    import tritonclient.grpc as tritongrpc

    agent = models / "agent"

    def agent_model(name, files, **parameters):
        """A model as the agent lays it out: models/<name>/1/ with the settings it rewrites."""
        folder = agent / "models" / name / "1"
        folder.mkdir(parents=True)
        for path in files:
            shutil.copy(path, folder / path.name)
        settings = {
            "name": name,
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": "1", **parameters},
        }
        (folder / "model-settings.json").write_text(json.dumps(settings))
        return folder

    source = models / "repo" / "mnist-svm-py38"
    agent_model(
        "digits38_1",
        [source / "model.joblib", source / "old-sklearn.tar.gz"],
        environment_tarball="./old-sklearn.tar.gz",
    )
    digits = agent_model("digits_1", [models / "bare" / "model.joblib"])  # in the server's process
    os.system("chmod -R a+rX %s" % agent)
    ports, argv = _documented_run("seldon-core-2", base_image, AGENT_DIR=agent)
    box = Container(containers, argv)
    client = None
    try:
        url = "http://127.0.0.1:%d" % ports[9000]
        box.wait(url + "/v2/health/live")
        client = tritongrpc.InferenceServerClient("127.0.0.1:%d" % ports[9500])
        deadline = time.monotonic() + 120
        while True:  # the agent retries ServerLive until the server is live
            try:
                assert client.is_server_live()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        "gRPC ServerLive never answered; logs:\n" + box.logs()[-4000:]
                    ) from None
                time.sleep(0.2)
        index = {m.name: m.state for m in client.get_model_repository_index().models}
        assert index.get("digits38_1") != "READY", index  # nothing loaded at start
        for _ in range(2):  # the agent retries a load: it must be safe and cheap
            client.load_model("digits38_1")
        assert client.is_model_ready("digits38_1")
        expected = old_sklearn.expected(old_sklearn.old_sklearn())
        rows = expected["rows"][:4]

        def infer(internal):  # as the agent forwards a call: the internal name, Seldon's headers
            r = httpx.post(
                url + "/v2/models/%s/infer" % internal,
                json={"inputs": [{"name": "predict", "shape": [4, 64], "datatype": "FP32", "data": rows}]},
                headers={"seldon-model": internal.rsplit("_", 1)[0], "seldon-internal-model": internal},
                timeout=60,
            )
            assert r.status_code == 200, r.text
            return [int(v) for v in r.json()["outputs"][0]["data"]]

        assert infer("digits38_1") == expected["predictions"][:4]
        client.load_model("digits_1")
        assert infer("digits_1") == load(digits / "model.joblib").predict(rows).tolist()
        for name in ("digits38_1", "digits_1"):
            client.unload_model(name)
            assert not client.is_model_ready(name)
        with pytest.raises(Exception, match=r"StatusCode.NOT_FOUND"):
            client.unload_model("nope_1")
        scraped = httpx.get("http://127.0.0.1:%d/metrics" % ports[8082], timeout=5)
        assert scraped.status_code == 200 and "envserve_requests_total" in scraped.text
        logs = box.logs()
        assert "Seldon Core 2 variables" in logs.splitlines()[0], logs.splitlines()[0]
        _assert_served_from_the_image(logs)
    finally:
        if client is not None:
            client.close()
        box.stop()
