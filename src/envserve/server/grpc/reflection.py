"""gRPC server reflection (``grpc.reflection.v1`` and ``v1alpha``), so grpcurl, Postman and Evans can list
and call envserve's services without the ``.proto`` file.

The two versions are the same messages under two package names, so one set of message classes answers
both. They and the inference service's file live in a private descriptor pool: what reflection describes
is exactly what this server serves, and nothing registered in the process's default pool (a client
library's own copy of these messages, say) can collide with them.
"""

from __future__ import annotations

from typing import Any, AsyncGenerator, AsyncIterator, Dict, List, Tuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from .generated import inference_pb2
from .wire import GrpcError, Metadata, StatusCode, StreamHandler

__all__ = ["Reflection"]

_PACKAGES = ("grpc.reflection.v1", "grpc.reflection.v1alpha")
_SERVICE = "ServerReflection"
_METHOD = "ServerReflectionInfo"

# (message, [(field, number, type, label, message type or "", oneof index or None)]), as
# grpc/reflection/v1/reflection.proto defines them (the gRPC project's published service).
_T = descriptor_pb2.FieldDescriptorProto
_MESSAGES: List[Tuple[str, List[Tuple[str, int, int, int, str, Any]], List[str]]] = [
    (
        "ServerReflectionRequest",
        [
            ("host", 1, _T.TYPE_STRING, _T.LABEL_OPTIONAL, "", None),
            ("file_by_filename", 3, _T.TYPE_STRING, _T.LABEL_OPTIONAL, "", 0),
            ("file_containing_symbol", 4, _T.TYPE_STRING, _T.LABEL_OPTIONAL, "", 0),
            ("file_containing_extension", 5, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, "ExtensionRequest", 0),
            ("all_extension_numbers_of_type", 6, _T.TYPE_STRING, _T.LABEL_OPTIONAL, "", 0),
            ("list_services", 7, _T.TYPE_STRING, _T.LABEL_OPTIONAL, "", 0),
        ],
        ["message_request"],
    ),
    (
        "ExtensionRequest",
        [
            ("containing_type", 1, _T.TYPE_STRING, _T.LABEL_OPTIONAL, "", None),
            ("extension_number", 2, _T.TYPE_INT32, _T.LABEL_OPTIONAL, "", None),
        ],
        [],
    ),
    (
        "ServerReflectionResponse",
        [
            ("valid_host", 1, _T.TYPE_STRING, _T.LABEL_OPTIONAL, "", None),
            ("original_request", 2, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, "ServerReflectionRequest", None),
            ("file_descriptor_response", 4, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, "FileDescriptorResponse", 0),
            (
                "all_extension_numbers_response",
                5,
                _T.TYPE_MESSAGE,
                _T.LABEL_OPTIONAL,
                "ExtensionNumberResponse",
                0,
            ),
            ("list_services_response", 6, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, "ListServiceResponse", 0),
            ("error_response", 7, _T.TYPE_MESSAGE, _T.LABEL_OPTIONAL, "ErrorResponse", 0),
        ],
        ["message_response"],
    ),
    (
        "FileDescriptorResponse",
        [("file_descriptor_proto", 1, _T.TYPE_BYTES, _T.LABEL_REPEATED, "", None)],
        [],
    ),
    (
        "ExtensionNumberResponse",
        [
            ("base_type_name", 1, _T.TYPE_STRING, _T.LABEL_OPTIONAL, "", None),
            ("extension_number", 2, _T.TYPE_INT32, _T.LABEL_REPEATED, "", None),
        ],
        [],
    ),
    (
        "ListServiceResponse",
        [("service", 1, _T.TYPE_MESSAGE, _T.LABEL_REPEATED, "ServiceResponse", None)],
        [],
    ),
    ("ServiceResponse", [("name", 1, _T.TYPE_STRING, _T.LABEL_OPTIONAL, "", None)], []),
    (
        "ErrorResponse",
        [
            ("error_code", 1, _T.TYPE_INT32, _T.LABEL_OPTIONAL, "", None),
            ("error_message", 2, _T.TYPE_STRING, _T.LABEL_OPTIONAL, "", None),
        ],
        [],
    ),
]


