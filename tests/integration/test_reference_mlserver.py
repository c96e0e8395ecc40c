"""envserve's V2 answers side by side with MLServer 1.7 (mlserver-sklearn) on the same model folders.

The same requests go to both; compared: the status class, and for answers the outputs' names, shapes,
datatypes and values, so client code written against MLServer keeps working (issue: "answers that
MLServer clients already parse"). Requests come from a table (datatypes, requested outputs, versions,
content types, the mistakes clients make) and from hypothesis. Differences on purpose: docs/compat.md.
"""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Reference, ServerProcess, free_port, reference_venv, side_by_side, write_model

pytestmark = pytest.mark.slow  # builds MLServer's venv once per machine


@pytest.fixture(scope="module")
def repo(tmp_path_factory, digits_model_file):
    from sklearn import datasets, linear_model

    repo = tmp_path_factory.mktemp("reference-mlserver")
    write_model(
        repo,
        "digits",
        {"name": "digits", "implementation": "mlserver_sklearn.SKLearnModel"},
        digits_model_file,
    )
    write_model(
        repo,
        "digits-v",
        {
            "name": "digits-v",
            "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"version": "v1"},
        },
        digits_model_file,
    )
    diabetes = datasets.load_diabetes()
    regressor = linear_model.Ridge().fit(diabetes.data, diabetes.target)
    import joblib

    folder = write_model(repo, "ridge", {"name": "ridge", "implementation": "mlserver_sklearn.SKLearnModel"})
    joblib.dump(regressor, folder / "model.joblib")
    _boosted_models(repo)
    return repo


def _boosted_models(repo):
    """XGBoost and LightGBM models saved every way their users save them, named with MLServer's
    runtime names: a Booster's file, an XGBClassifier's, an XGBRegressor's; LightGBM boosters."""
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn import datasets

    x, y = datasets.load_digits(return_X_y=True)
    binary = (y >= 5).astype(int)

    def xgb_folder(name):
        return write_model(repo, name, {"name": name, "implementation": "mlserver_xgboost.XGBoostModel"})

    rounds = {"num_boost_round": 4}
    params = {"max_depth": 3, "nthread": 1}
    xgb.train(
        dict(params, objective="binary:logistic"), xgb.DMatrix(x[:400], label=binary[:400]), **rounds
    ).save_model(str(xgb_folder("xgb-binary-booster") / "model.json"))
    xgb.train(
        dict(params, objective="multi:softprob", num_class=10), xgb.DMatrix(x[:400], label=y[:400]), **rounds
    ).save_model(str(xgb_folder("xgb-multi-booster") / "model.json"))
    xgb.XGBClassifier(n_estimators=4, max_depth=3, n_jobs=1).fit(x[:400], y[:400]).save_model(
        str(xgb_folder("xgb-classifier") / "model.json")
    )
    xgb.XGBClassifier(n_estimators=4, max_depth=3, n_jobs=1).fit(x[:400], binary[:400]).save_model(
        str(xgb_folder("xgb-binary-classifier") / "model.ubj")
    )
    xgb.XGBRegressor(n_estimators=4, max_depth=3, n_jobs=1).fit(x[:400], y[:400] * 0.5).save_model(
        str(xgb_folder("xgb-regressor") / "model.json")
    )
    for name, objective in (
        ("lgb-multi", "multiclass"),
        ("lgb-binary", "binary"),
        ("lgb-regression", "regression"),
    ):
        labels = {"multiclass": y, "binary": binary, "regression": y * 0.5}[objective]
        extra = {"num_class": 10} if objective == "multiclass" else {}
        booster = lgb.train(
            dict(objective=objective, verbose=-1, num_leaves=7, num_threads=1, **extra),
            lgb.Dataset(x[:400], label=labels[:400]),
            num_boost_round=4,
        )
        folder = write_model(repo, name, {"name": name, "implementation": "mlserver_lightgbm.LightGBMModel"})
        booster.save_model(str(folder / "model.bst"))
    import catboost

    sizes = np.where(y >= 5, "large", "small")
    for name, model, labels in (
        ("cb-binary", catboost.CatBoostClassifier(), binary),
        ("cb-multi", catboost.CatBoostClassifier(loss_function="MultiClass"), y),
        ("cb-labels", catboost.CatBoostClassifier(), sizes),
        ("cb-regressor", catboost.CatBoostRegressor(), y * 0.5),
    ):
        model.set_params(iterations=4, depth=3, thread_count=1, verbose=False, allow_writing_files=False)
        model.fit(x[:400], labels[:400])
        folder = write_model(repo, name, {"name": name, "implementation": "mlserver_catboost.CatboostModel"})
        model.save_model(str(folder / "model.cbm"))


