"""HuggingFace transformers pipelines served as MLServer's HuggingFace runtime serves them: tiny
random-weight models and tokenizers built here (tests/fixtures/huggingface/make_models.py; no model hub),
in a model environment of their own (torch's CPU build and transformers, requirements/hf-env.txt), named
with MLServer's runtime name and with envserve's. Each answer is compared with what the same pipeline,
called directly in that environment, answers."""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from examples import old_sklearn
from tests.conftest import ROOT, ServerProcess, write_model

pytestmark = pytest.mark.slow  # builds the HuggingFace environment once per machine (about a minute)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "huggingface"
TEXTS = ["i love the movie", "the film was terrible", "it is not very good"]


def hf_env() -> Path:
    """The HuggingFace model environment, built with pip once per machine (pip takes torch's CPU build
    from this machine's own file; uv would fetch a CUDA build of several GB)."""
    lock = ROOT / "requirements" / "hf-env.txt"
    root = old_sklearn.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / ("hf-env-%s" % hashlib.sha256(lock.read_bytes()).hexdigest()[:12])
    with open(root / "hf-env.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            python = "/root/.pyenv/versions/3.11.7/bin/python3.11"
            python = python if Path(python).exists() else shutil.which("python3.11")
            assert python, "the HuggingFace environment needs Python 3.11 (pyenv install 3.11)"
            for argv in (
                [python, "-m", "venv", str(venv)],
                [str(venv / "bin" / "pip"), "install", "-q", "-r", str(lock)],
            ):
                done = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
                assert done.returncode == 0, (
                    "building the HuggingFace environment failed:\n%s" % done.stderr[-3000:]
                )
            (venv / ".complete").write_text("ok")
    return venv


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    env = hf_env()
    root = tmp_path_factory.mktemp("huggingface")
    models = root / "models"
    done = subprocess.run(
        [str(env / "bin" / "python"), str(FIXTURES / "make_models.py"), str(models)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = json.loads((models / "expected.json").read_text())
    repo = root / "repo"
    python = str(env / "bin" / "python")
    write_model(  # as MLServer's docs write one: the model named by pretrained_model
        repo,
        "sentiment",
        {
            "name": "sentiment",
            "implementation": "mlserver_huggingface.HuggingFaceRuntime",
            "parameters": {
                "environment_path": python,
                "extra": {
                    "task": "text-classification",
                    "pretrained_model": str(models / "text-classification"),
                },
            },
        },
    )
    # the model's files in its own folder, envserve's name for the runtime
    shutil.copytree(models / "fill-mask", repo / "fill")
    write_model(
        repo,
        "fill",
        {
            "name": "fill",
            "implementation": "huggingface",
            "parameters": {"environment_path": python, "extra": {"task": "fill-mask"}},
        },
    )
    shutil.copytree(models / "feature-extraction", repo / "features")
    write_model(
        repo,
        "features",
        {
            "name": "features",
            "implementation": "mlserver_huggingface.HuggingFaceRuntime",
            "parameters": {"environment_path": python, "extra": {"task": "feature-extraction"}},
        },
    )
    write_model(
        repo,
        "no-such-task",
        {
            "name": "no-such-task",
            "implementation": "mlserver_huggingface.HuggingFaceRuntime",
            "parameters": {"environment_path": python, "extra": {"task": "mind-reading"}},
        },
    )
    server = ServerProcess(repo, [])
    try:
        yield server.wait_ready(300), expected
    finally:
        server.stop()


def _strings(name: str, values, content_type: str = "str") -> dict:
    return {
        "name": name,
        "shape": [len(values)],
        "datatype": "BYTES",
        "data": values,
        "parameters": {"content_type": content_type},
    }


def _answer(response) -> list:
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert (output["name"], output["datatype"], output["parameters"]["content_type"]) == (
        "output",
        "BYTES",
        "hg_jsonlist",
    )
    assert output["shape"] == [len(output["data"]), 1]
    return [json.loads(item) for item in output["data"]]


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return a == b


def test_pipelines_answer_as_called_directly(served):
    server, expected = served
    with server.client() as client:
        one = client.post("/v2/models/sentiment/infer", json={"inputs": [_strings("args", [TEXTS[0]])]})
        assert _close(_answer(one), expected["text-classification"]["one"])
        # MLServer's array_inputs: one positional list, answered item by item
        three = client.post("/v2/models/sentiment/infer", json={"inputs": [_strings("array_inputs", TEXTS)]})
        assert _close(_answer(three), expected["text-classification"]["three"])
        masked = {"inputs": [_strings("args", ["i [MASK] the movie"])]}
        assert _close(
            _answer(client.post("/v2/models/fill/infer", json=masked)), expected["fill-mask"]["one"]
        )
        # a keyword argument, as MLServer's codecs take one: raw (the value), or a JSON document
        top_k = dict(
            masked,
            inputs=masked["inputs"]
            + [
                {
                    "name": "top_k",
                    "shape": [1],
                    "datatype": "INT64",
                    "data": [2],
                    "parameters": {"content_type": "raw"},
                }
            ],
        )
        assert _close(
            _answer(client.post("/v2/models/fill/infer", json=top_k)), expected["fill-mask"]["top_k"]
        )
        as_json = dict(masked, inputs=masked["inputs"] + [_strings("top_k", ["2"], "hg_json")])
        assert _close(
            _answer(client.post("/v2/models/fill/infer", json=as_json)), expected["fill-mask"]["top_k"]
        )
        features = client.post("/v2/models/features/infer", json={"inputs": [_strings("args", [TEXTS[0]])]})
        assert _close(_answer(features), expected["feature-extraction"]["one"])


def test_mistakes_are_named(served):
    server, _ = served
    with server.client() as client:
        index = {m["name"]: m for m in client.post("/v2/repository/index", json={}).json()}
        assert index["no-such-task"]["state"] == "UNAVAILABLE"
        assert "'mind-reading' is not a transformers task" in index["no-such-task"]["reason"]
        assert "text-classification" in index["no-such-task"]["reason"]
        wrong = client.post(
            "/v2/models/fill/infer",
            json={"inputs": [_strings("args", ["no mask here"]), _strings("top_k", ["{"], "hg_json")]},
        )
        assert (
            wrong.status_code == 400
            and "input 'top_k' is not the JSON its content type says" in wrong.json()["error"]
        )
        refused = client.post("/v2/models/fill/infer", json={"inputs": [_strings("args", ["no mask here"])]})
        assert refused.status_code == 400, refused.text  # the pipeline's own refusal (no [MASK] token)
        assert "refused the input" in refused.json()["error"]
        assert (
            client.post(
                "/v2/models/sentiment/infer", json={"inputs": [_strings("args", [TEXTS[1]])]}
            ).status_code
            == 200
        )
