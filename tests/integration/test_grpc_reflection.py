"""gRPC server reflection against a real server, from real reflection clients: grpcio-reflection's
descriptor database (what grpcurl-like tools build on) over v1alpha, and raw v1 streams over grpcio. The
inference service is then called from the reflected descriptors alone, without any .proto or stub."""

from __future__ import annotations

import queue

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from joblib import load
from sklearn.datasets import load_digits

from tests.conftest import ServerProcess, write_model

try:  # a missing dependency fails the module (never a silent skip)
    from grpc_reflection.v1alpha import reflection_pb2
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
except ImportError as exc:
    raise ImportError("grpcio-reflection is a test dependency: run scripts/setup") from exc

SERVICES = [
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "inference.GRPCInferenceService",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, digits_model_file):
    repo = tmp_path_factory.mktemp("reflection")
    write_model(repo, "mnist-svm", {"name": "mnist-svm", "implementation": "sklearn"}, digits_model_file)
    proc = ServerProcess(repo, [])
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def test_a_reflection_client_lists_describes_and_calls_the_service(server, digits_model_file):
    with grpc.insecure_channel(server.grpc_address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert sorted(database.get_services()) == SERVICES
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("inference.GRPCInferenceService")
        assert {m.name for m in service.methods} >= {"ModelInfer", "ModelReady", "RepositoryIndex"}
        method = pool.FindMethodByName("inference.GRPCInferenceService.ModelInfer")
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        assert method.input_type.full_name == "inference.ModelInferRequest"

        rows = load(digits_model_file)  # the model itself: predictions to compare with
        x = load_digits().data[:3].astype(np.float64)
        request = request_type(model_name="mnist-svm")
        tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[3, 64])
        tensor.contents.fp64_contents.extend(x.ravel().tolist())
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        answer = infer(request, timeout=60)
        assert answer.model_name == "mnist-svm"
        out = answer.outputs[0]
        assert out.datatype == "INT64" and list(out.shape) == [3]
        if answer.raw_output_contents:
            got = np.frombuffer(answer.raw_output_contents[0], dtype="<i8").tolist()
        else:
            got = list(out.contents.int64_contents)
        assert got == rows.predict(x).tolist()


def _v1_stream(channel):
    """One v1 reflection stream: send a request, read its answer, as grpcurl does (same messages as
    v1alpha on the wire, under the v1 service's path)."""
    feed = queue.Queue()

    def requests():
        while True:
            item = feed.get(timeout=30)
            if item is None:
                return
            yield item

    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )(requests(), timeout=30)

    def ask(**fields):
        request = reflection_pb2.ServerReflectionRequest(host="localhost", **fields)
        feed.put(request)
        answer = next(call)
        assert answer.original_request == request and answer.valid_host == "localhost"
        return answer

    return ask, lambda: (feed.put(None), list(call), call.code())[2]


def test_v1_answers_each_request_on_one_stream_and_unknown_symbols_are_not_found(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        ask, close = _v1_stream(channel)
        listed = ask(list_services="")
        assert sorted(s.name for s in listed.list_services_response.service) == SERVICES

        for symbol in (
            "inference.GRPCInferenceService",
            "inference.GRPCInferenceService.ModelInfer",
            "inference.ModelInferResponse",
        ):
            answer = ask(file_containing_symbol=symbol)
            files = answer.file_descriptor_response.file_descriptor_proto
            proto = descriptor_pb2.FileDescriptorProto.FromString(files[0])
            assert proto.name == "inference.proto" and proto.package == "inference", symbol
            assert [s.name for s in proto.service] == ["GRPCInferenceService"]

        answer = ask(file_by_filename="grpc/reflection/v1/reflection.proto")
        proto = descriptor_pb2.FileDescriptorProto.FromString(
            answer.file_descriptor_response.file_descriptor_proto[0]
        )
        method = proto.service[0].method[0]
        assert (proto.package, method.name) == ("grpc.reflection.v1", "ServerReflectionInfo")
        assert method.client_streaming and method.server_streaming

        for fields, named in (
            ({"file_containing_symbol": "nope.Nothing"}, "nope.Nothing"),
            ({"file_containing_symbol": "inference.GRPCInferenceService.Nope"}, "Nope"),
            ({"file_by_filename": "secret.proto"}, "secret.proto"),
            ({"all_extension_numbers_of_type": "nope.Type"}, "nope.Type"),
        ):
            answer = ask(**fields)
            assert answer.WhichOneof("message_response") == "error_response", fields
            assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0], fields
            assert named in answer.error_response.error_message, answer.error_response
        extension = reflection_pb2.ExtensionRequest(
            containing_type="inference.ModelInferRequest", extension_number=9
        )
        assert ask(file_containing_extension=extension).error_response.error_code == 5
        numbers = ask(all_extension_numbers_of_type="inference.ModelInferRequest")
        assert numbers.all_extension_numbers_response.base_type_name == "inference.ModelInferRequest"
        assert list(numbers.all_extension_numbers_response.extension_number) == []
        # the stream survived every error and ends cleanly
        assert ask(list_services="").list_services_response.service
        assert close() == grpc.StatusCode.OK


def test_a_garbled_reflection_request_is_invalid_argument(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        call = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        with pytest.raises(grpc.RpcError) as info:
            list(call(iter([b"\xff\xff\xff"]), timeout=30))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ServerReflectionRequest" in info.value.details()


def test_reflection_can_be_turned_off(tmp_path):
    proc = ServerProcess(tmp_path, [], env={"ENVSERVE_GRPC_REFLECTION": "false"})
    try:
        proc.wait_ready()
        with grpc.insecure_channel(proc.grpc_address) as channel:
            with pytest.raises(grpc.RpcError) as info:
                ProtoReflectionDescriptorDatabase(channel).get_services()
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        proc.stop()