@pytest.fixture(scope="module")
def servers(repo, tmp_path_factory):
    venv = reference_venv("mlserver")
    http, grpc, metrics = free_port(), free_port(), free_port()
    logs = tmp_path_factory.mktemp("reference-mlserver-logs")
    mlserver = Reference(
        [str(venv / "bin" / "mlserver"), "start", str(repo)],
        "http://127.0.0.1:%d" % http,
        "/v2/health/ready",
        logs / "mlserver.log",
        env={
            "MLSERVER_HTTP_PORT": str(http),
            "MLSERVER_GRPC_PORT": str(grpc),
            "MLSERVER_METRICS_PORT": str(metrics),
            "MLSERVER_HOST": "127.0.0.1",
            "MLSERVER_PARALLEL_WORKERS": "0",
        },
    )
    mlserver.grpc_address = "127.0.0.1:%d" % grpc
    mlserver.metrics_url = "http://127.0.0.1:%d/metrics" % metrics
    envserve = ServerProcess(repo, [])
    with side_by_side(mlserver, envserve):
        envserve.metrics_url = envserve.url + "/metrics"
        yield mlserver, envserve


def _pair(servers, path: str, body):
    mlserver, envserve = servers
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"Content-Type": "application/json"}
    return (
        httpx.post(envserve.url + path, content=data, headers=headers, timeout=60),
        httpx.post(mlserver.url + path, content=data, headers=headers, timeout=60),
    )


def _values_close(a, b) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, float) or isinstance(y, float):
            if not math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif x != y:
            return False
    return True


def _same(ours, theirs, case: str) -> None:
    assert ours.status_code // 100 == theirs.status_code // 100, (
        case,
        ours.status_code,
        ours.text[:400],
        theirs.status_code,
        theirs.text[:400],
    )
    if theirs.status_code != 200:
        assert "error" in ours.json(), (case, ours.text)
        return
    a, b = ours.json(), theirs.json()
    assert a["model_name"] == b["model_name"], case
    assert a.get("model_version") == b.get("model_version"), (
        case,
        a.get("model_version"),
        b.get("model_version"),
    )
    assert a.get("id") == b.get("id") or b.get("id") is None or "id" not in a, (
        case,
        a.get("id"),
        b.get("id"),
    )
    outs_a = {o["name"]: o for o in a["outputs"]}
    outs_b = {o["name"]: o for o in b["outputs"]}
    assert outs_a.keys() == outs_b.keys(), (case, list(outs_a), list(outs_b))
    for name, ob in outs_b.items():
        oa = outs_a[name]
        assert (oa["shape"], oa["datatype"]) == (ob["shape"], ob["datatype"]), (
            case,
            name,
            oa["shape"],
            oa["datatype"],
            ob["shape"],
            ob["datatype"],
        )
        flat_a = np.asarray(oa["data"]).ravel().tolist()
        flat_b = np.asarray(ob["data"]).ravel().tolist()
        if ob["datatype"] in ("FP32", "FP16"):  # MLServer prints float32 values as float64, envserve shortest
            dtype = np.float32 if ob["datatype"] == "FP32" else np.float16
            flat_a, flat_b = (np.asarray(v, dtype=dtype).tolist() for v in (flat_a, flat_b))
        assert _values_close(flat_a, flat_b), (case, name, flat_a[:8], flat_b[:8])


def _digits(rows, datatype="FP32", **extra):
    return {
        "inputs": [
            {"name": "predict", "shape": [len(rows), 64], "datatype": datatype, "data": rows, **extra}
        ],
    }


