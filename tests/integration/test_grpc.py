"""The gRPC edge with a real third-party client (tritonclient.grpc) and the shared error vectors."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from tests.conftest import ROOT, ServerProcess, custom_model, write_model

tritongrpc = pytest.importorskip(
    "tritonclient.grpc", reason="tritonclient[grpc] is a dev dependency: scripts/setup"
)
# Triton's published messages (wire-compatible with ours; both register package "inference", so a test
# process imports only theirs and checks ours in a subprocess).
from tritonclient.grpc import service_pb2 as pb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc as pb_grpc  # noqa: E402

VECTORS = json.loads((ROOT / "tests" / "vectors" / "v2_requests.json").read_text())["errors"]
# Cases that exist only in JSON: a proto message cannot be malformed JSON, nor hold a string in a float field.
JSON_ONLY = {
    "not json",
    "body not an object",
    "input without name",
    "missing data",
    "shape not a list",
    "float for int",
    "string for float",
    "number for bool",
    "number for bytes",
    "id not a string",
    "parameters not an object",
    "ragged data",
    "unknown datatype",
    "negative dimension",
    "negative unsigned",
    "fp32 overflow",
}
HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}
_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, digits_model_file):
    repo = tmp_path_factory.mktemp("grpc")
    write_model(
        repo,
        "mnist-svm",
        {"name": "mnist-svm", "implementation": "sklearn", "parameters": {"version": "1"}},
        digits_model_file,
    )
    write_model(  # the same model in a worker process: calls that suspend on the transport's eager path
        repo,
        "mnist-worker",
        {"name": "mnist-worker", "implementation": "sklearn", "parameters": {"environment_path": sys.prefix}},
        digits_model_file,
    )
    for name, cls in (("echo", "Echo"), ("fails", "Fails"), ("broken-load", "BrokenLoad")):
        custom_model(repo, name, cls)
    proc = ServerProcess(repo, [])
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def _flatten(data):
    if isinstance(data, list):
        return [v for item in data for v in _flatten(item)]
    return [data]


def _proto(model, body, version=None):
    request = pb.ModelInferRequest(model_name=model, model_version=version or "", id=body.get("id") or "")
    for key, value in (body.get("parameters") or {}).items():
        request.parameters[key].string_param = value
    for inp in body["inputs"]:
        tensor = request.inputs.add(name=inp["name"], datatype=inp["datatype"], shape=inp["shape"])
        for key, value in (inp.get("parameters") or {}).items():
            tensor.parameters[key].string_param = value
        values = _flatten(inp["data"])
        if inp["datatype"] == "BYTES":
            values = [v.encode() for v in values]
        getattr(tensor.contents, _FIELD[inp["datatype"]]).extend(values)
    for out in body.get("outputs", []):
        request.outputs.add(name=out["name"])
    return request


def test_error_vectors_over_grpc(server):
    channel = grpc.insecure_channel(server.grpc_address)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    tried = set()
    for case in VECTORS:
        if case["case"] in JSON_ONLY:
            continue
        tried.add(case["case"])
        with pytest.raises(grpc.RpcError, match=None) as info:  # case: see the "tried" set below
            stub.ModelInfer(_proto(case["model"], case["body"], case.get("version")), timeout=30)
        assert info.value.code() == HTTP_TO_GRPC[case["status"]], case["case"]
        assert case["error"] in info.value.details(), (case["case"], info.value.details())
    assert tried == {c["case"] for c in VECTORS} - JSON_ONLY and len(tried) == 15
    channel.close()


def test_tritonclient_grpc(server, digits, digits_model_file):
    import joblib

    client = tritongrpc.InferenceServerClient(url=server.grpc_address)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("mnist-svm") and not client.is_model_ready("broken-load")
        meta = client.get_server_metadata()
        assert meta.name == "envserve" and "model_repository" in meta.extensions
        assert client.get_model_metadata("mnist-svm").platform == "sklearn"
        x, _ = digits
        rows = x[:12].astype(np.float32)
        inp = tritongrpc.InferInput("predict", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)  # raw_input_contents
        result = client.infer(
            "mnist-svm", [inp], request_id="g-1", outputs=[tritongrpc.InferRequestedOutput("predict")]
        )
        np.testing.assert_array_equal(
            result.as_numpy("predict"), joblib.load(digits_model_file).predict(rows)
        )
        response = result.get_response()
        assert response.id == "g-1" and response.model_version == "1"
        # all datatypes through raw contents
        tensors = {
            "b": np.array([True, False]),
            "u64": np.array([0, 2**64 - 1], dtype=np.uint64),
            "f16": np.array([0.5, -1], dtype=np.float16),
            "s": np.array([b"a\x00", b"\xff"], dtype=object),
        }
        types = {"b": "BOOL", "u64": "UINT64", "f16": "FP16", "s": "BYTES"}
        inputs = []
        for name, arr in tensors.items():
            i = tritongrpc.InferInput(name, list(arr.shape), types[name])
            i.set_data_from_numpy(arr)
            inputs.append(i)
        result = client.infer("echo", inputs)
        for name, arr in tensors.items():
            assert result.as_numpy(name).tolist() == arr.tolist(), name
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["mnist-svm"].state == "READY" and index["broken-load"].state == "UNAVAILABLE"
        assert "weights file is corrupt" in index["broken-load"].reason
        client.unload_model("echo")
        assert not client.is_model_ready("echo")
        client.load_model("echo")
        assert client.is_model_ready("echo")
        with pytest.raises(Exception, match="not found"):
            client.get_model_metadata("nope")
    finally:
        client.close()


def test_worker_model_over_grpc_with_concurrent_calls(server, digits, digits_model_file):
    import joblib

    x, _ = digits
    expected = joblib.load(digits_model_file).predict(x[:40].astype(np.float32))
    client = tritongrpc.InferenceServerClient(url=server.grpc_address)

    def one(i):
        row = x[i : i + 1].astype(np.float32)
        inp = tritongrpc.InferInput("predict", list(row.shape), "FP32")
        inp.set_data_from_numpy(row)
        return int(client.infer("mnist-worker", [inp]).as_numpy("predict")[0])

    try:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(one, range(40)))
        assert got == expected.tolist()
    finally:
        client.close()


def test_our_proto_is_wire_compatible_with_tritons():
    """Every message and field we declare has the same number and type in Triton's published proto."""
    import subprocess
    import sys

    dump = r"""
import json
from envserve.server.grpc.generated import inference_pb2 as pb
def walk(m):
    return {"fields": {f.name: [f.number, f.type] for f in m.fields},
            "nested": {n.name: walk(n) for n in m.nested_types}}
d = pb.DESCRIPTOR
print(json.dumps({"messages": {n: walk(m) for n, m in d.message_types_by_name.items()},
                  "methods": {m.name: [m.input_type.name, m.output_type.name]
                              for m in d.services_by_name["GRPCInferenceService"].methods}}))
"""
    ours = json.loads(
        subprocess.run([sys.executable, "-c", dump], capture_output=True, text=True, check=True).stdout
    )
    theirs = pb.DESCRIPTOR

    def compare(mine, other, path):
        for name, (number, kind) in mine["fields"].items():
            peer = other.fields_by_name.get(name)
            assert peer is not None, "%s.%s missing in Triton's proto" % (path, name)
            assert (number, kind) == (peer.number, peer.type), "%s.%s differs" % (path, name)
        for name, nested in mine["nested"].items():
            compare(nested, other.nested_types_by_name[name], path + "." + name)

    assert len(ours["messages"]) >= 20
    for name, message in ours["messages"].items():
        compare(message, theirs.message_types_by_name[name], name)
    service = theirs.services_by_name["GRPCInferenceService"]
    for name, (request, response) in ours["methods"].items():
        if name == "ModelStreamInfer":  # MLServer's definition, which its clients call (docs/compat.md)
            assert (request, response) == ("ModelInferRequest", "ModelInferResponse")
            continue
        peer = service.methods_by_name[name]
        assert (request, response) == (peer.input_type.name, peer.output_type.name)