def _reflection_file(package: str) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="grpc/reflection/%s/reflection.proto" % package.rsplit(".", 1)[1],
        package=package,
        syntax="proto3",
    )
    for name, fields, oneofs in _MESSAGES:
        message = proto.message_type.add(name=name)
        for oneof in oneofs:
            message.oneof_decl.add(name=oneof)
        for field, number, kind, label, type_name, oneof_index in fields:
            entry = message.field.add(
                name=field, number=number, type=kind, label=label, json_name=_camel(field)
            )
            if type_name:
                entry.type_name = ".%s.%s" % (package, type_name)
            if oneof_index is not None:
                entry.oneof_index = oneof_index
    service = proto.service.add(name=_SERVICE)
    service.method.add(
        name=_METHOD,
        input_type=".%s.ServerReflectionRequest" % package,
        output_type=".%s.ServerReflectionResponse" % package,
        client_streaming=True,
        server_streaming=True,
    )
    return proto


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class Reflection:
    """The reflection service over the files this server serves: their descriptors, as protoc wrote
    them, looked up by file name and by any symbol they define."""

    def __init__(self) -> None:
        self.pool = descriptor_pool.DescriptorPool()
        self.files: Dict[str, bytes] = {}
        inference = descriptor_pb2.FileDescriptorProto.FromString(inference_pb2.DESCRIPTOR.serialized_pb)
        for proto in (inference, *(_reflection_file(p) for p in _PACKAGES)):
            self.pool.Add(proto)
            self.files[proto.name] = proto.SerializeToString()
        self.services = ["inference.GRPCInferenceService"] + ["%s.%s" % (p, _SERVICE) for p in _PACKAGES]
        package = _PACKAGES[0]
        classes = {
            name: message_factory.GetMessageClass(self.pool.FindMessageTypeByName("%s.%s" % (package, name)))
            for name in ("ServerReflectionRequest", "ServerReflectionResponse")
        }
        self.request_type = classes["ServerReflectionRequest"]
        self.response_type = classes["ServerReflectionResponse"]

    def handlers(self) -> Dict[str, StreamHandler]:
        return {"/%s.%s/%s" % (package, _SERVICE, _METHOD): self.serve for package in _PACKAGES}

    async def serve(self, requests: AsyncIterator[bytes], metadata: Metadata) -> AsyncGenerator[bytes, None]:
        async for data in requests:
            try:
                request = self.request_type.FromString(data)
            except DecodeError as exc:
                raise GrpcError(
                    StatusCode.INVALID_ARGUMENT, "cannot parse ServerReflectionRequest: %s" % exc
                ) from None
            yield self.answer(request).SerializeToString()

    def answer(self, request: Any) -> Any:
        response = self.response_type(valid_host=request.host)
        response.original_request.CopyFrom(request)
        kind = request.WhichOneof("message_request")
        try:
            if kind == "list_services":
                for name in self.services:
                    response.list_services_response.service.add(name=name)
            elif kind == "file_by_filename":
                name = request.file_by_filename
                if name not in self.files:
                    raise KeyError("no file %r" % name)
                response.file_descriptor_response.file_descriptor_proto.append(self.files[name])
            elif kind == "file_containing_symbol":
                name = self._file_of(request.file_containing_symbol)
                response.file_descriptor_response.file_descriptor_proto.append(self.files[name])
            elif kind == "file_containing_extension":
                wanted = request.file_containing_extension
                raise KeyError(
                    "no extension %d of %r (this server's files define no extensions)"
                    % (wanted.extension_number, wanted.containing_type)
                )
            elif kind == "all_extension_numbers_of_type":
                name = request.all_extension_numbers_of_type
                self.pool.FindMessageTypeByName(name)  # KeyError when unknown
                response.all_extension_numbers_response.base_type_name = name
            else:
                response.error_response.error_code = StatusCode.INVALID_ARGUMENT
                response.error_response.error_message = "the request names no message_request"
        except KeyError as exc:
            response.ClearField("message_response")
            response.error_response.error_code = StatusCode.NOT_FOUND
            response.error_response.error_message = str(exc.args[0] if exc.args else exc)
        return response

    def _file_of(self, symbol: str) -> str:
        """The file defining ``symbol``: a package-qualified message, enum, service, or a service's method."""
        try:
            return str(self.pool.FindFileContainingSymbol(symbol).name)
        except KeyError:
            pass
        parent, _, method = symbol.rpartition(".")
        try:
            service = self.pool.FindServiceByName(parent)
        except KeyError:
            raise KeyError("no symbol %r" % symbol) from None
        if method not in service.methods_by_name:
            raise KeyError("no symbol %r" % symbol)
        return str(service.file.name)