def _cases(digits):
    x, _ = digits
    rows = x[:3].tolist()
    yield "fp32 2-D", "/v2/models/digits/infer", _digits(rows)
    yield "fp64 2-D", "/v2/models/digits/infer", _digits(rows, "FP64")
    yield "int64 2-D", "/v2/models/digits/infer", _digits([[int(v) for v in r] for r in rows], "INT64")
    yield (
        "flat data",
        "/v2/models/digits/infer",
        {
            "inputs": [
                {"name": "predict", "shape": [3, 64], "datatype": "FP32", "data": x[:3].ravel().tolist()}
            ]
        },
    )
    yield "with an id", "/v2/models/digits/infer", dict(_digits(rows), id="req-7")
    yield (
        "requested predict_proba",
        "/v2/models/digits/infer",
        dict(_digits(rows), outputs=[{"name": "predict_proba"}]),
    )
    yield "requested predict", "/v2/models/digits/infer", dict(_digits(rows), outputs=[{"name": "predict"}])
    yield "np content type", "/v2/models/digits/infer", _digits(rows, parameters={"content_type": "np"})
    yield "version path", "/v2/models/digits-v/versions/v1/infer", _digits(rows)
    yield (
        "regressor",
        "/v2/models/ridge/infer",
        {
            "inputs": [
                {"name": "x", "shape": [2, 10], "datatype": "FP64", "data": [[0.01] * 10, [-0.02] * 10]}
            ]
        },
    )
    yield "unknown model", "/v2/models/nope/infer", _digits(rows)
    yield "unknown version", "/v2/models/digits-v/versions/v9/infer", _digits(rows)
    yield (
        "wrong number of features",
        "/v2/models/digits/infer",
        {"inputs": [{"name": "predict", "shape": [1, 3], "datatype": "FP32", "data": [[1, 2, 3]]}]},
    )
    yield (
        "one row as 1-D",
        "/v2/models/digits/infer",
        {"inputs": [{"name": "predict", "shape": [64], "datatype": "FP32", "data": rows[0]}]},
    )
    yield (
        "rank 0",
        "/v2/models/digits/infer",
        {"inputs": [{"name": "predict", "shape": [], "datatype": "FP32", "data": [1.0]}]},
    )
    yield (
        "unknown output",
        "/v2/models/digits/infer",
        dict(_digits(rows), outputs=[{"name": "predict_nonsense"}]),
    )
    yield (
        "shape and data disagree",
        "/v2/models/digits/infer",
        {"inputs": [{"name": "predict", "shape": [2, 64], "datatype": "FP32", "data": rows[0]}]},
    )
    yield "no inputs", "/v2/models/digits/infer", {"inputs": []}
    yield "malformed JSON", "/v2/models/digits/infer", b"{nope"
    yield (
        "strings for floats",
        "/v2/models/digits/infer",
        {"inputs": [{"name": "predict", "shape": [1, 2], "datatype": "FP32", "data": ["a", "b"]}]},
    )


#: Client mistakes MLServer answers with 500 (an unhandled exception in its codec or in scikit-learn);
#: envserve answers 400 with an error naming the problem (docs/compat.md) -- case: text in our error.
MLSERVER_500 = {
    "shape and data disagree": "shape",
    "strings for floats": "predict",
    "wrong number of features": "expects 64 features per row; input 'predict' has 3",
    "one row as 1-D": "takes a two-dimensional input",
    "rank 0": "takes a two-dimensional input",
}


def test_every_case_answers_as_mlserver_does(servers, digits):
    problems = []
    for case, path, body in _cases(digits):
        ours, theirs = _pair(servers, path, body)
        try:
            if case in MLSERVER_500:
                assert theirs.status_code == 500 and ours.status_code == 400, (
                    case,
                    ours.text,
                    theirs.status_code,
                )
                assert MLSERVER_500[case] in ours.json()["error"], (case, ours.text)
                continue
            _same(ours, theirs, case)
        except AssertionError as exc:
            problems.append(str(exc)[:600])
    assert problems == [], "\n\n".join(problems)


BOOSTED = (
    "xgb-binary-booster",
    "xgb-multi-booster",
    "xgb-classifier",
    "xgb-binary-classifier",
    "xgb-regressor",
    "lgb-multi",
    "lgb-binary",
    "lgb-regression",
    "cb-binary",
    "cb-multi",
    "cb-labels",
    "cb-regressor",
)


@pytest.mark.parametrize("model", BOOSTED)
def test_xgboost_lightgbm_and_catboost_answer_as_mlservers_runtimes(servers, digits, model):
    """Named with MLServer's runtime names, a model answers what MLServer's runtime answers: what the
    booster predicts (a probability, class probabilities, values) or, for a model saved through
    XGBClassifier, class labels and predict_proba; the same errors for outputs it cannot give; CatBoost
    models as the CatBoostClassifier MLServer loads them as (labels, whatever outputs are named)."""
    x, _ = digits
    rows = x[:4].tolist()
    path = "/v2/models/%s/infer" % model
    problems = []
    for case, body in (
        ("default", _digits(rows, "FP64")),
        ("fp32", _digits(rows)),
        ("predict", dict(_digits(rows, "FP64"), outputs=[{"name": "predict"}])),
        ("predict_proba", dict(_digits(rows, "FP64"), outputs=[{"name": "predict_proba"}])),
        ("both", dict(_digits(rows, "FP64"), outputs=[{"name": "predict"}, {"name": "predict_proba"}])),
        ("unknown output", dict(_digits(rows, "FP64"), outputs=[{"name": "leaves"}])),
    ):
        ours, theirs = _pair(servers, path, body)
        try:
            _same(ours, theirs, "%s %s" % (model, case))
        except AssertionError as exc:
            problems.append(str(exc)[:600])
    assert problems == [], "\n\n".join(problems)


