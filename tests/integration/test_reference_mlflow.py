"""envserve's ``/invocations`` side by side with MLflow's own scoring server (``mlflow models serve
--env-manager local``) on the same model folders: the same requests to both, compared by status class
and predictions. Requests come from a table of every documented input format (and the mistakes clients
make), and from hypothesis, generated from each model's signature with a fixed seed.

Where envserve answers differently on purpose, the case says so and docs/compat.md lists it.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ServerProcess

# starts three MLflow scoring servers, on one of the suite's processes
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("reference-mlflow")]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CITIES = ["paris", "lyon", "nice"]


def _mixed_frame(n: int, seed: int = 0):
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "count": rng.integers(0, 20, n).astype("int64"),
            "price": rng.normal(10, 3, n).astype("float64"),
            "city": rng.choice(CITIES, n).astype(object),
            "member": rng.integers(0, 2, n).astype(bool),
            "day": pd.to_datetime("2024-01-01") + pd.to_timedelta(rng.integers(0, 60, n), unit="D"),
        }
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three MLflow models: a pipeline over mixed column types, the digits SVC (a tensor signature), iris
    (double columns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow.sklearn
        from mlflow.models import infer_signature
        from sklearn import datasets, linear_model, svm
        from sklearn.compose import ColumnTransformer
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

        root = tmp_path_factory.mktemp("reference-mlflow")
        frame = _mixed_frame(200)
        target = ((frame["count"] > 9) ^ frame["member"]).astype(int)
        pipeline = make_pipeline(
            ColumnTransformer(
                [
                    ("numbers", "passthrough", ["count", "price"]),
                    ("city", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                    ("member", FunctionTransformer(lambda x: x.astype(int)), ["member"]),
                    ("weekday", FunctionTransformer(lambda x: x.iloc[:, 0].dt.dayofweek.to_frame()), ["day"]),
                ]
            ),
            linear_model.LogisticRegression(max_iter=1000),
        ).fit(frame, target)
        import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the pipeline's lambdas travel by value
        mlflow.sklearn.save_model(
            pipeline,
            str(root / "mixed"),
            serialization_format="cloudpickle",
            signature=infer_signature(frame, pipeline.predict(frame)),
        )
        digits = datasets.load_digits()
        dx = digits.images.reshape((len(digits.images), -1)).astype(np.float32)
        svc = svm.SVC(gamma=0.001).fit(dx[:500], digits.target[:500])
        mlflow.sklearn.save_model(
            svc,
            str(root / "digits"),
            serialization_format="cloudpickle",
            signature=infer_signature(dx[:5], svc.predict(dx[:5])),
        )
        iris = datasets.load_iris(as_frame=True)
        logistic = linear_model.LogisticRegression(max_iter=500).fit(iris.data, iris.target)
        mlflow.sklearn.save_model(
            logistic,
            str(root / "iris"),
            serialization_format="cloudpickle",
            signature=infer_signature(iris.data, logistic.predict(iris.data)),
        )
    for name in ("mixed", "digits", "iris"):
        (root / name / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "implementation": "mlserver_mlflow.MLflowRuntime",
                    "parameters": {"environment": "server"},
                }
            )
        )
    return {"root": root, "frame": frame, "digits": dx, "iris": iris.data}


class MlflowServer:
    def __init__(self, model: Path, log: Path) -> None:
        self.port = _free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.log = open(log, "w")  # noqa: SIM115 - closed in stop()
        mlflow_cli = Path(sys.executable).parent / "mlflow"
        self.proc = subprocess.Popen(
            [
                str(mlflow_cli),
                "models",
                "serve",
                "-m",
                str(model),
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # mlflow starts `uvicorn` from PATH: the one of this venv
            env={**os.environ, "PATH": str(mlflow_cli.parent) + os.pathsep + os.environ.get("PATH", "")},
        )

    def wait(self, log: Path) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "mlflow models serve exited:\n" + log.read_text()[-3000:]
            try:
                if httpx.get(self.url + "/ping", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("mlflow models serve did not start:\n" + log.read_text()[-3000:])

    def stop(self) -> None:
        os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def servers(models, tmp_path_factory):
    logs = tmp_path_factory.mktemp("reference-logs")
    references = {
        name: MlflowServer(models["root"] / name, logs / (name + ".log"))
        for name in ("mixed", "digits", "iris")
    }
    envserve = ServerProcess(models["root"], [])
    try:
        for name, server in references.items():
            server.wait(logs / (name + ".log"))
        envserve.wait_ready(120)
        yield references, envserve
    finally:
        for server in references.values():
            server.stop()
        envserve.stop()


def _post(url: str, body, content_type: str):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url, content=data, headers={"Content-Type": content_type}, timeout=60)


def _both(servers, model: str, body, content_type="application/json"):
    references, envserve = servers
    ours = _post(envserve.url + "/invocations?model=" + model, body, content_type)
    theirs = _post(references[model].url + "/invocations", body, content_type)
    return ours, theirs


def _same(ours, theirs, case: str) -> None:
    assert ours.status_code // 100 == theirs.status_code // 100, (
        case,
        ours.status_code,
        ours.text,
        theirs.status_code,
        theirs.text[:500],
    )
    if theirs.status_code == 200:
        assert _close(ours.json(), theirs.json()), (case, ours.text[:500], theirs.text[:500])
    else:
        doc = ours.json()  # ours is always JSON, with MLflow's fields beside envserve's
        assert doc["error_code"] and doc["message"] and doc["error"], (case, doc)


def _close(a, b) -> bool:
    """Equal, with floats compared to 1e-9 relative (the same arithmetic in two processes)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, (int, float))
            and isinstance(b, (int, float))
            and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
        )
    return a == b and type(a) is type(b)


