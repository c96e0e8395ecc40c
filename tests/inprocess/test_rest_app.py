"""The REST app in process: routes, answers, errors and shedding, through its ASGI interface."""

from __future__ import annotations

import asyncio

import pytest

from envserve.server.rest.routing import HTTPError, Route, Router
from tests.conftest import custom_model, write_model
from tests.inprocess.conftest import client, served


def _body(rows):
    return {"inputs": [{"name": "x", "shape": [len(rows), len(rows[0])], "datatype": "FP64", "data": rows}]}


async def _noop(request):
    return None


def test_router_matches_patterns_decodes_parameters_and_says_405_or_404():
    router = Router(
        [
            Route("POST", "/v2/models/{name}/infer", _noop),
            Route("GET", "/v2/models/{name}", _noop),
            Route("GET", "/v2/health/live", _noop),
        ]
    )
    route, params = router.find("POST", "/v2/models/my%20model/infer")
    assert route.handler is _noop and params == {"name": "my model"}
    assert router.find("HEAD", "/v2/models/m")[1] == {"name": "m"}  # HEAD is served by GET routes
    with pytest.raises(HTTPError) as info:
        router.find("GET", "/v2/models/m/infer")
    assert info.value.status == 405 and info.value.allow == "POST"
    with pytest.raises(HTTPError) as info:
        router.find("GET", "/v3/nothing")
    assert info.value.status == 404 and "no route for GET /v3/nothing" in info.value.message


def test_infer_metadata_health_and_errors(tmp_path, digits_model_file, digits, arun):
    import joblib

    write_model(tmp_path, "digits", {"name": "digits", "implementation": "sklearn"}, digits_model_file)
    custom_model(tmp_path, "fails", "Fails")
    x, _ = digits

    async def scenario():
        async with served(tmp_path) as server, client(server) as c:
            assert (await c.get("/v2/health/ready")).json() == {"ready": True}
            r = await c.post("/v2/models/digits/infer", json=_body(x[:5].tolist()))
            assert r.status_code == 200
            assert r.json()["outputs"][0]["data"] == joblib.load(digits_model_file).predict(x[:5]).tolist()
            meta = (await c.get("/v2/models/digits")).json()
            assert meta["name"] == "digits" and meta["platform"] == "sklearn"
            r = await c.post("/v2/models/digits/infer", content=b"{not json")
            assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
            r = await c.post("/v2/models/nope/infer", json=_body([[1.0]]))
            assert r.status_code == 404 and "model 'nope' not found" in r.json()["error"]
            r = await c.post("/v2/models/fails/infer", json=_body([[1.0]]))
            assert r.status_code == 500 and "boom: feature 3 is out of range" in r.json()["error"]
            r = await c.get("/v2/models/digits/infer")
            assert r.status_code == 405 and r.headers["allow"] == "POST"
            metrics = (await c.get("/metrics")).text
            assert 'protocol="rest",status="200"' in metrics and 'status="500"' in metrics

    arun(scenario())


def test_a_full_queue_answers_503_with_retry_after(tmp_path, arun):
    custom_model(tmp_path, "slow", "Slow", extra={"seconds": 0.5}, max_queue_size=1)

    async def scenario():
        async with served(tmp_path) as server, client(server) as c:
            body = _body([[1.0]])
            calls = [asyncio.ensure_future(c.post("/v2/models/slow/infer", json=body)) for _ in range(4)]
            answers = await asyncio.gather(*calls)
            statuses = sorted(r.status_code for r in answers)
            assert statuses == [200, 200, 503, 503]  # one running, one waiting, the rest shed
            shed = [r for r in answers if r.status_code == 503]
            assert all(
                r.headers["retry-after"] == "1" and "max_queue_size" in r.json()["error"] for r in shed
            )

    arun(scenario())


