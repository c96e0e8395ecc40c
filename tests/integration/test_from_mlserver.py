"""docs/from-mlserver.md, run as written (tests/integration/from_mlserver_doc.py): serving a repository
MLServer serves, the mlserver command, MLServer's metrics and its batch client. The image and MLflow
blocks run in test_image.py and test_mlflow_plugin.py."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import write_model
from tests.integration.from_mlserver_doc import blocks, run_blocks


def test_every_block_of_the_guide_is_run_by_some_test():
    kinds = {kind for kind, _ in blocks(("", "background", "podman", "mlflow", "mlflow-background"))}
    assert kinds == {"", "background", "podman", "mlflow", "mlflow-background"}, kinds
    import re

    from tests.integration.from_mlserver_doc import DOC

    text = DOC.read_text()
    unmarked = [m.start() for m in re.finditer(r"```sh\n", text) if not text[: m.start()].endswith("-->\n")]
    assert unmarked == [], "a sh block of docs/from-mlserver.md that no test runs"


@pytest.mark.slow
def test_the_serving_commands_run_as_written(tmp_path, digits_model_file, digits):
    models = tmp_path / "models"
    write_model(
        models,
        "digits",
        {"name": "digits", "implementation": "mlserver_sklearn.SKLearnModel"},
        digits_model_file,
    )
    x, _ = digits
    request = {"inputs": [{"name": "predict", "shape": [2, 64], "datatype": "FP32", "data": x[:2].tolist()}]}
    (tmp_path / "request.json").write_text(json.dumps(request))
    (tmp_path / "requests.jsonl").write_text(
        "\n".join(json.dumps(dict(request, id="r%d" % i)) for i in range(5)) + "\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": "%s:%s" % (home / ".local" / "bin", os.environ["PATH"])}
    printed = run_blocks(tmp_path, ("", "background"), env)
    ready, answer = _documents(printed[0])
    assert ready["ready"] is True
    assert answer["outputs"][0]["shape"] == [2, 1]
    assert (home / ".local" / "bin" / "mlserver").exists()
    (through_shim,) = _documents(printed[2])
    assert through_shim["outputs"] == answer["outputs"]
    metrics = printed[3]
    assert metrics.startswith('model_infer_request_success_total{model="digits",version=""} ')
    assert float(metrics.split()[-1]) >= 1
    lines = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert sorted(doc["parameters"]["batch_index"] for doc in lines) == [0, 1, 2, 3, 4]
    assert all(doc["outputs"][0]["shape"] == [2, 1] for doc in lines)


def _documents(text: str) -> list:
    """The JSON documents curl printed one after another (without newlines between them)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    text = text.strip()
    while at < len(text):
        doc, at = decoder.raw_decode(text, at)
        found.append(doc)
        while at < len(text) and text[at].isspace():
            at += 1
    return found
