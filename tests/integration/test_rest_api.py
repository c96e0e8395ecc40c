"""The V2 REST API against a real server on a loopback port, with a repository of real models."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, ServerProcess, custom_model, write_model

VECTORS = json.loads((ROOT / "tests" / "vectors" / "v2_requests.json").read_text())


@pytest.fixture(scope="module")
def repo(tmp_path_factory, digits_model_file, digits) -> Path:
    repo = tmp_path_factory.mktemp("repo")
    for version in ("1", "2"):
        write_model(
            repo,
            "mnist-svm-" + version,
            {
                "name": "mnist-svm",
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"version": version},
            },
            digits_model_file,
        )
    write_model(
        repo,
        "digits-short-name",
        {"name": "digits-short-name", "implementation": "sklearn"},
        digits_model_file,
    )
    write_model(repo, "digits-guessed", {"name": "digits-guessed"}, digits_model_file)
    custom_model(repo, "echo", "Echo")
    custom_model(repo, "frame", "Frame")
    custom_model(repo, "frame-default", "Frame", content_type="pd")
    custom_model(repo, "fails", "Fails")
    custom_model(repo, "broken-load", "BrokenLoad")
    write_model(repo, "no-artifact", {"name": "no-artifact", "implementation": "sklearn"})
    (repo / "bad-json").mkdir()
    (repo / "bad-json" / "model-settings.json").write_text("{not json")

    x, y = digits
    import lightgbm as lgb
    import xgboost as xgb

    booster = xgb.train(
        {"objective": "multi:softprob", "num_class": 10, "max_depth": 3},
        xgb.DMatrix(x[:500], label=y[:500]),
        num_boost_round=5,
    )
    folder = write_model(repo, "digits-xgb", {"name": "digits-xgb", "implementation": "xgboost"})
    booster.save_model(str(folder / "model.json"))
    lgbm = lgb.train(
        {"objective": "multiclass", "num_class": 10, "verbose": -1, "num_leaves": 7},
        lgb.Dataset(x[:500], label=y[:500]),
        num_boost_round=5,
    )
    folder = write_model(repo, "digits-lgbm", {"name": "digits-lgbm", "implementation": "lightgbm"})
    lgbm.save_model(str(folder / "model.txt"))
    import catboost

    classifier = catboost.CatBoostClassifier(
        iterations=30, depth=4, thread_count=1, verbose=False, allow_writing_files=False
    ).fit(x[:500], y[:500])
    folder = write_model(repo, "digits-cb", {"name": "digits-cb", "implementation": "catboost"})
    classifier.save_model(str(folder / "model.cbm"))
    regressor = catboost.CatBoostRegressor(
        iterations=10, depth=3, thread_count=1, verbose=False, allow_writing_files=False
    ).fit(x[:500], y[:500] * 0.5)
    folder = write_model(repo, "digits-cb-reg", {"name": "digits-cb-reg"})  # found by its model.cbm
    regressor.save_model(str(folder / "model.cbm"))
    return repo


@pytest.fixture(scope="module")
def server(repo):
    proc = ServerProcess(repo, [])
    try:
        yield proc.wait_ready()
    finally:
        assert proc.stop() == 0, proc.log


@pytest.fixture
def client(server):
    with server.client() as c:
        yield c


def digits_body(rows, **extra):
    rows = np.asarray(rows, dtype=np.float32)
    return {
        "inputs": [{"name": "predict", "shape": list(rows.shape), "datatype": "FP32", "data": rows.tolist()}],
        **extra,
    }


# -- health, metadata ---------------------------------------------------------------------------------------


def test_health_and_server_metadata(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    r = client.get("/v2/health/ready")
    assert (r.status_code, r.json()) == (200, {"ready": True})
    meta = client.get("/v2").json()
    assert meta["name"] == "envserve" and "model_repository" in meta["extensions"] and meta["version"]


def test_model_metadata_and_ready(client):
    meta = client.get("/v2/models/mnist-svm").json()
    assert meta["name"] == "mnist-svm" and meta["versions"] == ["2"] and meta["platform"] == "sklearn"
    assert client.get("/v2/models/mnist-svm/versions/1").json()["versions"] == ["1"]
    r = client.get("/v2/models/mnist-svm/versions/1/ready")
    assert (r.status_code, r.json()) == (200, {"name": "mnist-svm", "ready": True})
    r = client.get("/v2/models/broken-load/ready")
    assert (r.status_code, r.json()["ready"]) == (400, False)
    r = client.get("/v2/models/nope/ready")
    assert r.status_code == 404 and "'nope' not found" in r.json()["error"]


# -- inference ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["mnist-svm", "digits-short-name", "digits-guessed"])
def test_digits_predictions_match_the_model(client, digits, digits_model_file, model):
    import joblib

    x, _ = digits
    expected = joblib.load(digits_model_file).predict(x[-20:])
    r = client.post("/v2/models/%s/infer" % model, json=digits_body(x[-20:], id="req-7"))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "req-7" and doc["model_name"] == model
    (out,) = doc["outputs"]
    # a model that names MLServer's runtime answers MLServer's [N, 1]; the others numpy's own shape
    shape = [20, 1] if model == "mnist-svm" else [20]
    assert out["name"] == "predict" and out["shape"] == shape and out["datatype"] == "INT64"
    assert out["data"] == expected.tolist()


def test_versions_side_by_side(client, digits):
    x, _ = digits
    for version in ("1", "2"):
        r = client.post("/v2/models/mnist-svm/versions/%s/infer" % version, json=digits_body(x[:1]))
        assert r.status_code == 200 and r.json()["model_version"] == version


def test_flat_data_and_requested_outputs(client, digits, digits_model_file):
    x, _ = digits
    body = {
        "inputs": [{"name": "x", "shape": [2, 64], "datatype": "FP64", "data": x[:2].ravel().tolist()}],
        "outputs": [{"name": "predict"}, {"name": "decision_function"}],
        "parameters": {"trace": "abc"},
    }
    r = client.post("/v2/models/mnist-svm/infer", json=body)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert set(outputs) == {"predict", "decision_function"}
    assert outputs["decision_function"]["shape"] == [2, 10]
    import joblib

    model = joblib.load(digits_model_file)
    np.testing.assert_allclose(
        np.asarray(outputs["decision_function"]["data"]).reshape(2, 10),
        model.decision_function(x[:2]),
        rtol=1e-6,
    )
    # An estimator without predict_proba (SVC without probability=True) says so.
    r = client.post("/v2/models/mnist-svm/infer", json={**body, "outputs": [{"name": "predict_proba"}]})
    assert r.status_code == 400 and "has no predict_proba()" in r.json()["error"]


def test_xgboost_lightgbm_and_catboost_runtimes(client, digits):
    x, y = digits
    for model in ("digits-xgb", "digits-lgbm", "digits-cb"):
        r = client.post(
            "/v2/models/%s/infer" % model,
            json={**digits_body(x[:50]), "outputs": [{"name": "predict"}, {"name": "predict_proba"}]},
        )
        assert r.status_code == 200, r.text
        outputs = {o["name"]: o for o in r.json()["outputs"]}
        labels = np.asarray(outputs["predict"]["data"])
        probs = np.asarray(outputs["predict_proba"]["data"]).reshape(outputs["predict_proba"]["shape"])
        assert probs.shape == (50, 10)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        assert (labels.ravel() == probs.argmax(axis=1)).all(), model
        assert (labels.ravel() == y[:50]).mean() > 0.8, model  # trained on these rows: mostly right


def test_a_catboost_regressor_answers_values_and_refuses_what_it_cannot_give(client, digits, repo):
    import catboost

    x, _ = digits
    r = client.post("/v2/models/digits-cb-reg/infer", json=digits_body(x[:5]))
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["datatype"] == "FP64" and len(out["data"]) == 5
    model = catboost.CatBoost()
    model.load_model(str(repo / "digits-cb-reg" / "model.cbm"))
    np.testing.assert_allclose(np.asarray(out["data"]).ravel(), model.predict(x[:5]), rtol=1e-9)
    r = client.post(
        "/v2/models/digits-cb-reg/infer", json={**digits_body(x[:5]), "outputs": [{"name": "predict_proba"}]}
    )
    assert r.status_code == 400 and "has no predict_proba output" in r.json()["error"]
    r = client.post("/v2/models/digits-cb/infer", json=digits_body(x[:2, :10]))
    assert r.status_code == 400 and "64 features" in r.json()["error"], r.text


@pytest.mark.parametrize(
    "datatype,data,expected",
    [
        ("BOOL", [True, False, True, True], [True, False, True, True]),
        ("UINT8", [0, 255, 1, 2], [0, 255, 1, 2]),
        ("UINT16", [0, 65535, 1, 2], [0, 65535, 1, 2]),
        ("UINT32", [0, 4294967295, 1, 2], [0, 4294967295, 1, 2]),
        ("UINT64", [0, 18446744073709551615, 1, 2], [0, 18446744073709551615, 1, 2]),
        ("INT8", [-128, 127, 0, 1], [-128, 127, 0, 1]),
        ("INT16", [-32768, 32767, 0, 1], [-32768, 32767, 0, 1]),
        ("INT32", [-(2**31), 2**31 - 1, 0, 1], [-(2**31), 2**31 - 1, 0, 1]),
        ("INT64", [-(2**63), 2**63 - 1, 0, 1], [-(2**63), 2**63 - 1, 0, 1]),
        ("FP16", [0.5, -2.0, 1.0, 65504.0], [0.5, -2.0, 1.0, 65504.0]),
        ("FP32", [0.25, -1.5, 3, 1e30], [0.25, -1.5, 3.0, 1e30]),
        ("FP64", [0.1, -1e300, 3, 2.5], [0.1, -1e300, 3.0, 2.5]),
        ("BYTES", ["a", "héllo", "", "x y"], ["a", "héllo", "", "x y"]),
    ],
)
def test_every_datatype_round_trips(client, datatype, data, expected):
    nested = [data[:2], data[2:]]
    r = client.post(
        "/v2/models/echo/infer",
        json={"inputs": [{"name": "t", "shape": [2, 2], "datatype": datatype, "data": nested}]},
    )
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert (out["name"], out["shape"], out["datatype"]) == ("t", [2, 2], datatype)
    assert out["data"] == expected


def test_str_and_base64_content_types(client):
    encoded = base64.b64encode(b"\xff\xfebinary").decode()
    body = {
        "inputs": [
            {
                "name": "s",
                "shape": [2],
                "datatype": "BYTES",
                "data": ["héllo", "w"],
                "parameters": {"content_type": "str"},
            },
            {
                "name": "b",
                "shape": [1],
                "datatype": "BYTES",
                "data": [encoded],
                "parameters": {"content_type": "base64"},
            },
        ]
    }
    r = client.post("/v2/models/echo/infer", json=body)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["s"]["data"] == ["héllo", "w"] and outputs["s"]["parameters"] == {"content_type": "str"}
    # decoded bytes are not UTF-8, so they go back out base64-encoded
    assert outputs["b"]["parameters"] == {"content_type": "base64"}
    assert base64.b64decode(outputs["b"]["data"][0]) == b"\xff\xfebinary"


def test_pd_content_type_builds_a_dataframe(client):
    inputs = [
        {"name": "age", "shape": [3, 1], "datatype": "INT32", "data": [[30], [40], [50]]},
        {"name": "score", "shape": [3], "datatype": "FP64", "data": [0.5, 0.25, 1.0]},
        {"name": "city", "shape": [3], "datatype": "BYTES", "data": ["Oslo", "Rome", "Lima"]},
    ]
    for model, params in (("frame", {"content_type": "pd"}), ("frame-default", {})):
        r = client.post("/v2/models/%s/infer" % model, json={"inputs": inputs, "parameters": params})
        assert r.status_code == 200, r.text
        outputs = {o["name"]: o["data"] for o in r.json()["outputs"]}
        assert outputs["columns"] == ["age", "score", "city"]
        assert outputs["dtypes"][:2] == ["int32", "float64"]
        assert outputs["rows"] == [3]
    r = client.post(
        "/v2/models/frame/infer",
        json={
            "inputs": [inputs[0], {**inputs[1], "shape": [2], "data": [1, 2]}],
            "parameters": {"content_type": "pd"},
        },
    )
    assert r.status_code == 400 and "equal length" in r.json()["error"]


# -- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", VECTORS["errors"], ids=lambda c: c["case"])
def test_error_vectors(client, case):
    path = "/v2/models/%s%s/infer" % (
        case["model"],
        "/versions/" + case["version"] if "version" in case else "",
    )
    if "raw" in case:
        r = client.post(path, content=case["raw"].encode(), headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=case["body"])
    assert r.status_code == case["status"], r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and case["error"] in body["error"], body
    assert "Traceback" not in body["error"]


def test_body_over_the_limit_is_413(tmp_path, start_server, digits_model_file):
    write_model(tmp_path, "m", {"name": "m", "implementation": "sklearn"}, digits_model_file)
    server = start_server(tmp_path, "--max-request-size", "2000")
    with server.client() as c:
        r = c.post("/v2/models/m/infer", content=b"[" + b"1," * 2000 + b"1]")
        assert r.status_code == 413 and "over the limit of 2000 bytes" in r.json()["error"]

        def chunks():  # no Content-Length: the limit is enforced while reading
            for _ in range(10):
                yield b" " * 500

        r = c.post("/v2/models/m/infer", content=chunks())
        assert r.status_code == 413
        assert c.get("/v2/health/ready").status_code == 200


def test_unknown_route_and_wrong_method(client):
    r = client.get("/v3/anything")
    assert r.status_code == 404 and "no route" in r.json()["error"]
    r = client.get("/v2/models/mnist-svm/infer")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and "use POST" in r.json()["error"]


def test_bad_requests_do_not_disturb_other_models(client, digits):
    x, _ = digits
    for _ in range(3):
        assert client.post("/v2/models/fails/infer", json=digits_body(x[:1])).status_code == 500
        assert client.post("/v2/models/echo/infer", content=b"{").status_code == 400
    r = client.post("/v2/models/mnist-svm/infer", json=digits_body(x[:1]))
    assert r.status_code == 200


# -- repository extension -----------------------------------------------------------------------------------


def test_repository_index_shows_states_and_reasons(client, server):
    rows = client.post("/v2/repository/index").json()
    by_name = {(r["name"], r.get("version")): r for r in rows}
    assert by_name[("mnist-svm", "1")]["state"] == "READY"
    assert by_name[("mnist-svm", "2")]["state"] == "READY"
    broken = by_name[("broken-load", None)]
    assert broken["state"] == "UNAVAILABLE" and "weights file is corrupt" in broken["reason"]
    missing = by_name[("no-artifact", None)]
    assert missing["state"] == "UNAVAILABLE" and "model.joblib" in missing["reason"]
    bad = by_name[("bad-json", None)]
    assert bad["state"] == "UNAVAILABLE" and "not valid JSON" in bad["reason"]
    # the log shows where the model's own load() raised; envserve's own reasons come without a traceback
    log = server.log
    failed = log[log.index("model broken-load failed to load") :]
    trace = failed[failed.index("\nTraceback (most recent call last)") :]
    assert trace.index('runtimes.py", line') < trace.index("\nRuntimeError: weights file is corrupt"), log
    lines = log.splitlines()
    at = next(i for i, line in enumerate(lines) if "model no-artifact failed to load" in line)
    assert not lines[at + 1].startswith("Traceback"), log
    ready = client.post("/v2/repository/index", json={"ready": True}).json()
    assert {r["state"] for r in ready} == {"READY"} and len(ready) < len(rows)


def test_unload_and_load(client, digits):
    x, _ = digits
    assert client.post("/v2/repository/models/digits-guessed/unload").status_code == 200
    r = client.post("/v2/models/digits-guessed/infer", json=digits_body(x[:1]))
    assert r.status_code == 503 and "unloaded" in r.json()["error"] and "load it again" in r.json()["error"]
    rows = {r["name"]: r for r in client.post("/v2/repository/index").json()}
    assert rows["digits-guessed"]["state"] == "UNAVAILABLE" and rows["digits-guessed"]["reason"] == "unloaded"
    assert client.post("/v2/repository/models/digits-guessed/load").status_code == 200
    assert client.post("/v2/models/digits-guessed/infer", json=digits_body(x[:1])).status_code == 200
    r = client.post("/v2/repository/models/unknown-model/load")
    assert r.status_code == 404 and "no model named 'unknown-model'" in r.json()["error"]
    r = client.post("/v2/repository/models/broken-load/load")
    assert r.status_code == 500 and "weights file is corrupt" in r.json()["error"]
