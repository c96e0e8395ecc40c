"""Both edges' error tables, driven by one failing model in process: the same error leaves REST (as V2,
KServe V1, MLflow and Seldon bodies) and gRPC with the matching status and the same message, and the
metrics count it under one status whatever the protocol."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from envserve.errors import (
    DatatypeMismatch,
    InferenceError,
    InferenceTimeout,
    InvalidRequest,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
    UnsupportedMediaType,
    WorkerUnavailable,
)
from envserve.server.grpc.generated import inference_pb2 as pb
from envserve.server.grpc.wire import GrpcError, StatusCode
from tests.unit.server.fakes import Assembled, model, raising

INFER = "/inference.GRPCInferenceService/ModelInfer"

#: error raised by the model -> (HTTP status, gRPC code)
TABLE = [
    (InvalidRequest("x has 3 columns, the model takes 4"), 400, StatusCode.INVALID_ARGUMENT),
    (DatatypeMismatch("x: 'a' is not INT64"), 400, StatusCode.INVALID_ARGUMENT),
    (UnsupportedMediaType("not CSV"), 415, StatusCode.INVALID_ARGUMENT),
    (PayloadTooLarge("too big"), 413, StatusCode.RESOURCE_EXHAUSTED),
    (InferenceError("model 'm' raised ValueError: nope"), 500, StatusCode.INTERNAL),
    (ModelNotReady("model 'm' is LOADING"), 503, StatusCode.UNAVAILABLE),
    (WorkerUnavailable("the worker died; retry shortly"), 503, StatusCode.UNAVAILABLE),
    (Overloaded("model 'm' has 256 requests waiting"), 503, StatusCode.UNAVAILABLE),
    (InferenceTimeout("model 'm' did not answer within 60 s"), 504, StatusCode.DEADLINE_EXCEEDED),
]


def _grpc_request() -> bytes:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="INT64", shape=[2]).contents.int64_contents.extend([1, 2])
    return request.SerializeToString()


@pytest.mark.parametrize("error, status, code", TABLE, ids=[type(e).__name__ for e, _, _ in TABLE])
def test_one_failure_through_both_edges(tmp_path, error, status, code):
    message = str(error)

    async def scenario():
        server = Assembled(tmp_path, {"m": model(raising(error))})
        await server.load("m")
        transport = httpx.ASGITransport(app=server.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://envserve") as rest:
            body = {"inputs": [{"name": "x", "shape": [2], "datatype": "INT64", "data": [1, 2]}]}
            v2 = await rest.post("/v2/models/m/infer", json=body)
            kserve = await rest.post("/v1/models/m:predict", json={"instances": [[1, 2]]})
            mlflow = await rest.post(
                "/invocations", content=b"a,b\n1,2", headers={"content-type": "text/csv"}
            )
            seldon = await rest.post("/api/v1.0/predictions", json={"data": {"ndarray": [[1, 2]]}})
        with pytest.raises(GrpcError) as grpc:
            await server.grpc[INFER](_grpc_request(), [("x-request-id", "abc")], None)
        return server, v2, kserve, mlflow, seldon, grpc.value

    server, v2, kserve, mlflow, seldon, grpc = asyncio.run(scenario())
    for answer in (v2, kserve, mlflow, seldon):
        assert answer.status_code == status, answer.request.url
        assert ("retry-after" in answer.headers) == (status == 503)
        assert answer.headers["x-request-id"]
    assert v2.json() == {"error": message} and kserve.json() == {"error": message}
    mlflow_code = {400: "BAD_REQUEST", 413: "BAD_REQUEST", 415: "BAD_REQUEST", 503: "TEMPORARILY_UNAVAILABLE"}
    assert mlflow.json() == {
        "error_code": mlflow_code.get(status, "DEADLINE_EXCEEDED" if status == 504 else "INTERNAL_ERROR"),
        "message": message,
        "error": message,
    }
    reason = "MICROSERVICE_BAD_DATA" if status < 500 else "MICROSERVICE_INTERNAL_ERROR"
    assert seldon.json() == {
        "status": {"code": status, "info": message, "reason": reason, "status": "FAILURE"}
    }
    assert (grpc.code, grpc.message) == (code, message)
    assert ("x-request-id", "abc") in grpc.metadata
    for protocol in ("rest", "kserve-v1", "mlflow", "seldon", "grpc"):
        assert server.requests(protocol, str(status)) == 1, protocol


def test_what_no_table_names_is_a_500_without_its_details_on_every_edge(tmp_path, caplog):
    async def scenario():
        server = Assembled(tmp_path, {"m": model(raising(RuntimeError("secret detail")))})
        await server.load("m")
        transport = httpx.ASGITransport(app=server.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://envserve") as rest:
            body = {"inputs": [{"name": "x", "shape": [2], "datatype": "INT64", "data": [1, 2]}]}
            v2 = await rest.post("/v2/models/m/infer", json=body)
            mlflow = await rest.post("/invocations", content=b"a\n1", headers={"content-type": "text/csv"})
        with pytest.raises(RuntimeError):  # the gRPC transport answers INTERNAL for it (its own tests)
            await server.grpc[INFER](_grpc_request(), [], None)
        return server, v2, mlflow

    server, v2, mlflow = asyncio.run(scenario())
    assert (v2.status_code, v2.json()) == (500, {"error": "internal server error; see the server log"})
    assert mlflow.status_code == 500 and mlflow.json()["error_code"] == "INTERNAL_ERROR"
    assert "secret detail" not in v2.text + mlflow.text
    assert "secret detail" in caplog.text  # the traceback is in the server's log
    assert server.requests("rest", "500") == 1 and server.requests("grpc", "500") == 1
