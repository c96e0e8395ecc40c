"""envserve's Seldon Core v1 protocol side by side with Seldon's own Python wrapper (the seldon-core
package's microservice, as Seldon's SKLEARN_SERVER runs it: a model class loading model.joblib and calling
its ``method``), on the same digits model: the same requests to both, compared by status class, the kind
of data answered, values, names and meta. Request bodies as the executor and SeldonClient send them:
JSON, form-encoded ``json=``, multipart. Differences on purpose: docs/compat.md.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Reference, ServerProcess, free_port, reference_venv, side_by_side, write_model

pytestmark = pytest.mark.slow  # builds the Seldon wrapper's venv once per machine

#: What Seldon's SKLEARN_SERVER does (servers/sklearnserver), written for this test: load model.joblib
#: from model_uri, answer `method` (predict_proba by default).
SKLEARN_SERVER = """
import os
import joblib


class SKLearnServer:
    def __init__(self, model_uri=None, method="predict_proba"):
        self.model_uri = model_uri
        self.method = method
        self.ready = False

    def load(self):
        self.model = joblib.load(os.path.join(self.model_uri, "model.joblib"))
        self.ready = True

    def predict(self, X, feature_names=None, meta=None):
        if not self.ready:
            self.load()
        return getattr(self.model, self.method)(X)
