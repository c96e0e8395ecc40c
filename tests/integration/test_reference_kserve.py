"""envserve's KServe V1 protocol side by side with KServe's own Python ModelServer (the ``kserve`` package,
v0.20.0, the version of the manifests), serving the same scikit-learn models as KServe's sklearnserver
does: a ``kserve.Model`` that loads model.joblib and answers ``predict`` with KServe's own input and
response helpers. The same requests to both, compared by status, body fields and values. Differences on
purpose: docs/compat.md.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.conftest import Reference, ServerProcess, free_port, reference_venv, side_by_side, write_model

pytestmark = pytest.mark.slow  # builds KServe's venv once per machine

#: A scikit-learn model on KServe's ModelServer, as KServe's sklearnserver serves one (its predict: the
#: payload's rows through kserve.utils.utils.get_predict_input, the model's predict, get_predict_response).
KSERVE_SKLEARN = """
import os

import joblib
import kserve
from kserve.errors import InferenceError
from kserve.utils.utils import get_predict_input, get_predict_response


class SKLearnModel(kserve.Model):
    def __init__(self, name, model_dir):
        super().__init__(name)
        self.model_dir = model_dir

    def load(self):
        self._model = joblib.load(os.path.join(self.model_dir, "model.joblib"))
        self.ready = True
        return self.ready

    def predict(self, payload, headers=None):
        try:
            return get_predict_response(payload, self._model.predict(get_predict_input(payload)), self.name)
        except Exception as exc:
            raise InferenceError(str(exc))


if __name__ == "__main__":
    model = SKLearnModel(os.environ["MODEL_NAME"], os.environ["MODEL_DIR"])
    model.load()
    kserve.ModelServer().start([model])
"""


@pytest.fixture(scope="module", params=["classifier", "regressor"])
def servers(request, tmp_path_factory, digits_model_file, digits):
    kind = request.param
    venv = reference_venv("kserve")
    root = tmp_path_factory.mktemp("reference-kserve")
    model = write_model(root / "repo", kind, {"name": kind, "implementation": "sklearn"})
    if kind == "classifier":  # the example SVC: integer labels
        (model / "model.joblib").write_bytes(digits_model_file.read_bytes())
    else:  # floats
        import joblib
        from sklearn.linear_model import Ridge

        x, y = digits
        joblib.dump(Ridge().fit(x[:600], y[:600] / 3.0), model / "model.joblib")
    (root / "kserve_sklearn.py").write_text(KSERVE_SKLEARN)
    http = free_port()
    kserve = Reference(
        [
            str(venv / "bin" / "python"),
            "kserve_sklearn.py",
            "--http_port",
            str(http),
            "--grpc_port",
            str(free_port()),
            "--workers",
            "1",
        ],
        "http://127.0.0.1:%d" % http,
        "/v1/models/%s" % kind,
        root / "kserve.log",
        env={"MODEL_NAME": kind, "MODEL_DIR": str(model)},
        cwd=str(root),
    )
    envserve = ServerProcess(root / "repo", [])
    with side_by_side(kserve, envserve):
        yield kserve, envserve, kind


def _cases(x, name):
    rows = x[:40].tolist()
    yield "instances", "POST", "/v1/models/%s:predict" % name, {"instances": rows}
    yield "inputs", "POST", "/v1/models/%s:predict" % name, {"inputs": rows}
    yield "one row", "POST", "/v1/models/%s:predict" % name, {"instances": rows[:1]}
    yield (
        "integer features",
        "POST",
        "/v1/models/%s:predict" % name,
        {"instances": x[:5].astype(int).tolist()},
    )
    yield "instances not a list", "POST", "/v1/models/%s:predict" % name, {"instances": 3}
    yield "body not JSON", "POST", "/v1/models/%s:predict" % name, b'{"instances": ['
    yield "unknown model", "POST", "/v1/models/nope:predict", {"instances": rows[:1]}
    yield "unknown verb", "GET", "/v1/models/%s:predict" % name, None
    yield "wrong number of features", "POST", "/v1/models/%s:predict" % name, {"instances": [[1.0, 2.0]]}
    yield "ragged rows", "POST", "/v1/models/%s:predict" % name, {"instances": [[1.0, 2.0], [3.0]]}
    yield "strings", "POST", "/v1/models/%s:predict" % name, {"instances": [["a", "b"]]}
    yield "empty instances", "POST", "/v1/models/%s:predict" % name, {"instances": []}
    yield "neither instances nor inputs", "POST", "/v1/models/%s:predict" % name, {"rows": rows[:1]}
    yield "explain without an explainer", "POST", "/v1/models/%s:explain" % name, {"instances": rows[:1]}


#: Client mistakes KServe's ModelServer answers with 500 (the model's exception, as sklearnserver raises
#: it: InferenceError), which envserve answers 4xx naming the problem (docs/compat.md) -- case: text in
#: envserve's error.
KSERVE_500 = {
    "wrong number of features": "expects 64 features per row",
    "ragged rows": "the rows must all have the same shape",
    "strings": "refused the input",
    "empty instances": '"instances" is empty',
    "neither instances nor inputs": 'Expected "instances" or "inputs" to be a list',
}


def _send(url: str, method: str, body):
    if body is None:
        return httpx.request(method, url, timeout=60)
    if isinstance(body, bytes):
        return httpx.request(
            method, url, content=body, headers={"content-type": "application/json"}, timeout=60
        )
    return httpx.request(method, url, json=body, timeout=60)


def test_every_case_answers_as_kserves_model_server_does(servers, digits):
    kserve, envserve, name = servers
    x, _ = digits
    problems = []
    for case, method, path, body in _cases(x, name):
        ours, theirs = _send(envserve.url + path, method, body), _send(kserve.url + path, method, body)
        mine, its = ours.json(), theirs.json()
        if case in KSERVE_500:
            if not (
                theirs.status_code == 500 and ours.status_code == 400 and KSERVE_500[case] in mine["error"]
            ):
                problems.append((case, ours.status_code, mine, theirs.status_code, its))
            continue
        if ours.status_code != theirs.status_code or set(mine) != set(its):
            problems.append((case, ours.status_code, mine, theirs.status_code, its))
            continue
        if theirs.status_code == 200:
            a, b = np.asarray(mine["predictions"]), np.asarray(its["predictions"])
            if (
                a.shape != b.shape
                or a.dtype.kind != b.dtype.kind
                or not np.allclose(a, b, rtol=1e-9, atol=1e-12)
            ):
                problems.append((case, mine["predictions"][:5], its["predictions"][:5]))
        elif not isinstance(mine["error"], str) or not mine["error"]:
            problems.append((case, "no error text", mine))
    assert not problems, problems


def test_model_routes_answer_as_kserves_model_server_does(servers):
    kserve, envserve, name = servers
    for path in ("/v1/models", "/v1/models/%s" % name, "/v1/models/nope"):
        ours, theirs = httpx.get(envserve.url + path, timeout=30), httpx.get(kserve.url + path, timeout=30)
        assert ours.status_code == theirs.status_code, (path, ours.text, theirs.text)
        if theirs.status_code == 200:
            assert ours.json() == theirs.json(), path
        else:
            assert set(ours.json()) == set(theirs.json()) == {"error"}, (path, ours.text, theirs.text)