def _csv(frame) -> str:
    return frame.to_csv(index=False)


def _parquet(frame) -> bytes:
    out = io.BytesIO()
    frame.to_parquet(out)
    return out.getvalue()


def _cases(models):
    frame = models["frame"].iloc[:5]
    split = json.loads(frame.to_json(orient="split", date_format="iso"))
    records = json.loads(frame.to_json(orient="records", date_format="iso"))
    dx = models["digits"][:4]
    iris = models["iris"].iloc[:4]
    digits_split = {"columns": [str(i) for i in range(64)], "data": dx.tolist()}
    yield (
        "mixed: dataframe_split",
        "mixed",
        {"dataframe_split": {k: split[k] for k in ("columns", "data")}},
        None,
    )
    yield "mixed: dataframe_split with index", "mixed", {"dataframe_split": split}, None
    yield "mixed: dataframe_records", "mixed", {"dataframe_records": records}, None
    yield "mixed: instances as records", "mixed", {"instances": records}, None
    yield (
        "mixed: inputs as columns",
        "mixed",
        {"inputs": {c: [r[c] for r in records] for c in frame.columns}},
        None,
    )
    yield "mixed: params", "mixed", {"dataframe_records": records, "params": {"unused": 1}}, None
    yield "mixed: CSV with booleans and dates", "mixed", _csv(frame), "text/csv"
    yield "mixed: CSV with charset", "mixed", _csv(frame), "text/csv; charset=utf-8"
    yield "mixed: Parquet", "mixed", _parquet(frame), "application/vnd.apache.parquet"
    yield (
        "mixed: a missing column",
        "mixed",
        {"dataframe_records": [{k: v for k, v in r.items() if k != "city"} for r in records]},
        None,
    )
    yield (
        "mixed: text in a long column",
        "mixed",
        {"dataframe_records": [dict(r, count="many") for r in records]},
        None,
    )
    yield (
        "mixed: a null in a string column",
        "mixed",
        _csv(frame.assign(city=[None, "lyon", "nice", "paris", "lyon"])),
        "text/csv",
    )
    yield "digits: dataframe_split", "digits", {"dataframe_split": digits_split}, None
    yield (
        "digits: dataframe_split without columns",
        "digits",
        {"dataframe_split": {"data": dx.tolist()}},
        None,
    )
    yield (
        "digits: dataframe_records",
        "digits",
        {"dataframe_records": [dict(zip(digits_split["columns"], row)) for row in dx.tolist()]},
        None,
    )
    yield "digits: instances", "digits", {"instances": dx.tolist()}, None
    yield "digits: inputs", "digits", {"inputs": dx.tolist()}, None
    yield (
        "digits: CSV",
        "digits",
        _csv(__import__("pandas").DataFrame(dx, columns=digits_split["columns"])),
        "text/csv",
    )
    yield "digits: 63 features", "digits", {"inputs": dx[:, :63].tolist()}, None
    yield "digits: one row, not a matrix", "digits", {"inputs": dx[0].tolist()}, None
    yield "iris: dataframe_split", "iris", {"dataframe_split": json.loads(iris.to_json(orient="split"))}, None
    yield (
        "iris: instances as records",
        "iris",
        {"instances": json.loads(iris.to_json(orient="records"))},
        None,
    )
    yield "iris: CSV", "iris", _csv(iris), "text/csv"
    yield (
        "iris: an extra column",
        "iris",
        {"dataframe_records": [dict(r, extra=1) for r in json.loads(iris.to_json(orient="records"))]},
        None,
    )
    yield "iris: unknown content type", "iris", "a,b\n1,2\n", "text/plain"
    yield "iris: latin-1 charset", "iris", _csv(iris), "text/csv; charset=latin-1"
    yield "iris: unknown content type parameter", "iris", _csv(iris), "text/csv; header=present"
    yield "iris: empty body", "iris", b"", None
    yield "iris: malformed JSON", "iris", b"{not json", None
    yield "iris: a JSON list", "iris", [1, 2, 3], None
    yield "iris: two formats", "iris", {"inputs": [[1, 2, 3, 4]], "instances": [[1, 2, 3, 4]]}, None
    yield "iris: no format", "iris", {"data": [[1, 2, 3, 4]]}, None