def test_admin_token_and_same_origin_guard_the_repository_calls(tmp_path, arun):
    custom_model(tmp_path, "echo", "Echo")

    async def scenario():
        async with served(tmp_path, admin_token="s3cret") as server, client(server) as c:
            r = await c.post("/v2/repository/models/echo/unload")
            assert r.status_code == 401 and "admin token" in r.json()["error"]
            auth = {"Authorization": "Bearer s3cret"}
            r = await c.post("/v2/repository/models/echo/unload", headers={**auth, "Origin": "https://evil"})
            assert r.status_code == 403 and "cross-site" in r.json()["error"]
            assert (await c.post("/v2/repository/models/echo/unload", headers=auth)).status_code == 200
            assert (await c.post("/v2/repository/models/echo/load", headers=auth)).status_code == 200
            body = {"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [7]}]}
            assert (await c.post("/v2/models/echo/infer", json=body)).json()["outputs"][0]["data"] == [7]

    arun(scenario())


def test_the_csrf_check_does_not_trust_host_nor_cors_star(tmp_path, arun):
    """DNS rebinding: a page from rebind.example, resolved to this server, sends its own name as Host and
    Origin alike — refused, as is a browser that says the call is cross-site without an Origin; the
    server's own names (loopback, allowed_hosts) and exactly listed origins pass; ``cors_origins: "*"``
    lets any origin read, never change the server."""
    custom_model(tmp_path, "echo", "Echo")
    unload = "/v2/repository/models/echo/unload"
    load = "/v2/repository/models/echo/load"

    async def scenario():
        settings = {"cors_origins": "*,https://console.example", "allowed_hosts": "models.example"}
        async with served(tmp_path, **settings) as server, client(server) as c:
            for headers in (
                {"Host": "rebind.example:8080", "Origin": "http://rebind.example:8080"},
                {"Host": "localhost:8080", "Origin": "https://evil.example"},  # not saved by cors "*"
                {"Host": "localhost:8080", "Sec-Fetch-Site": "cross-site"},
            ):
                r = await c.post(unload, headers=headers)
                assert r.status_code == 403 and "cross-site request refused" in r.json()["error"], headers
            assert server.registry.models["echo"]  # still loaded: nothing changed it
            for headers in (
                {"Host": "localhost:8080", "Origin": "http://localhost:8080"},
                {"Host": "models.example", "Origin": "https://models.example"},
                {"Host": "models.example", "Origin": "https://console.example"},
                {"Host": "10.0.0.7:8080"},  # no Origin: not a browser's cross-site call
            ):
                assert (await c.post(unload, headers=headers)).status_code == 200, headers
                assert (await c.post(load, headers=headers)).status_code == 200, headers
            r = await c.get("/v2/models/echo", headers={"Origin": "https://evil.example"})
            assert r.headers.get("access-control-allow-origin") == "https://evil.example"  # reads: CORS "*"

    arun(scenario())


def test_kserve_v1_protocol(tmp_path, digits_model_file, digits, arun):
    """KServe V1: the model list, readiness, :predict with instances or inputs (predictions as KServe's
    sklearn server answers them), :explain 501, and client mistakes as 4xx naming the problem."""
    import joblib

    write_model(tmp_path, "digits", {"name": "digits", "implementation": "sklearn"}, digits_model_file)
    write_model(tmp_path, "broken", {"name": "broken", "implementation": "sklearn"})  # no model file
    x, _ = digits
    expected = joblib.load(digits_model_file).predict(x[:4]).tolist()

    async def scenario():
        async with served(tmp_path) as server, client(server) as c:
            assert (await c.get("/v1/models")).json() == {"models": ["broken", "digits"]}
            assert (await c.get("/v1/models/digits")).json() == {"name": "digits", "ready": True}
            r = await c.get("/v1/models/broken")  # as KServe's server: 503 with an error
            assert r.status_code == 503 and set(r.json()) == {"error"}, r.text
            assert "model 'broken' is not ready: UNAVAILABLE: " in r.json()["error"], r.text
            r = await c.get("/v1/models/nope")
            assert r.status_code == 404 and "model 'nope' not found" in r.json()["error"]
            for key in ("instances", "inputs"):
                r = await c.post("/v1/models/digits:predict", json={key: x[:4].tolist()})
                assert r.status_code == 200, r.text
                assert r.json() == {"predictions": expected}
            r = await c.post("/v1/models/digits:explain", json={"instances": x[:1].tolist()})
            assert r.status_code == 501 and "no explainer" in r.json()["error"]
            for body, status, text in (
                ({"instances": "nope"}, 400, 'Expected "instances" or "inputs" to be a list'),
                ({"rows": []}, 400, 'Expected "instances" or "inputs" to be a list'),
                ({"instances": []}, 400, "is empty"),
                ({"instances": [[1.0, 2.0], [3.0]]}, 400, "same shape"),
                ({"instances": [[1.0] * 5]}, 400, "expects 64 features per row"),
                ([1, 2], 400, "must be a JSON object"),
            ):
                r = await c.post("/v1/models/digits:predict", json=body)
                assert r.status_code == status and text in r.json()["error"], (body, r.text)
            r = await c.post("/v1/models/nope:predict", json={"instances": [[1.0]]})
            assert r.status_code == 404
            r = await c.post("/v1/models/digits:train", json={})
            assert r.status_code == 404 and "NAME:predict" in r.json()["error"]

    arun(scenario())


def test_a_parquet_body_is_decoded_by_the_server_and_the_model_gets_json(tmp_path, arun):
    """``/invocations`` with Parquet: the server reads it with its own pandas/pyarrow and hands the model
    MLflow's JSON — a runtime that takes only JSON and CSV (as every runtime's score_mlflow does) answers
    it, so no Parquet byte reached the model's environment; a corrupt file is the client's 400."""
    import io

    import pandas as pd

    custom_model(tmp_path, "echo", "Echo")
    frame = pd.DataFrame({"x": [1.5, 2.5, 4.0]})
    out = io.BytesIO()
    frame.to_parquet(out)

    async def scenario():
        async with served(tmp_path) as server, client(server) as c:
            headers = {"Content-Type": "application/vnd.apache.parquet"}
            r = await c.post("/invocations", content=out.getvalue(), headers=headers)
            assert r.status_code == 200, r.text
            assert r.json() == {"predictions": [1.5, 2.5, 4.0]}, r.text  # the echo of column x
            r = await c.post("/invocations", content=b"PAR1 not parquet at all PAR1", headers=headers)
            assert r.status_code == 400 and "valid Parquet" in r.text, r.text

    arun(scenario())