def test_model_metadata_and_readiness_agree(servers):
    mlserver, envserve = servers
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/digits/ready"):
        assert httpx.get(envserve.url + path).status_code == httpx.get(mlserver.url + path).status_code == 200
    ours = httpx.get(envserve.url + "/v2/models/digits").json()
    theirs = httpx.get(mlserver.url + "/v2/models/digits").json()
    assert ours["name"] == theirs["name"] and ours.get("platform", "") in (
        theirs.get("platform", ""),
        "sklearn",
    )


@settings(
    max_examples=20,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    pixels=st.lists(st.lists(st.integers(0, 16), min_size=64, max_size=64), min_size=1, max_size=5),
    output=st.sampled_from([None, "predict", "predict_proba"]),
    datatype=st.sampled_from(["FP32", "FP64"]),
)
def test_generated_requests_agree(servers, pixels, output, datatype):
    body = _digits([[float(p) for p in row] for row in pixels], datatype)
    if output:
        body["outputs"] = [{"name": output}]
    ours, theirs = _pair(servers, "/v2/models/digits/infer", body)
    _same(ours, theirs, "generated %s %s" % (output, datatype))


def _scrape(url: str):
    """Every sample of a Prometheus text page -> value, and every family -> (type, its label names)."""
    from prometheus_client.parser import text_string_to_metric_families

    samples, families = {}, {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=30).text):
        names = set()
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
            names.update(k for k in sample.labels if k != "le")
        families[family.name] = (family.type, frozenset(names))
    return samples, families


