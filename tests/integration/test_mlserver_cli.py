"""MLServer's command line as its users' scripts call it: the ``mlserver`` script envserve installs
(refused where a real MLServer is), ``mlserver start FOLDER`` with MLServer's variables, ``mlserver infer``
(MLServer's batch client) side by side with MLServer 1.7's own against the same server, and
``mlserver dockerfile``. ``mlserver build`` builds a real image: tests/integration/test_image.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import Reference, ServerProcess, free_port, reference_venv, write_model

pytestmark = pytest.mark.slow  # MLServer's venv is built once per machine


def _shim(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    done = subprocess.run(
        [sys.executable, "-m", "envserve", "mlserver", "install-shim", "--bin-dir", str(bin_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(bin_dir / "mlserver")
    return bin_dir / "mlserver"


def test_the_shim_starts_a_folder_as_mlserver_start_does(tmp_path, digits_model_file, digits):
    repo = tmp_path / "repo"
    write_model(
        repo,
        "digits",
        {"name": "digits", "implementation": "mlserver_sklearn.SKLearnModel"},
        digits_model_file,
    )
    (repo / "settings.json").write_text(json.dumps({"debug": True, "server_version": "1.7.1"}))
    shim = _shim(tmp_path)
    http, grpc = free_port(), free_port()
    env = {
        **os.environ,
        "MLSERVER_HTTP_PORT": str(http),
        "MLSERVER_GRPC_PORT": str(grpc),
        "MLSERVER_METRICS_PORT": str(free_port()),
        "MLSERVER_HOST": "127.0.0.1",
    }
    server = Reference(
        [str(shim), "start", str(repo)],
        "http://127.0.0.1:%d" % http,
        "/v2/health/ready",
        tmp_path / "log",
        env=env,
    )
    try:
        server.wait(180)
        x, _ = digits
        body = {"inputs": [{"name": "predict", "shape": [1, 64], "datatype": "FP32", "data": x[:1].tolist()}]}
        r = httpx.post(server.url + "/v2/models/digits/infer", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [1, 1]
        assert httpx.get(server.url + "/v2").json()["version"] == "1.7.1"  # settings.json, MLServer's key
    finally:
        server.stop()
    assert "POST /v2/models/digits/infer" in (tmp_path / "log").read_text()  # debug: MLServer's access log
    # usage errors and envserve's errors keep their exit codes and say what is wrong
    missing = subprocess.run([str(shim), "start", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    version = subprocess.run([str(shim), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("mlserver (envserve ")


def test_the_shim_never_replaces_a_real_mlserver(tmp_path):
    """Where MLServer is importable its command stays; a file of the same name that is not envserve's stays
    too, unless --force; envserve's own shim is replaced in place."""
    fake = tmp_path / "site" / "mlserver"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    bin_dir = tmp_path / "bin"
    command = [sys.executable, "-m", "envserve", "mlserver", "install-shim", "--bin-dir", str(bin_dir)]
    refused = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    )
    assert refused.returncode == 3 and "a real MLServer is installed" in refused.stderr
    assert not (bin_dir / "mlserver").exists()
    bin_dir.mkdir()
    (bin_dir / "mlserver").write_text("#!/bin/sh\necho the real one\n")
    refused = subprocess.run(command, capture_output=True, text=True)
    assert refused.returncode == 3 and "is not envserve's; left alone" in refused.stderr
    assert "the real one" in (bin_dir / "mlserver").read_text()
    assert subprocess.run(command + ["--force"], capture_output=True).returncode == 0
    assert subprocess.run(command, capture_output=True).returncode == 0  # ours: replaced in place
    assert "envserve mlserver install-shim" in (bin_dir / "mlserver").read_text()


@pytest.fixture(scope="module")
def batch_server(tmp_path_factory, digits_model_file):
    repo = tmp_path_factory.mktemp("batch-repo")
    write_model(
        repo,
        "digits",
        {"name": "digits", "implementation": "mlserver_sklearn.SKLearnModel"},
        digits_model_file,
    )
    server = ServerProcess(repo, [])
    try:
        yield server.wait_ready(120)
    finally:
        server.stop()


def _requests_file(path: Path, x) -> Path:
    lines = []
    for i in range(7):
        rows = x[i : i + 1 + i % 2].tolist()  # one or two rows each
        lines.append(
            json.dumps(
                {
                    "id": "req-%d" % i,
                    "inputs": [
                        {"name": "predict", "shape": [len(rows), 64], "datatype": "FP64", "data": rows}
                    ],
                }
            )
        )
    lines.insert(3, '{"inputs": "not a list"}')  # a line that is not a request: an error line, the rest go on
    path.write_text("\n".join(lines) + "\n")
    return path


