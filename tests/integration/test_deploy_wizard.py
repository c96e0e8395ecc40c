"""The deployment wizard end to end: a pseudo-terminal (pexpect) against a real MLflow tracking server."""

from __future__ import annotations

import os
import subprocess
import sys

import pexpect
import pytest
import yaml

from envserve.deploy.manifest import TARGETS
from envserve.deploy.validate import validate_files
from tests.conftest import MLFLOW_SERVER_GROUP

pytestmark = pytest.mark.slow


def _spawn(tmp_path, tracking_uri, *args):
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "ENVSERVE_PLATFORM": str(tmp_path / "platform.json"),
        "COLUMNS": "200",
    }
    return pexpect.spawn(
        sys.executable,
        ["-m", "envserve", "deploy", "wizard", *args],
        cwd=str(tmp_path),
        env=env,
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 200),
    )


@MLFLOW_SERVER_GROUP
def test_wizard_in_a_terminal_with_invalid_answers_reasked(tmp_path, registered_digits):
    child = _spawn(tmp_path, registered_digits)
    child.expect(r"Model source \(registry/uri\) \[registry\]: ")
    child.sendline("")
    child.expect("1. digits")
    child.expect("2. iris-like")
    child.expect(r"Model \(name or number\): ")
    child.sendline("nope")
    child.expect("no registered model 'nope'; choose one of digits, iris-like")
    child.expect(r"Model \(name or number\): ")
    child.sendline("1")
    child.expect(r"Versions of digits: 1, 2; aliases: champion -> 1")
    child.expect(r"Version, alias or 'latest' \[latest\]: ")
    child.sendline("7")
    child.expect("digits has no version or alias '7'")
    child.sendline("champion")
    child.expect(r"Target \(%s\) \[seldon\]: " % "/".join(TARGETS))
    child.sendline("openshift")
    child.expect("'openshift' is not one of seldon, kserve, seldon2, k8s")
    child.sendline("seldon")
    child.expect(r"Server type .* \[MLFLOW_SERVER\]: ")
    child.sendline("")
    child.expect(r"Protocol \(seldon/v2\) \[seldon\]: ")
    child.sendline("")
    child.expect(r"Image: seldonio/mlflowserver:1.18.2 \(built-in default\)")
    child.expect(r"Image \(Enter keeps it, or NAME:TAG to override\) \[seldonio/mlflowserver:1.18.2\]: ")
    child.sendline("registry.local/mlflowserver:1.18.2-patched")
    child.expect(r"Namespace \[default\]: ")
    child.sendline("models")
    child.expect(r"Deployment name \[digits\]: ")
    child.sendline("Digits_Prod!")
    child.expect("'Digits_Prod!' is not a DNS-1123 label")
    child.sendline("digits-prod")
    child.expect(r"Replicas \[1\]: ")
    child.sendline("two")
    child.expect("'two' is not a whole number")
    child.sendline("2")
    child.expect(r"CPU .*: ")
    child.sendline("lots")
    child.expect("cpu 'lots' is not a Kubernetes quantity")
    child.sendline("500m")
    child.expect(r"Memory .*: ")
    child.sendline("1Gi")
    child.expect(r"Secret with storage credentials \[optional\].*: ")
    child.sendline("s3-creds")
    child.expect(r"Write the manifest to \[digits-prod-seldon.yaml\]: ")
    child.sendline("")
    child.expect("Review:")
    child.expect(r"image\s+registry.local/mlflowserver:1.18.2-patched \(explicit override")
    child.expect(r"Write it\? \(yes/no\) \[yes\]: ")
    child.sendline("yes")
    child.expect("wrote digits-prod-seldon.yaml \\(validated\\)")
    child.expect("apply with: kubectl apply -f digits-prod-seldon.yaml")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert "Traceback" not in (child.before or "")
    out = tmp_path / "digits-prod-seldon.yaml"
    assert validate_files([str(out)]) == []
    (doc,) = list(yaml.safe_load_all(out.read_text()))
    predictor = doc["spec"]["predictors"][0]
    assert doc["metadata"]["namespace"] == "models" and predictor["replicas"] == 2
    graph = predictor["graph"]
    assert graph["implementation"] == "MLFLOW_SERVER" and graph["envSecretRefName"] == "s3-creds"
    # alias champion -> version 1: the modelUri is where version 1's artifacts are stored
    assert graph["modelUri"].startswith(str(tmp_path.parent)) or graph["modelUri"].startswith(
        ("file:", "/", "mlflow-artifacts:")
    )
    container = predictor["componentSpecs"][0]["spec"]["containers"][0]
    assert container["image"] == "registry.local/mlflowserver:1.18.2-patched"
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}


