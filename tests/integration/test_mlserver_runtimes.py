"""MLServer custom runtimes, unchanged (tests/fixtures/mlserver): the same classes served by MLServer 1.7
itself and by envserve three ways -- in process and in a Python 3.8 environment, both without MLServer
(envserve's stand-in package), and in environments that have MLServer 1.7 and, as the seed pins it,
MLServer 1.1.0 on Python 3.8 with pydantic 1 (the real classes of that version) -- and
answering the same requests alike: outputs' names, shapes, datatypes, values and parameters, and the
status of errors. A runtime that fails to load fails alone, naming its class.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from examples import old_sklearn
from tests.conftest import Reference, ServerProcess, free_port, reference_venv, write_model

pytestmark = pytest.mark.slow  # builds MLServer's venv and the Python 3.8 environment once per machine

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mlserver"
WEIGHTS = np.array([[1.0, 0.0], [0.5, 2.0], [-1.0, 1.0]])

#: base name -> (implementation, parameters, the variants that serve it)
ALL = ("", "-py38", "-real", "-mls11")
MODELS = {
    "sum": (
        "numpy_runtimes.SumModel",
        {"extra": {"offset": 1.5}},
        ("", "-py38", "-real"),
    ),  # decode_args: 1.2+
    "echo": ("runtimes.EchoModel", {}, ALL),
    "echo-inputs": ("runtimes.EchoInputs", {}, ("", "-py38", "-real")),
    "stream": ("streaming_runtimes.WordStream", {}, ("", "-py38", "-real")),  # predict_stream: 1.5+
    "manual": ("runtimes.ManualModel", {}, ALL),
    "refuses": ("runtimes.Refuses", {}, ALL),
    # the Python 3.8 tarball lacks pandas: -pd38 is Python 3.8 + pandas 1.3 without MLServer
    "total": ("pandas_runtimes.TotalModel", {}, ("", "-real", "-mls11", "-pd38")),
    "handlers": ("handler_runtimes.HandlerModel", {}, ALL),
    "metered": ("metrics_runtimes.MeteredModel", {}, ("", "-py38", "-real")),  # mlserver.log: 1.3+
}
#: Custom handlers' routes are the server's, not the model's: each variant's copy gets its own prefix.
HANDLER_VARIANTS = MODELS["handlers"][2]


def _model(repo: Path, name: str, implementation: str, parameters: dict) -> Path:
    folder = write_model(
        repo, name, {"name": name, "implementation": implementation, "parameters": parameters}
    )
    for fixture in [*FIXTURES.glob("*.py"), *FIXTURES.glob("*.txt")]:
        shutil.copy(fixture, folder / fixture.name)
    np.save(folder / "weights.npy", WEIGHTS)
    prefix = "/handlers" + name[len("handlers") :] if name.startswith("handlers") else "/unused-" + name
    source = (FIXTURES / "handler_runtimes.py").read_text()
    (folder / "handler_runtimes.py").write_text(
        source.replace('PREFIX = "/handlers"', "PREFIX = %r" % prefix)
    )
    return folder


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlserver-runtimes")
    venv = reference_venv("mlserver")
    tarball = old_sklearn.old_sklearn()["tarball"]  # Python 3.8 + numpy, no MLServer, no pandas
    reference_repo, repo = root / "reference", root / "repo"
    for base, (implementation, parameters, variants) in MODELS.items():
        _model(reference_repo, base, implementation, parameters)
        _model(repo, base, implementation, parameters)  # in process, no MLServer installed
        real = dict(parameters, environment_path=str(venv / "bin" / "python"))
        _model(repo, base + "-real", implementation, real)  # MLServer 1.7's own classes
        if "-py38" in variants:  # Python 3.8, no MLServer
            py38 = dict(parameters, environment_tarball="./env.tar.gz")
            shutil.copy(tarball, _model(repo, base + "-py38", implementation, py38) / "env.tar.gz")
        if "-mls11" in variants:  # the seed's pins: MLServer 1.1.0 (pydantic 1) on Python 3.8, built here
            spec = dict(parameters, environment="requirements-mls11.txt", environment_python="3.8")
            _model(repo, base + "-mls11", implementation, spec)
        if "-pd38" in variants:  # Python 3.8 with pandas, no MLServer, built here
            spec = dict(parameters, environment="requirements-pd38.txt", environment_python="3.8")
            _model(repo, base + "-pd38", implementation, spec)
    _model(repo, "fails-to-load", "runtimes.FailsToLoad", {})
    old_repo = root / "reference-1.1"
    for base, (implementation, parameters, variants) in MODELS.items():
        if "-mls11" in variants:
            _model(old_repo, base, implementation, parameters)
    for module in ("runtimes.py", "handler_runtimes.py", "pandas_runtimes.py"):  # 1.1 imports them from cwd
        shutil.copy(FIXTURES / module, old_repo)
    mlserver = _mlserver([str(venv / "bin" / "mlserver")], reference_repo, root / "mlserver.log")
    envserve = ServerProcess(repo, [], env={"ENVSERVE_ENV_CACHE": str(root / "env-cache")})
    old = None
    try:
        mlserver.wait()
        envserve.wait_ready(300)
        # MLServer 1.1 itself, from the environment envserve built for the -mls11 models
        (old_python,) = (root / "env-cache" / "envs").glob("*/lib/python3.8/site-packages/mlserver")
        python = old_python.parents[3] / "bin" / "python"
        old = _mlserver(
            [str(python), "-c", "from mlserver.cli.main import main; main()"],
            old_repo,
            root / "mlserver-1.1.log",
        )
        old.wait()
        yield {"": mlserver, "1.1": old}, envserve
    finally:
        for server in (mlserver, old):
            if server is not None:
                server.stop()
        envserve.stop()


def _mlserver(cli: list, repo: Path, log: Path, cwd=None, workers: int = 0) -> Reference:
    http, grpc, metrics = free_port(), free_port(), free_port()
    reference = Reference(
        [*cli, "start", str(repo)],
        "http://127.0.0.1:%d" % http,
        "/v2/health/ready",
        log,
        env={
            "MLSERVER_HTTP_PORT": str(http),
            "MLSERVER_GRPC_PORT": str(grpc),
            "MLSERVER_METRICS_PORT": str(metrics),
            "MLSERVER_HOST": "127.0.0.1",
            "MLSERVER_PARALLEL_WORKERS": str(workers),
        },
        cwd=cwd,
    )
    reference.grpc_address = "127.0.0.1:%d" % grpc
    reference.metrics_url = "http://127.0.0.1:%d/metrics" % metrics
    return reference


def _grpc_infer_headers(address: str, model: str) -> tuple:
    """ModelInfer with the metadata x-tenant: acme; (the tenant the model saw, the call's metadata)."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="x", datatype="INT64", shape=[1])
    tensor.contents.int64_contents.append(1)
    with grpc.insecure_channel(address) as channel:
        reply, call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.with_call(
            request, metadata=[("x-tenant", "acme")], timeout=60
        )
    tenant = reply.outputs[0].contents.bytes_contents or [reply.raw_output_contents[0][4:]]
    metadata = dict(call.initial_metadata() or ()) | dict(call.trailing_metadata() or ())
    return bytes(tenant[0]).decode(), metadata


def _cases():
    yield (
        "sum",
        {
            "inputs": [
                {"name": "features", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 6]},
                {"name": "tags", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
            ]
        },
    )
    yield (
        "echo",
        {
            "id": "req-1",
            "inputs": [
                {
                    "name": "docs",
                    "shape": [2],
                    "datatype": "BYTES",
                    "data": [json.dumps({"b": 1, "a": 2}), json.dumps({"z": [1]})],
                    "parameters": {"content_type": "str"},
                }
            ],
        },
    )
    # strings shaped as MLServer's clients and docs shape them: the length of "hello world" as the shape
    # of one string, a bare string as data, [2, 11] for two strings
    yield (
        "echo-inputs",
        {
            "inputs": [
                {"name": "a", "shape": [2, 2], "datatype": "INT32", "data": [1, 2, 3, 4]},
                {"name": "b", "shape": [11], "datatype": "BYTES", "data": "hello world \U0001f601"},
                {"name": "c", "shape": [11], "datatype": "BYTES", "data": ["hello world"]},
                {
                    "name": "d",
                    "shape": [2, 11],
                    "datatype": "BYTES",
                    "data": ["hello world", "bye bye"],
                    "parameters": {"content_type": "str"},
                },
            ]
        },
    )
    yield "manual", {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    yield "refuses", {"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [-1]}]}
    yield "refuses", {"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}]}
    yield (
        "total",
        {
            "parameters": {"content_type": "pd"},
            "inputs": [
                {"name": "a", "shape": [2], "datatype": "INT64", "data": [1, 2]},
                {"name": "b", "shape": [2], "datatype": "FP64", "data": [0.5, 0.25]},
                {"name": "name", "shape": [2], "datatype": "BYTES", "data": ["x", "y"]},
            ],
        },
    )


#: The differences that remain, each a row of docs/compat.md: case -> output -> why.
DIFFERENCES = {
    "echo-inputs": {
        "b": "a bare string sent as a BYTES input's data comes back from MLServer as that bare string when "
        "a runtime echoes the input; envserve answers the V2 list of one string",
    },
}


def _infer(url: str, model: str, body: dict) -> httpx.Response:
    return httpx.post(url + "/v2/models/%s/infer" % model, json=body, timeout=120)


def _comparable(doc: dict) -> dict:
    outputs = {
        o["name"]: (o["shape"], o["datatype"], o["data"], (o.get("parameters") or {}).get("content_type"))
        for o in doc["outputs"]
    }
    return {
        "outputs": outputs,
        "id": doc.get("id"),
        "content_type": (doc.get("parameters") or {}).get("content_type"),
    }


@pytest.mark.parametrize("variant", (*ALL, "-pd38"))
def test_runtimes_answer_as_mlserver_does(servers, variant):
    references, envserve = servers
    mlserver = references["1.1" if variant == "-mls11" else ""]  # each MLServer version answers its way
    for base, body in _cases():
        if variant not in MODELS[base][2]:
            continue
        theirs, ours = _infer(mlserver.url, base, body), _infer(envserve.url, base + variant, body)
        # only "refuses" fails on purpose: two 500s elsewhere would compare nothing
        assert theirs.status_code == 200 or base == "refuses", (base, theirs.text)
        assert ours.status_code // 100 == theirs.status_code // 100, (base, ours.text, theirs.text)
        if theirs.status_code != 200:
            continue
        a, b = _comparable(ours.json()), _comparable(theirs.json())
        if "id" not in body:  # MLServer makes up a UUID; envserve answers none
            a["id"] = b["id"] = None
        for output, reason in DIFFERENCES.get(base, {}).items():
            shape, datatype, data, content_type = b["outputs"][output]
            assert isinstance(data, str) and a["outputs"][output][2] == [data], reason
            b["outputs"][output] = (shape, datatype, [data], content_type)
        assert a == b, (base, ours.text, theirs.text)


def test_values_and_settings_reach_the_runtime(servers):
    _, envserve = servers
    body = next(b for name, b in _cases() if name == "sum")
    expected = (np.array([[1, 2, 3], [4, 5, 6]]) @ WEIGHTS + 1.5 + 2).ravel().tolist()
    for model in ("sum", "sum-py38", "sum-real"):
        answer = _infer(envserve.url, model, body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == pytest.approx(expected), model


@pytest.mark.parametrize("variant", HANDLER_VARIANTS)
def test_custom_handlers_and_headers_as_mlserver(servers, variant):
    """@custom_handler routes (a JSON body, a Request with query and headers, an MLServer error) and
    HTTP headers in and out of predict, against MLServer 1.7 (1.1 for the environment that has MLServer
    1.1) serving the same class."""
    references, envserve = servers
    mlserver = references["1.1" if variant == "-mls11" else ""]
    calls = [
        ("POST", "/sum", {"json": {"values": [1, 2, 3.5]}}),
        ("GET", "/describe", {"params": {"q": "abc"}, "headers": {"x-tenant": "acme"}}),
        ("POST", "/missing", {"json": {"key": "k1"}}),
        ("POST", "/sum", {"content": b"[1, 2", "headers": {"content-type": "application/json"}}),
    ]
    for method, path, kwargs in calls:
        theirs = httpx.request(method, mlserver.url + "/handlers" + path, timeout=60, **kwargs)
        ours = httpx.request(method, envserve.url + "/handlers" + variant + path, timeout=60, **kwargs)
        assert ours.status_code == theirs.status_code, (path, ours.text, theirs.text)
        if theirs.status_code < 400:
            assert ours.json() == theirs.json(), (path, ours.text, theirs.text)
        else:
            assert ours.headers["content-type"] == "application/json", ours.headers
    assert httpx.post(envserve.url + "/handlers%s/sum" % variant, json={"values": [4, 5]}).json() == {
        "sum": 9,
        "count": 2,
    }
    missing = httpx.post(envserve.url + "/handlers%s/missing" % variant, json={"key": "k9"})
    assert missing.status_code == 404 and missing.json() == {"error": "no entry named k9"}, missing.text
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}]}
    for url, model in ((mlserver.url, "handlers"), (envserve.url, "handlers" + variant)):
        answer = httpx.post(url + "/v2/models/%s/infer" % model, json=body, headers={"X-Tenant": "acme"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == ["acme"], (url, answer.text)
        assert answer.headers["x-answered-by"] == "handler-model", (url, answer.headers)
        assert not (answer.json().get("parameters") or {}).get("headers"), answer.text  # 1.1: null
    # over gRPC: the call's metadata in, the response's headers back as metadata
    theirs = _grpc_infer_headers(mlserver.grpc_address, "handlers")
    ours = _grpc_infer_headers(envserve.grpc_address, "handlers" + variant)
    assert theirs[0] == ours[0] == "acme", (theirs, ours)
    assert theirs[1].get("x-answered-by") == ours[1].get("x-answered-by") == "handler-model", (theirs, ours)


def test_a_custom_handler_on_a_taken_route_fails_alone(tmp_path):
    """A handler on a route the server answers itself, or one another model already serves, keeps that
    model from loading with the route named; the other models serve."""
    first = _model(tmp_path, "handlers", "handler_runtimes.HandlerModel", {})
    second = _model(tmp_path, "handlers-copy", "handler_runtimes.HandlerModel", {})
    (second / "handler_runtimes.py").write_text((first / "handler_runtimes.py").read_text())
    taken = _model(tmp_path, "handlers-taken", "handler_runtimes.HandlerModel", {})
    source = (taken / "handler_runtimes.py").read_text().replace('PREFIX = "/handlers"', 'PREFIX = "/v2"')
    (taken / "handler_runtimes.py").write_text(source.replace('PREFIX + "/describe"', '"/v2/health/live"'))
    server = ServerProcess(tmp_path, [])
    try:
        server.wait_ready(120)
        index = {m["name"]: m for m in httpx.post(server.url + "/v2/repository/index", json={}).json()}
        # the two copies load side by side: the first one ready serves the route, the other is refused
        ready, refused = sorted(("handlers", "handlers-copy"), key=lambda m: index[m]["state"] != "READY")
        assert index[ready]["state"] == "READY" and index[refused]["state"] == "UNAVAILABLE", index
        assert (
            "GET /handlers/describe (describe) is already served by model %r" % ready
            in (index[refused]["reason"])
        )
        assert index["handlers-taken"]["state"] == "UNAVAILABLE"
        assert (
            "GET /v2/health/live (describe) is a route envserve serves itself"
            in (index["handlers-taken"]["reason"])
        )
        assert httpx.post(server.url + "/handlers/sum", json={"values": [1]}).json() == {"sum": 1, "count": 1}
        assert httpx.get(server.url + "/v2/health/live").json() == {"live": True}
        gone = httpx.post(server.url + "/handlers-nowhere/sum", json=[1])
        assert gone.status_code == 404 and "no route for POST /handlers-nowhere/sum" in gone.text
    finally:
        server.stop()


def test_errors_name_the_runtime_and_keep_their_status(servers):
    _, envserve = servers
    for model in ("refuses", "refuses-py38", "refuses-real", "refuses-mls11"):
        client_mistake = _infer(
            envserve.url, model, {"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [-1]}]}
        )
        assert client_mistake.status_code == 400, client_mistake.text
        assert (
            "Refuses.predict raised MLServerError: negative values are not allowed"
            in client_mistake.json()["error"]
        )
        bug = _infer(
            envserve.url, model, {"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}]}
        )
        assert bug.status_code == 500, bug.text
        assert (
            "Refuses.predict raised ZeroDivisionError: division by zero in the model" in bug.json()["error"]
        )
    index = {
        m["name"]: m for m in httpx.post(envserve.url + "/v2/repository/index", json={}, timeout=60).json()
    }
    assert index["fails-to-load"]["state"] == "UNAVAILABLE"
    assert (
        "FailsToLoad.load() raised FileNotFoundError: weights.bin is missing"
        in index["fails-to-load"]["reason"]
    )
    assert all(index[m]["state"] == "READY" for m in index if m != "fails-to-load"), index


def _sse(response: httpx.Response) -> list:
    return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]


def _stream_outputs(doc: dict) -> list:
    return [(o["name"], o["shape"], o["datatype"], o["data"]) for o in doc["outputs"]]


@pytest.mark.parametrize("variant", ("", "-py38", "-real"))
def test_streams_answer_as_mlservers_streaming_example(servers, variant):
    """MLServer's streaming surface, side by side: REST generate_stream and infer_stream (server-sent
    events) and gRPC ModelStreamInfer, for a runtime written as MLServer's streaming example is -- in
    process, on Python 3.8 without MLServer (where MLServer itself cannot serve it), and with MLServer 1.7's
    own classes in a worker."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb

    references, envserve = servers
    mlserver = references[""]
    body = {
        "inputs": [
            {
                "name": "prompt",
                "shape": [1],
                "datatype": "BYTES",
                "data": ["What is the capital of France?"],
                "parameters": {"content_type": "str"},
            }
        ],
        "outputs": [{"name": "output"}],
    }
    for route in ("generate_stream", "infer_stream"):
        theirs = httpx.post(mlserver.url + "/v2/models/stream/" + route, json=body, timeout=120)
        ours = httpx.post(envserve.url + "/v2/models/stream%s/%s" % (variant, route), json=body, timeout=120)
        assert theirs.status_code == ours.status_code == 200, (route, ours.text, theirs.text)
        assert ours.headers["content-type"].startswith("text/event-stream")
        assert theirs.headers["content-type"].startswith("text/event-stream")
        assert [_stream_outputs(e) for e in _sse(ours)] == [_stream_outputs(e) for e in _sse(theirs)], route
        assert len(_sse(ours)) == 6

    def grpc_words(address: str, model: str) -> list:
        requests = []
        for text in ("What is", "the capital of France?"):
            request = pb.ModelInferRequest(model_name=model)
            tensor = request.inputs.add(name="prompt", datatype="BYTES", shape=[1])
            tensor.contents.bytes_contents.append(text.encode())
            requests.append(request.SerializeToString())
        with grpc.insecure_channel(address) as channel:
            call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
            answers = [pb.ModelInferResponse.FromString(data) for data in call(iter(requests), timeout=120)]
        return [
            (
                o.name,
                list(o.shape),
                o.datatype,
                list(o.contents.bytes_contents) or [answer.raw_output_contents[i][4:]],
            )
            for answer in answers
            for i, o in enumerate(answer.outputs)
        ]

    assert grpc_words(envserve.grpc_address, "stream" + variant) == grpc_words(
        mlserver.grpc_address, "stream"
    )


def _histogram(url: str, name: str, model: str):
    """(count, sum) of the histogram ``name`` for ``model`` on a /metrics page."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {"count": 0.0, "sum": 0.0}
    for family in text_string_to_metric_families(httpx.get(url, timeout=30).text):
        if family.name != name:
            continue
        assert family.type == "histogram", family
        for sample in family.samples:
            if sample.labels.get("model_name") == model and sample.name in (name + "_count", name + "_sum"):
                assert set(sample.labels) == {"model_name", "model_version"}, sample.labels
                found[sample.name.rsplit("_", 1)[1]] = sample.value
    return found["count"], found["sum"]


def _settled(url, metric, model, at_least=0.0, limit=60.0):
    """A histogram's (count, sum) once it has at least ``at_least`` observations and two reads a moment
    apart agree (the wait is bounded; the assertion that follows says what was found)."""
    deadline = time.monotonic() + limit
    last = _histogram(url, metric, model)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = _histogram(url, metric, model)
        if now == last and now[0] >= at_least:
            return now
        last = now
    return last


@pytest.fixture(scope="module")
def metered_mlserver(tmp_path_factory):
    """MLServer 1.7 serving the metered runtime with a worker: with parallel_workers 0 it does not serve
    custom metrics at all (they stay in a registry its /metrics does not read; envserve serves them either
    way)."""
    root = tmp_path_factory.mktemp("mlserver-metered")
    implementation, parameters, _ = MODELS["metered"]
    _model(root / "repo", "metered", implementation, parameters)
    venv = reference_venv("mlserver")
    server = _mlserver([str(venv / "bin" / "mlserver")], root / "repo", root / "mlserver.log", workers=1)
    try:
        yield server.wait()
    finally:
        server.stop()


@pytest.mark.parametrize("variant", MODELS["metered"][2])
def test_custom_metrics_are_served_as_mlserver_serves_them(servers, metered_mlserver, variant):
    """mlserver.register()/mlserver.log() in a runtime (in process, on Python 3.8 without MLServer, with
    MLServer's own package in the model's environment) come out of the server's /metrics as MLServer's
    do: a histogram per name, labelled model_name and model_version, the same counts and sums."""
    _, envserve = servers
    mlserver = metered_mlserver
    ours_name = "metered" + variant
    body = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3, 4]}]}
    # MLServer's workers hand their metrics to its main process when it next hears from them, so what a
    # request observed may show only after later requests (seen: a variant's growth doubled, or was
    # nothing for a minute). So envserve's growth is checked exactly, and MLServer's per observation:
    # after the three calls, more identical calls go to MLServer until at least three observations
    # show, and each must have observed what envserve's did.
    before = {
        (server, metric): _settled(url, metric, model)
        for server, url, model in (
            ("ours", envserve.url + "/metrics", ours_name),
            ("theirs", mlserver.metrics_url, "metered"),
        )
        for metric in ("rows_seen", "largest_value")
    }
    for _ in range(3):
        ours = _infer(envserve.url, ours_name, body)
        theirs = _infer(mlserver.url, "metered", body)
        assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
        assert ours.json()["outputs"][0]["data"] == theirs.json()["outputs"][0]["data"] == [3, 7]
    for _ in range(20):  # each metric is published on its own schedule: wait for both
        shown = [
            _histogram(mlserver.metrics_url, metric, "metered")[0] - before[("theirs", metric)][0]
            for metric in ("rows_seen", "largest_value")
        ]
        if min(shown) >= 3:
            break
        assert _infer(mlserver.url, "metered", body).status_code == 200
        time.sleep(0.5)
    for metric, count, total in (("rows_seen", 3, 6.0), ("largest_value", 3, 12.0)):
        ours = _histogram(envserve.url + "/metrics", metric, ours_name)
        theirs = _histogram(mlserver.metrics_url, metric, "metered")
        grown = [
            (now[0] - before[(who, metric)][0], now[1] - before[(who, metric)][1])
            for who, now in (("ours", ours), ("theirs", theirs))
        ]
        assert grown[0] == (count, total), (metric, grown)
        assert grown[1][0] >= count and grown[1][1] == grown[1][0] * total / count, (metric, grown)