def test_mlservers_metric_families_are_served_and_count_the_same(servers, digits):
    """A dashboard written for MLServer reads envserve's /metrics: every family MLServer 1.7 exposes for
    inference, REST and gRPC is there with its type and labels, and counts the same calls the same."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    mlserver, envserve = servers
    before = {s: _scrape(s.metrics_url)[0] for s in servers}
    rows = digits[0][:2].tolist()
    good = _digits(rows)
    for _ in range(3):
        ours, theirs = _pair(servers, "/v2/models/digits/infer", good)
        assert ours.status_code == theirs.status_code == 200
    ours, theirs = _pair(servers, "/v2/models/digits/infer", {"inputs": [{"name": "x"}]})
    assert 400 <= ours.status_code < 500 and 400 <= theirs.status_code < 500
    request = pb.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 64])
    tensor.contents.fp32_contents.extend(float(v) for v in rows[0])
    for address in (mlserver.grpc_address, envserve.grpc_address):
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(2):
                assert stub.ModelInfer(request, timeout=60).outputs[0].name == "predict"
            assert stub.ServerLive(pb.ServerLiveRequest(), timeout=60).live
    after = {s: _scrape(s.metrics_url) for s in servers}

    def grew(server, name, **labels):
        def total(samples):
            return sum(
                v for (n, have), v in samples.items() if n == name and labels.items() <= dict(have).items()
            )

        return total(after[server][0]) - total(before[server])

    theirs_families, ours_families = after[mlserver][1], after[envserve][1]
    wanted = [
        "model_infer_request_success",
        "model_infer_request_failure",
        "model_infer_request_duration",
        "rest_server_requests",
        "rest_server_request_duration_seconds",
        "rest_server_requests_in_progress",
        "grpc_server_started",
        "grpc_server_handled",
        "grpc_server_handling_seconds",
    ]
    for name in wanted:
        assert name in theirs_families, "MLServer 1.7 no longer exposes %s; update this list" % name
        assert ours_families.get(name) == theirs_families[name], (name, ours_families.get(name))
    checks = [
        ("model_infer_request_success_total", {"model": "digits"}),
        (
            "rest_server_requests_total",
            {"path": "/v2/models/{model_name}/infer", "status_code": "200", "method": "POST"},
        ),
        ("rest_server_request_duration_seconds_count", {"path": "/v2/models/{model_name}/infer"}),
        ("grpc_server_started_total", {"grpc_method": "ModelInfer", "grpc_type": "UNARY"}),
        ("grpc_server_handled_total", {"grpc_method": "ModelInfer", "grpc_code": "OK"}),
        ("grpc_server_handled_total", {"grpc_method": "ServerLive", "grpc_code": "OK"}),
        ("grpc_server_handling_seconds_count", {"grpc_method": "ModelInfer"}),
    ]
    for name, labels in checks:
        assert grew(envserve, name, **labels) == grew(mlserver, name, **labels) > 0, (name, labels)
    assert grew(envserve, "model_infer_request_success_total", model="digits") == 5
    # a request the model refuses is a failure in both; one that is not V2 at all never reaches a model
    assert grew(envserve, "rest_server_requests_total", path="/v2/models/{model_name}/infer") == 4
    assert grew(envserve, "rest_server_requests_total", path="/v2/health/ready") == 0
    # MLServer serves its workers' queue only with workers (this one runs in process, as envserve's does)
    assert ours_families["parallel_request_queue"] == ("histogram", frozenset())


def test_every_key_mlserver_takes_is_one_envserve_takes():
    """MLServer 1.7's own Settings class lists what its settings.json takes: envserve's table has each
    (same name, an alias, or ignored with a reason written in docs/compat.md)."""
    import subprocess
    from pathlib import Path

    from envserve.settings import server

    python = reference_venv("mlserver") / "bin" / "python"
    script = "from mlserver.settings import Settings; print(' '.join(sorted(Settings.model_fields)))"
    theirs = set(
        subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=True).stdout.split()
    )
    assert theirs == set(server.MLSERVER_SETTINGS)
    compat = (Path(__file__).resolve().parents[2] / "docs" / "compat.md").read_text()
    for key in server._MLSERVER_IGNORED:
        assert "`%s`" % key in compat, key


#: Where the answers differ over gRPC (docs/compat.md): (envserve's, MLServer's): an answer or the code.
GRPC_DIFFERENCES = {
    # MLServer's gRPC converter cannot send string labels ("expected bytes, str found"); its REST can
    "cb-labels": ("answer", "INTERNAL"),
    # a regressor named as MLServer's CatBoost runtime: MLServer loads it and fails every request;
    # envserve refuses to load it, saying which runtime serves it
    "cb-regressor": ("UNAVAILABLE", "INTERNAL"),
}


def test_grpc_answers_to_mlservers_own_client_are_mlservers(servers, digits, tmp_path):
    """Every model of this repository asked over gRPC with MLServer's own client code (its converters and
    stubs, in its venv), envserve and MLServer: the same outputs."""
    import subprocess
    from pathlib import Path

    mlserver, envserve = servers
    x, _ = digits
    rows = x[:3].tolist()
    models = ["digits", "ridge", *BOOSTED]
    body = {"inputs": [{"name": "predict", "shape": [3, 64], "datatype": "FP64", "data": rows}]}
    ridge = {"inputs": [{"name": "predict", "shape": [1, 10], "datatype": "FP64", "data": [[0.01] * 10]}]}
    requests = tmp_path / "requests.json"
    requests.write_text(json.dumps([(m, ridge if m == "ridge" else body) for m in models]))
    client = Path(__file__).resolve().parents[1] / "fixtures" / "mlserver_examples" / "grpc_client.py"
    python = reference_venv("mlserver") / "bin" / "python"
    answers = []
    for address in (envserve.grpc_address, mlserver.grpc_address):
        done = subprocess.run(
            [str(python), str(client), address, str(requests)], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        answers.append(json.loads(done.stdout))
    problems = []
    for model, mine, reference in zip(models, *answers):
        if model in GRPC_DIFFERENCES:
            got = (mine.get("error", "answer"), reference.get("error", "answer"))
            assert got == GRPC_DIFFERENCES[model], (model, mine, reference)
            continue
        if "error" in mine or "error" in reference:
            problems.append((model, mine, reference))
            continue
        for a, b in zip(mine["outputs"], reference["outputs"]):
            same = (a["name"], a["shape"], a["datatype"]) == (b["name"], b["shape"], b["datatype"])
            if (
                not same
                or not _values_close(a["data"], b["data"])
                or len(mine["outputs"]) != len(reference["outputs"])
            ):
                problems.append((model, a, b))
    assert problems == [], json.dumps(problems)[:3000]