def test_grpc_max_message_length_bounds_grpc_messages_only(tmp_path, digits_model_file, digits):
    """MLServer's grpc_max_message_length (Seldon Core 2 sets MLSERVER_GRPC_MAX_MESSAGE_LENGTH): a larger
    ModelInfer is RESOURCE_EXHAUSTED naming the limit; the same request over REST is answered."""
    write_model(tmp_path, "mnist-svm", {"name": "mnist-svm", "implementation": "sklearn"}, digits_model_file)
    proc = ServerProcess(tmp_path, [], env={"MLSERVER_GRPC_MAX_MESSAGE_LENGTH": "2000"}).wait_ready()
    try:
        x, _ = digits
        body = {"inputs": [{"name": "x", "shape": [10, 64], "datatype": "FP64", "data": x[:10].tolist()}]}
        with grpc.insecure_channel(proc.grpc_address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(_proto("mnist-svm", body), timeout=30)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit of 2000 bytes" in info.value.details()
            small = dict(body, inputs=[dict(body["inputs"][0], shape=[1, 64], data=x[:1].tolist())])
            assert stub.ModelInfer(_proto("mnist-svm", small), timeout=30).outputs[0].name == "predict"
        with proc.client() as client:
            assert client.post("/v2/models/mnist-svm/infer", json=body).status_code == 200
    finally:
        proc.stop()