"""


@pytest.fixture(scope="module", params=["predict", "predict_proba"])
def servers(request, tmp_path_factory, digits_model_file, digits):
    method = request.param
    venv = reference_venv("seldon")
    root = tmp_path_factory.mktemp("reference-seldon")
    model = write_model(
        root / "repo",
        "classifier",
        {"name": "classifier", "implementation": "sklearn", "parameters": {"extra": {"method": method}}},
    )
    if method == "predict":  # the example SVC
        (model / "model.joblib").write_bytes(digits_model_file.read_bytes())
    else:  # a classifier with probabilities
        import joblib
        from sklearn.linear_model import LogisticRegression

        x, y = digits
        joblib.dump(LogisticRegression(max_iter=2000).fit(x[:600], y[:600]), model / "model.joblib")
    (root / "SKLearnServer.py").write_text(SKLEARN_SERVER)
    http, grpc, metrics = free_port(), free_port(), free_port()
    parameters = [
        {"name": "model_uri", "value": str(model), "type": "STRING"},
        {"name": "method", "value": method, "type": "STRING"},
    ]
    seldon = Reference(
        [
            str(venv / "bin" / "seldon-core-microservice"),
            "SKLearnServer",
            "--service-type",
            "MODEL",
            "--parameters",
            json.dumps(parameters),
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
            "--single-threaded",
            "1",
        ],
        "http://127.0.0.1:%d" % http,
        "/health/ping",
        root / "seldon.log",
        env={"PREDICTIVE_UNIT_ID": "classifier", "PREDICTIVE_UNIT_IMAGE": "test/sklearn:1"},
        cwd=str(root),
    )
    unit = {"PREDICTIVE_UNIT_ID": "classifier", "PREDICTIVE_UNIT_IMAGE": "test/sklearn:1"}
    # the unit's contract would put envserve's metrics on Seldon's 6000: another test process may hold it
    envserve = ServerProcess(
        root / "repo", [], env={**unit, "PREDICTIVE_UNIT_METRICS_SERVICE_PORT": str(free_port())}
    )
    with side_by_side(seldon, envserve):
        yield seldon, envserve, method


def _send(url: str, body, kind: str):
    if kind == "json":
        return httpx.post(url, json=body, timeout=60)
    if kind == "form":
        return httpx.post(url, data={"json": json.dumps(body)}, timeout=60)
    if kind == "query":
        return httpx.get(url, params={"json": json.dumps(body)}, timeout=60)
    files = {k: (None, json.dumps(v) if k != "strData" else v) for k, v in body.items()}
    return httpx.post(url, files=files, timeout=60)  # multipart/form-data


def _pair(servers, body, kind="json", path="/api/v1.0/predictions"):
    seldon, envserve, _ = servers
    return _send(envserve.url + path, body, kind), _send(seldon.url + path, body, kind)


def _close(a, b) -> bool:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-9, atol=1e-12))


def _same(ours, theirs, case: str) -> None:
    assert ours.status_code // 100 == theirs.status_code // 100, (
        case,
        ours.status_code,
        ours.text[:300],
        theirs.status_code,
        theirs.text[:300],
    )
    a, b = ours.json(), theirs.json()
    if theirs.status_code != 200:
        assert a["status"]["status"] == "FAILURE" and a["status"]["code"] == ours.status_code, (case, a)
        return
    assert set(a) == set(b), (case, sorted(a), sorted(b))
    if "data" in b:
        assert set(a["data"]) == set(b["data"]), (case, a["data"].keys(), b["data"].keys())
        assert a["data"].get("names") == b["data"].get("names"), (
            case,
            a["data"].get("names"),
            b["data"].get("names"),
        )
        if "ndarray" in b["data"]:
            assert _close(a["data"]["ndarray"], b["data"]["ndarray"]), case
        if "tensor" in b["data"]:
            assert a["data"]["tensor"]["shape"] == list(b["data"]["tensor"]["shape"]), case
            assert _close(a["data"]["tensor"]["values"], b["data"]["tensor"]["values"]), case
    assert a["meta"].get("puid") == b["meta"].get("puid"), (case, a["meta"], b["meta"])
    assert a["meta"].get("tags") == b["meta"].get("tags"), (case, a["meta"], b["meta"])
    assert a["meta"].get("requestPath") == b["meta"].get("requestPath"), (case, a["meta"], b["meta"])


def _cases(x):
    rows = x[:3].tolist()
    yield "ndarray", {"data": {"ndarray": rows}}, "json"
    yield "ndarray with names", {"data": {"names": ["p%d" % i for i in range(64)], "ndarray": rows}}, "json"
    yield "tensor", {"data": {"tensor": {"shape": [3, 64], "values": x[:3].ravel().tolist()}}}, "json"
    yield (
        "meta puid and tags",
        {"data": {"ndarray": rows}, "meta": {"puid": "abc-1", "tags": {"team": "ml"}}},
        "json",
    )
    yield "form-encoded json=", {"data": {"ndarray": rows}}, "form"
    yield "json= in the query string", {"data": {"ndarray": rows}}, "query"
    yield "multipart", {"data": {"ndarray": rows}, "meta": {"puid": "mp-2"}}, "multipart"
    yield "wrong number of features", {"data": {"ndarray": [[1.0, 2.0]]}}, "json"
    yield "ragged ndarray", {"data": {"ndarray": [[1.0, 2.0], [3.0]]}}, "json"
    yield (
        "tensor shape and values disagree",
        {"data": {"tensor": {"shape": [2, 64], "values": [1.0] * 64}}},
        "json",
    )
    yield "no data", {"meta": {}}, "json"
    yield "strData to a classifier", {"strData": "hello"}, "json"
    yield "jsonData holding rows", {"jsonData": rows}, "json"
    yield "jsonData holding rows, with meta", {"jsonData": rows[:1], "meta": {"puid": "j-3"}}, "json"


#: Client mistakes Seldon's wrapper answers with 500 (its handler catches them, and what scikit-learn
#: raises about the input, as internal errors; a GET on a POST route is turned into one); envserve answers
#: 4xx naming the problem (docs/compat.md) -- case: text in our error's status.info, or None for a 2xx-free
#: refusal whose text is checked elsewhere.
SELDON_500 = {
    "ragged ndarray": "ragged",
    "tensor shape and values disagree": "shape",
    "json= in the query string": None,
    "wrong number of features": "expects 64 features per row",
    "strData to a classifier": "refused the input",
}


def test_every_case_answers_as_seldons_wrapper_does(servers, digits):
    x, _ = digits
    problems = []
    for case, body, kind in _cases(x):
        ours, theirs = _pair(servers, body, kind)
        try:
            if case in SELDON_500:
                assert theirs.status_code == 500 and ours.status_code // 100 == 4, (
                    case,
                    ours.text,
                    theirs.text[:200],
                )
                expected = SELDON_500[case]
                if expected is not None:
                    assert expected in ours.json()["status"]["info"], (case, ours.text)
                continue
            _same(ours, theirs, case)
        except AssertionError as exc:
            problems.append(str(exc)[:600])
    assert problems == [], "\n\n".join(problems)


def test_health_and_metadata_routes(servers):
    seldon, envserve, _ = servers
    for path in ("/health/ping", "/health/status", "/api/v1.0/health/status"):
        ours, theirs = httpx.get(envserve.url + path), httpx.get(seldon.url + path)
        assert ours.status_code // 100 == theirs.status_code // 100 == 2, (path, ours.text, theirs.text)
    assert httpx.get(envserve.url + "/health/ping").text == httpx.get(seldon.url + "/health/ping").text
    for path in ("/metadata", "/api/v1.0/metadata"):
        ours, theirs = httpx.get(envserve.url + path), httpx.get(seldon.url + path)
        assert ours.status_code // 100 == theirs.status_code // 100 == 2, (path, ours.text, theirs.text)
        assert ours.json()["name"] == "classifier"


@settings(
    max_examples=15,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    pixels=st.lists(st.lists(st.integers(0, 16), min_size=64, max_size=64), min_size=1, max_size=4),
    kind=st.sampled_from(["ndarray", "tensor"]),
)
def test_generated_requests_agree(servers, pixels, kind):
    rows = [[float(p) for p in row] for row in pixels]
    if kind == "ndarray":
        body = {"data": {"ndarray": rows}}
    else:
        body = {"data": {"tensor": {"shape": [len(rows), 64], "values": [v for r in rows for v in r]}}}
    ours, theirs = _pair(servers, body)
    _same(ours, theirs, "generated %s" % kind)
