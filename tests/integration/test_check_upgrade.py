"""``envserve env check-upgrade`` with real environments on both sides: the digits SVC from Python 3.8 +
scikit-learn 0.24.2 against the server's own environment (identical, with scikit-learn's
InconsistentVersionWarning reported), a model whose answers change with the Python version (different,
exit 6, the first differing inputs named; close within a tolerance), and a candidate that cannot be
prepared (reported with the current side's results)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from examples import old_sklearn as envs

pytestmark = pytest.mark.slow  # the Python 3.8 environment is built once per session

DRIFT = '''
import sys

import numpy as np

from envserve.runtimes.base import Runtime


class Drift(Runtime):
    """Doubles its input; from Python 3.9 on, values above 5 also get 0.5 more, and negative ones fail."""

    def predict(self, request):
        x = np.asarray(request.inputs[0].data, dtype=float)
        if sys.version_info >= (3, 9) and (x < 0).any():
            raise ValueError("negative values are not supported any more")
        return x * 2 + (0.5 if sys.version_info >= (3, 9) else 0.0) * (x > 5)
'''


def _check(model, *args, cache):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "envserve",
            "env",
            "check-upgrade",
            str(model),
            *map(str, args),
            "--cache",
            str(cache),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def old():
    return envs.old_sklearn()


def test_the_digits_model_answers_the_same_in_the_servers_environment(tmp_path, old, digits):
    model = envs.write_model_folder(tmp_path / "digits-py38")
    x, _ = digits
    rows = tmp_path / "rows.csv"
    np.savetxt(rows, x[:40], delimiter=",", header=",".join("p%d" % i for i in range(64)), comments="")
    proc = _check(
        model, "--candidate", "server", "--inputs", rows, "--format", "json", cache=tmp_path / "cache"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["verdict"] == "identical" and report["rows"]["compared"] == 40
    assert report["current"]["environment"]["python"].startswith("3.8.")
    assert report["candidate_side"]["environment"]["kind"] == "server"
    assert any("InconsistentVersionWarning" in w for w in report["candidate_side"]["warnings"])
    assert not report["current"]["warnings"]
    for side in ("current", "candidate_side"):
        assert report[side]["load_seconds"] > 0 and report[side]["memory_mb"] > 0
        assert report[side]["latency_ms"]["calls"] == 2  # 40 rows in requests of 32


@pytest.fixture
def drift(tmp_path, old):
    folder = tmp_path / "drift"
    folder.mkdir()
    (folder / "drift.py").write_text(DRIFT)
    shutil.copy(old["tarball"], folder / "env.tar.gz")
    settings = {
        "name": "drift",
        "implementation": "drift.Drift",
        "parameters": {"environment_tarball": "./env.tar.gz"},
        "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 3]}],
    }
    (folder / "model-settings.json").write_text(json.dumps(settings))
    return folder


def test_a_model_that_answers_differently_fails_the_check_naming_the_rows(tmp_path, drift):
    cache = tmp_path / "cache"
    # rows generated from the metadata (seed 0): N(0, 1) values are rarely above 5, so scale them in jsonl
    lines = [
        {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 6]}]},
        {"id": "big", "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [7, 1, 1]}]},
    ]
    recorded = tmp_path / "recorded.jsonl"
    recorded.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    page = tmp_path / "report.html"
    proc = _check(
        drift, "--candidate", "server", "--inputs", recorded, "--format", "html", "-o", page, cache=cache
    )
    assert proc.returncode == 6, proc.stdout + proc.stderr
    assert "is different in candidate server" in proc.stderr
    html = page.read_text()
    assert "<svg" in html and "different" in html and "<script" not in html

    proc = _check(drift, "--candidate", "server", "--inputs", recorded, "--format", "json", cache=cache)
    report = json.loads(proc.stdout)
    assert report["rows"] == {"compared": 3, "identical": 1, "close": 0, "different": 2}
    first, second = report["first_differences"]
    assert first["request"] == "request-1" and first["row"] == 1 and first["input"] == {"x": [4.0, 5.0, 6.0]}
    assert first["current"] == [8.0, 10.0, 12.0] and first["candidate"] == [8.0, 10.0, 12.5]
    assert second["request"] == "big" and second["max_abs_diff"] == pytest.approx(0.5)

    # within a tolerance of 0.5 the same answers are "close", and the check passes
    proc = _check(
        drift, "--candidate", "server", "--inputs", recorded, "--atol", "0.5", "--format", "json", cache=cache
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["verdict"] == "close"

    # without recorded inputs, rows are generated from the metadata with a fixed seed: the same each run
    runs = [
        _check(drift, "--candidate", "server", "--rows", "20", "--format", "json", cache=cache)
        for _ in range(2)
    ]
    docs = [json.loads(r.stdout) for r in runs]
    assert (
        docs[0]["inputs"].startswith("20 rows generated") and docs[0]["current"]["latency_ms"]["calls"] == 1
    )
    # N(0, 1) rows hold negative values, which this candidate refuses: the same refusal each run
    assert docs[0]["errors"] == docs[1]["errors"] and len(docs[0]["errors"]) == 1


def test_a_candidate_that_cannot_be_prepared_is_reported_with_the_current_sides_results(tmp_path, drift):
    broken = tmp_path / "broken.tar.gz"
    data = Path(drift / "env.tar.gz").read_bytes()
    broken.write_bytes(data[: len(data) // 3])
    proc = _check(drift, "--candidate", broken, "--rows", "4", "--format", "json", cache=tmp_path / "cache")
    assert proc.returncode == 6, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["verdict"] == "failed"
    assert "broken.tar.gz" in report["candidate_side"]["error"]
    assert report["current"]["error"] is None and report["current"]["load_seconds"] > 0
    assert report["current"]["latency_ms"]["calls"] == 1  # the current side still answered the inputs

    proc = _check(drift, "--candidate", tmp_path / "nowhere", cache=tmp_path / "cache")
    assert proc.returncode == 6 and "does not exist" in proc.stdout


def test_inputs_the_candidate_refuses_are_reported_with_the_current_answers(tmp_path, drift):
    lines = [
        {"id": "fine", "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]},
        {
            "id": "negative",
            "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [-1, 2, 3]}],
        },
    ]
    recorded = tmp_path / "recorded.jsonl"
    recorded.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    proc = _check(
        drift, "--candidate", "server", "--inputs", recorded, "--format", "json", cache=tmp_path / "cache"
    )
    assert proc.returncode == 6, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["verdict"] == "errors" and report["rows"]["identical"] == 1
    (error,) = report["errors"]
    assert error["side"] == "candidate" and error["request"] == "negative"
    assert "negative values are not supported any more" in error["error"]
    assert report["current"]["latency_ms"]["calls"] == 2 and report["candidate_side"]["refused_inputs"] == 1
    text = _check(drift, "--candidate", "server", "--inputs", recorded, cache=tmp_path / "cache").stdout
    assert "ERRORS against candidate server" in text and "error (candidate side), request negative" in text


def test_an_mlflow_models_input_example_is_replayed_when_no_inputs_are_given(tmp_path):
    import warnings

    import mlflow.sklearn
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True, as_frame=True)
    folder = tmp_path / "iris"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's hints about integer columns
        mlflow.sklearn.save_model(
            LogisticRegression(max_iter=500).fit(x, y),
            folder,
            input_example=x.head(7),
            serialization_format="pickle",
        )
    # both sides in the server's environment here: this is about where the inputs come from
    (folder / "model-settings.json").write_text(
        json.dumps({"name": "iris", "implementation": "mlflow", "parameters": {"environment": "server"}})
    )
    proc = _check(folder, "--candidate", "server", "--format", "json", cache=tmp_path / "cache")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["inputs"] == "the model's MLflow input_example"
    assert report["rows"] == {"compared": 7, "identical": 7, "close": 0, "different": 0}