#: Cases where envserve answers differently on purpose (docs/compat.md): MLflow hands pandas.read_csv the
#: datetime64 dtype of a datetime column, which pandas refuses ("pass this column using parse_dates"), so
#: every CSV body for such a model is a 400; envserve parses the dates and answers.
CSV_DATES = {
    "mixed: CSV with booleans and dates",
    "mixed: CSV with charset",
    "mixed: a null in a string column",
}


def test_every_documented_input_format_answers_as_mlflow_does(servers, models):
    problems = []
    for case, model, body, content_type in _cases(models):
        ours, theirs = _both(servers, model, body, content_type or "application/json")
        try:
            if case in CSV_DATES:
                assert theirs.status_code == 400 and "parse_dates" in theirs.json()["message"], theirs.text[
                    :300
                ]
                import pandas as pd

                frame = pd.read_csv(io.StringIO(body), parse_dates=["day"])
                as_json = {"dataframe_split": json.loads(frame.to_json(orient="split", date_format="iso"))}
                _, reference = _both(servers, model, as_json)  # MLflow's answer to the same rows as JSON
                _same(ours, reference, case)
            else:
                _same(ours, theirs, case)
        except AssertionError as exc:
            problems.append(str(exc)[:800])
    assert problems == [], "\n\n".join(problems)


def test_client_mistakes_are_400_naming_the_field(servers, models):
    _, envserve = servers
    url = envserve.url + "/invocations?model="
    dx = models["digits"][:2]
    r = _post(url + "digits", {"inputs": dx[:, :63].tolist()}, "application/json")
    assert r.status_code == 400 and "(2, 63)" in r.json()["error"] and "(-1, 64)" in r.json()["error"]
    r = _post(
        url + "mixed",
        {"dataframe_records": [{"count": 1, "price": 2.0, "member": True, "day": "2024-01-01"}]},
        "application/json",
    )
    assert r.status_code == 400 and "'city'" in r.json()["error"] and r.json()["error_code"] == "BAD_REQUEST"
    r = _post(
        url + "mixed",
        {
            "dataframe_records": [
                {"count": "many", "price": 2.0, "city": "lyon", "member": True, "day": "2024-01-01"}
            ]
        },
        "application/json",
    )
    assert r.status_code == 400 and "count" in r.json()["error"]
    r = _post(url + "iris", "x", "text/plain")
    assert r.status_code == 415 and "text/plain" in r.json()["error"]


_row = st.fixed_dictionaries(
    {
        "count": st.integers(0, 1000),
        "price": st.floats(-1e6, 1e6, allow_nan=False),
        "city": st.sampled_from(CITIES + ["marseille"]),
        "member": st.booleans(),
        "day": st.dates(
            min_value=__import__("datetime").date(2000, 1, 1),
            max_value=__import__("datetime").date(2030, 1, 1),
        ).map(str),
    }
)


@settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(rows=st.lists(_row, min_size=1, max_size=6), form=st.sampled_from(["split", "records", "csv"]))
def test_generated_requests_from_the_signature_agree(servers, rows, form):
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["count", "price", "city", "member", "day"])
    if form == "csv":
        body, content_type = frame.to_csv(index=False), "text/csv"
    elif form == "split":
        body, content_type = (
            {"dataframe_split": json.loads(frame.to_json(orient="split"))},
            "application/json",
        )
    else:
        body, content_type = {"dataframe_records": rows}, "application/json"
    ours, theirs = _both(servers, "mixed", body, content_type)
    if form == "csv":  # MLflow cannot read CSV with a datetime column (CSV_DATES): its answer to the JSON
        assert theirs.status_code == 400
        _, theirs = _both(servers, "mixed", {"dataframe_split": json.loads(frame.to_json(orient="split"))})
    _same(ours, theirs, "generated %s: %r" % (form, rows))


@settings(
    max_examples=15,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(pixels=st.lists(st.lists(st.integers(0, 16), min_size=64, max_size=64), min_size=1, max_size=4))
def test_generated_digits_agree(servers, pixels):
    ours, theirs = _both(servers, "digits", {"inputs": [[float(p) for p in row] for row in pixels]})
    _same(ours, theirs, "digits %r" % pixels)