@MLFLOW_SERVER_GROUP
def test_wizard_replays_an_answers_file(tmp_path, registered_digits):
    answers = tmp_path / "answers.yaml"
    answers.write_text(
        yaml.safe_dump(
            {
                "source": "registry",
                "model": "digits",
                "version": "latest",
                "target": "k8s",
                "server_type": "ENVSERVE",
                "protocol": "v2",
                "namespace": "prod",
                "name": "digits",
                "replicas": 3,
                "output": "k8s.yaml",
                "confirm": "yes",
            }
        )
    )
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registered_digits,
        "ENVSERVE_PLATFORM": str(tmp_path / "p.json"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "envserve", "deploy", "wizard", "--answers", str(answers)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all((tmp_path / "k8s.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["Deployment", "Service"]
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["serve", "--model-uri", "models:/digits/2"]  # latest = 2
    assert docs[0]["spec"]["replicas"] == 3

    # an invalid answer in a file is an error naming the key, not a prompt or a traceback
    answers.write_text(
        yaml.safe_dump(
            {
                "source": "registry",
                "model": "digits",
                "version": "latest",
                "target": "k8s",
                "replicas": "many",
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "envserve", "deploy", "wizard", "--answers", str(answers)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert proc.returncode == 3 and "answer 'replicas': 'many' is not a whole number" in proc.stderr
    assert "Traceback" not in proc.stderr

    # an unreachable registry is a clear error
    env["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"
    proc = subprocess.run(
        [sys.executable, "-m", "envserve", "deploy", "wizard", "--answers", str(answers)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert (
        proc.returncode == 3
        and "cannot reach the MLflow tracking server at http://127.0.0.1:9" in proc.stderr
    )


def test_cli_manifest_validate_and_platform_commands(tmp_path):
    from tests.conftest import ROOT

    env = {**os.environ, "ENVSERVE_PLATFORM": str(tmp_path / "platform.json")}

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "envserve", *args], capture_output=True, text=True, env=env, timeout=120
        )

    r = run("platform", "import", str(ROOT / "tests" / "fixtures" / "deploy" / "seldon-config.yaml"))
    assert r.returncode == 0 and "imported 6 server types" in r.stdout
    r = run("platform", "set-image", "SKLEARN_SERVER", "corp/sklearnserver:9", "--protocol", "seldon")
    assert r.returncode == 0
    r = run(
        "deploy",
        "manifest",
        "--name",
        "iris",
        "--server-type",
        "SKLEARN_SERVER",
        "--model-uri",
        "s3://m/iris",
    )
    assert r.returncode == 0, r.stderr
    (doc,) = list(yaml.safe_load_all(r.stdout))
    assert doc["metadata"]["annotations"]["envserve.io/image"] == "corp/sklearnserver:9"
    assert doc["metadata"]["annotations"]["envserve.io/image-source"] == "platform default"
    r = run("platform", "export", "--configmap")
    assert r.returncode == 0 and "corp/sklearnserver" in yaml.safe_load(r.stdout)["data"]["predictor_servers"]
    out = tmp_path / "m.yaml"
    r = run(
        "deploy", "manifest", "--name", "iris", "--target", "kserve", "--model-uri", "s3://m", "-o", str(out)
    )
    assert r.returncode == 0 and "kubectl apply -f" in r.stderr
    assert run("deploy", "validate", str(out)).stdout.strip() == "1 file(s) valid"
    text = out.read_text().replace("minReplicas: 1", "minReplicas: one")
    out.write_text(text)
    r = run("deploy", "validate", str(out))
    assert r.returncode == 4 and "spec.predictor.minReplicas: 'one' is not of type 'integer'" in r.stderr
    r = run("deploy", "manifest", "--name", "Bad_Name")
    assert r.returncode == 3 and "not a DNS-1123 label" in r.stderr