def _answers(path: Path) -> dict:
    """batch_index -> (what was answered, comparable): outputs' names, shapes, datatypes and data, or the
    error's status."""
    found = {}
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        index = doc["parameters"]["batch_index"]
        if "error" in doc:
            found[index] = ("error", doc["error"]["status"])
        else:
            assert doc["parameters"]["inference_id"]
            outputs = [(o["name"], o["shape"], o["datatype"], o["data"]) for o in doc["outputs"]]
            found[index] = ("answer", doc["id"], outputs)
    return found


@pytest.mark.parametrize("batch_size", [1, 3])
def test_infer_writes_what_mlservers_batch_client_writes(tmp_path, batch_server, digits, batch_size):
    """MLServer 1.7's `mlserver infer` and envserve's, against the same envserve server, with the same file
    (micro-batched or not, a malformed line among them): the same answers for the same lines."""
    requests = _requests_file(tmp_path / "in.jsonl", digits[0])
    url = batch_server.url.replace("http://", "")
    common = ["infer", "-u", url, "-m", "digits", "-i", str(requests), "-w", "2", "-s", str(batch_size)]
    theirs_file, ours_file = tmp_path / "theirs.jsonl", tmp_path / "ours.jsonl"
    mlserver = reference_venv("mlserver") / "bin" / "mlserver"
    theirs = subprocess.run(
        [str(mlserver), *common, "-o", str(theirs_file)], capture_output=True, text=True, timeout=300
    )
    assert theirs.returncode == 0, theirs.stderr[-3000:]
    ours = subprocess.run(
        [sys.executable, "-m", "envserve", "mlserver", *common, "-o", str(ours_file)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ours.returncode == 0, ours.stderr[-3000:]
    mine, reference = _answers(ours_file), _answers(theirs_file)
    assert sorted(mine) == sorted(reference) == list(range(8))
    for index in sorted(reference):
        if reference[index][0] == "error" or mine[index][0] == "error":
            assert mine[index][0] == reference[index][0] == "error", (index, mine[index], reference[index])
            continue
        assert mine[index][1] == reference[index][1]  # the request's own id
        assert mine[index][2] == reference[index][2], index


def test_infer_reports_what_it_could_not_do(tmp_path, batch_server, digits):
    requests = _requests_file(tmp_path / "in.jsonl", digits[0])
    out = tmp_path / "out.jsonl"
    url = batch_server.url.replace("http://", "")
    wrong = subprocess.run(
        [
            sys.executable,
            "-m",
            "envserve",
            "mlserver",
            "infer",
            "-u",
            url,
            "-m",
            "nobody",
            "-i",
            str(requests),
            "-o",
            str(out),
            "-r",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wrong.returncode == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 8 and all("error" in doc for doc in lines)
    assert any("[404]" in doc["error"]["msg"] and "nobody" in doc["error"]["msg"] for doc in lines)
    grpc = subprocess.run(
        [
            sys.executable,
            "-m",
            "envserve",
            "mlserver",
            "infer",
            "-m",
            "d",
            "-i",
            str(requests),
            "-o",
            str(out),
            "-t",
            "grpc",
        ],
        capture_output=True,
        text=True,
    )
    assert grpc.returncode == 2 and "'grpc' transport is not supported" in grpc.stderr


def test_dockerfile_is_built_from_the_folder_itself(tmp_path, monkeypatch):
    """`mlserver dockerfile FOLDER` writes what `docker build FOLDER` builds: the folder copied in as the
    repository, its requirements.txt beside envserve, the mlserver command inside. (Built for real through
    `mlserver build` in test_image.py.)"""
    folder = tmp_path / "custom"
    write_model(folder, ".", {"name": "custom", "implementation": "models.Custom"})
    (folder / "requirements.txt").write_text("numpyro==0.15\n")
    done = subprocess.run(
        [sys.executable, "-m", "envserve", "mlserver", "dockerfile", str(folder), "-i"],
        capture_output=True,
        text=True,
        env={**os.environ, "ENVSERVE_IMAGE_BASE": "localhost/base:1"},
    )
    assert done.returncode == 0, done.stderr
    text = (folder / "Dockerfile").read_text()
    assert text.startswith("# Generated by `envserve image dockerfile`") and "FROM localhost/base:1" in text
    assert "COPY . /models/" in text
    assert "COPY requirements.txt /opt/envserve/server-requirements.txt" in text
    assert "envserve mlserver install-shim --bin-dir /usr/local/bin" in text
    assert "Dockerfile" in (folder / ".dockerignore").read_text()
    (folder / "environment.yml").write_text("dependencies: [numpy]\n")
    refused = subprocess.run(
        [sys.executable, "-m", "envserve", "mlserver", "dockerfile", str(folder)],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 3 and "does not build conda environments" in refused.stderr
