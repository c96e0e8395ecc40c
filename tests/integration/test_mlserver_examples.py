"""MLServer's documentation examples, side by side: several models in one repository (a scikit-learn
model, a custom JSON runtime, a custom runtime with requirements of its own), served by MLServer 1.7 and
by envserve, asked the same over REST, over gRPC with MLServer's own client code (its converters and
stubs, run in its venv), and through the repository API. Each difference that remains is named here and
in docs/compat.md.

The runtime with its own requirements: MLServer serves it from an existing environment
(``environment_path``, a venv the test builds with the package); envserve builds its environment from the
model's ``requirements.txt`` (``parameters.environment``), as a user moving over would write it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import Reference, ServerProcess, free_port, reference_venv, side_by_side, write_model
from tests.integration.probe import probe_wheel

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mlserver_examples"
JSON_DOC = {"name": "Foo Bar", "message": "Hello from the client"}


def _repository(repo: Path, digits_model_file: Path, tripler_parameters: dict) -> None:
    write_model(
        repo,
        "digits",
        {"name": "digits", "implementation": "mlserver_sklearn.SKLearnModel"},
        digits_model_file,
    )
    folder = write_model(
        repo, "json-hello-world", {"name": "json-hello-world", "implementation": "jsonmodels.JsonEcho"}
    )
    shutil.copy(FIXTURES / "jsonmodels.py", folder)
    folder = write_model(
        repo,
        "tripler",
        {"name": "tripler", "implementation": "tripler.Tripler", "parameters": tripler_parameters},
    )
    shutil.copy(FIXTURES / "tripler.py", folder)
    return folder


@pytest.fixture(scope="module")
def servers(tmp_path_factory, digits_model_file):
    root = tmp_path_factory.mktemp("mlserver-examples")
    wheels = root / "wheels"
    probe_wheel(root, wheels)
    # MLServer's side: an existing environment holding the runtime's requirements
    env = root / "probe-env"
    subprocess.run([sys.executable, "-m", "venv", env], check=True, timeout=300)
    subprocess.run(
        [env / "bin" / "pip", "install", "-q", "numpy", *wheels.glob("*.whl")],
        check=True,
        capture_output=True,
        timeout=900,
    )
    _repository(root / "reference", digits_model_file, {"environment_path": str(env)})
    folder = _repository(root / "repo", digits_model_file, {"environment": "requirements.txt"})
    (folder / "requirements.txt").write_text("--find-links %s\nnumpy\nenvserve-build-probe==1.0\n" % wheels)
    venv = reference_venv("mlserver")
    http, grpc_port = free_port(), free_port()
    mlserver = Reference(
        [str(venv / "bin" / "mlserver"), "start", str(root / "reference")],
        "http://127.0.0.1:%d" % http,
        "/v2/health/ready",
        root / "mlserver.log",
        env={
            "MLSERVER_HTTP_PORT": str(http),
            "MLSERVER_GRPC_PORT": str(grpc_port),
            "MLSERVER_METRICS_PORT": str(free_port()),
            "MLSERVER_HOST": "127.0.0.1",
            "MLSERVER_PARALLEL_WORKERS": "1",  # environment_path needs MLServer's workers
        },
    )
    mlserver.grpc_address = "127.0.0.1:%d" % grpc_port
    envserve = ServerProcess(root / "repo", [], env={"ENVSERVE_ENV_CACHE": str(root / "env-cache")})
    with side_by_side(mlserver, envserve):
        yield mlserver, envserve


def _requests(digits):
    x, _ = digits
    text = json.dumps(JSON_DOC)
    return [
        (
            "digits",
            {"inputs": [{"name": "predict", "shape": [3, 64], "datatype": "FP32", "data": x[:3].tolist()}]},
        ),
        (
            "json-hello-world",  # as the example's REST client sends it: characters, shape their count
            {"inputs": [{"name": "echo_request", "shape": [len(text)], "datatype": "BYTES", "data": [text]}]},
        ),
        (
            "json-hello-world",  # as its gRPC client builds it: bytes with content type str
            {
                "inputs": [
                    {
                        "name": "echo_request",
                        "shape": [len(text.encode())],
                        "datatype": "BYTES",
                        "data": [text],
                        "parameters": {"content_type": "str"},
                    }
                ]
            },
        ),
        ("tripler", {"inputs": [{"name": "x", "shape": [4], "datatype": "FP64", "data": [1, 2, 3.5, -1]}]}),
        ("tripler", {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]}]}),
        ("nobody", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}]}),
    ]


def _comparable(doc: dict) -> dict:
    """An answer without what differs by nature (ids)."""
    outputs = []
    for out in doc.get("outputs", []):
        data = out["data"]
        if out["datatype"] == "BYTES" and data and isinstance(data[0], str) and data[0].startswith("{"):
            data = [json.loads(item) for item in data]  # the same document, whatever its spacing
        outputs.append(
            {"name": out["name"], "shape": out["shape"], "datatype": out["datatype"], "data": data}
        )
    return {"model_name": doc.get("model_name"), "outputs": outputs}


def test_rest_answers_are_mlservers(servers, digits):
    mlserver, envserve = servers
    problems, statuses = [], []
    for model, body in _requests(digits):
        ours = httpx.post("%s/v2/models/%s/infer" % (envserve.url, model), json=body, timeout=120)
        theirs = httpx.post("%s/v2/models/%s/infer" % (mlserver.url, model), json=body, timeout=120)
        statuses.append(ours.status_code)
        if ours.status_code // 100 != theirs.status_code // 100:
            problems.append((model, ours.status_code, theirs.status_code, ours.text[:300], theirs.text[:300]))
        elif ours.status_code == 200 and _comparable(ours.json()) != _comparable(theirs.json()):
            problems.append((model, ours.json(), theirs.json()))
    assert problems == []
    assert statuses == [200] * 5 + [404]
    echoed = httpx.post(
        "%s/v2/models/json-hello-world/infer" % envserve.url, json=_requests(digits)[1][1], timeout=60
    ).json()
    assert json.loads(echoed["outputs"][0]["data"][0])["request"] == {"echo_request": JSON_DOC}


def test_grpc_answers_to_mlservers_own_client_are_mlservers(servers, digits, tmp_path):
    """The example's gRPC client code (MLServer's converters and stubs, in MLServer's venv) against both."""
    mlserver, envserve = servers
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps(_requests(digits)))
    python = reference_venv("mlserver") / "bin" / "python"
    answers = []
    for address in (envserve.grpc_address, mlserver.grpc_address):
        done = subprocess.run(
            [str(python), str(FIXTURES / "grpc_client.py"), address, str(requests)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        answers.append(json.loads(done.stdout))
    ours, theirs = answers
    assert len(ours) == len(theirs) == len(_requests(digits))
    errors = [("error" in mine, "error" in reference) for mine, reference in zip(ours, theirs)]
    assert errors == [(False, False)] * 5 + [(True, True)], errors  # only the model that does not exist
    for (model, _), mine, reference in zip(_requests(digits), ours, theirs):
        if "error" in reference or "error" in mine:
            assert mine == reference, (model, mine, reference)
            continue
        assert _comparable(mine) == _comparable(reference), (model, mine, reference)


def _index(server) -> dict:
    r = httpx.post(server.url + "/v2/repository/index", json={}, timeout=60)
    assert r.status_code == 200, r.text
    return {entry["name"]: entry.get("state") for entry in r.json()}


def test_the_repository_api_answers_as_mlservers(servers, digits):
    """Index, unload, load: the same states, the same statuses; after an unload MLServer answers 404
    and envserve 503 (the model is known and not loaded; docs/compat.md)."""
    mlserver, envserve = servers
    assert (
        _index(envserve)
        == _index(mlserver)
        == {m: "READY" for m in ("digits", "json-hello-world", "tripler")}
    )
    body = _requests(digits)[1][1]
    for server in (envserve, mlserver):
        r = httpx.post(server.url + "/v2/repository/models/json-hello-world/unload", timeout=60)
        assert r.status_code == 200, r.text
    assert _index(envserve) == _index(mlserver)
    assert _index(envserve)["json-hello-world"] == "UNAVAILABLE"
    ours = httpx.post(envserve.url + "/v2/models/json-hello-world/infer", json=body, timeout=60)
    theirs = httpx.post(mlserver.url + "/v2/models/json-hello-world/infer", json=body, timeout=60)
    assert (ours.status_code, theirs.status_code) == (503, 404)  # DIFFERENCE: unloaded model
    assert "unloaded" in ours.json()["error"]
    for server in (envserve, mlserver):
        r = httpx.post(server.url + "/v2/repository/models/json-hello-world/load", timeout=120)
        assert r.status_code == 200, r.text
    assert (
        _index(envserve)
        == _index(mlserver)
        == {m: "READY" for m in ("digits", "json-hello-world", "tripler")}
    )
    for server in (envserve, mlserver):
        assert (
            httpx.post(server.url + "/v2/models/json-hello-world/infer", json=body, timeout=60).status_code
            == 200
        )
    for server in (envserve, mlserver):  # a model the repository does not have
        r = httpx.post(server.url + "/v2/repository/models/nobody/load", timeout=60)
        assert r.status_code // 100 == 4, (server, r.status_code, r.text)
