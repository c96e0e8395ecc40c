"""The gRPC service over the data plane, served over HTTP/2 by ``transport.py`` (python-hyper's h2)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Any, Awaitable, Callable, Dict, Tuple, Union

from google.protobuf.message import DecodeError

from ... import __version__
from ...errors import EnvserveError
from ...logcontext import REQUEST_ID
from ..dataplane import DataPlane, take_response_headers
from ..logs import access, request_id
from . import converters
from .errors import code_for
from .generated import inference_pb2 as pb
from .reflection import Reflection
from .transport import GrpcError, GrpcServer, Handler, Limits, Metadata, StatusCode

__all__ = ["InferenceService", "start_grpc_server"]

logger = logging.getLogger("envserve.grpc")

SERVICE = "inference.GRPCInferenceService"
METHODS = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
)


class InferenceService:
    """One coroutine per RPC: (request message, metadata) -> response message; errors raise."""

    def __init__(self, dataplane: DataPlane, admin_token: str = "", access_log: bool = False) -> None:
        self.dp = dataplane
        self.admin_token = admin_token
        self.access_log = access_log

    def handlers(self) -> Dict[str, Handler]:
        table = {}
        for name in METHODS:
            request_type = getattr(pb, name + "Request")
            path = "/%s/%s" % (SERVICE, name)
            table[path] = _unary(path, request_type, getattr(self, name), self.access_log, self.dp)
        return table

    def _check_admin(self, metadata: Metadata) -> None:
        if not self.admin_token:
            return
        for key, value in metadata:
            if key == "authorization" and hmac.compare_digest(value, "Bearer " + self.admin_token):
                return
        raise GrpcError(
            StatusCode.UNAUTHENTICATED,
            "this call needs the admin token: send metadata 'authorization: Bearer <token>'",
        )

    async def ServerLive(self, request: Any, metadata: Metadata) -> Any:
        return pb.ServerLiveResponse(live=self.dp.live())

    async def ServerReady(self, request: Any, metadata: Metadata) -> Any:
        return pb.ServerReadyResponse(ready=self.dp.ready())

    async def ModelReady(self, request: Any, metadata: Metadata) -> Any:
        return pb.ModelReadyResponse(ready=self.dp.model_ready(request.name, request.version or None))

    async def ServerMetadata(self, request: Any, metadata: Metadata) -> Any:
        meta = self.dp.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=__version__, extensions=meta["extensions"]
        )

    async def ModelMetadata(self, request: Any, metadata: Metadata) -> Any:
        return converters.metadata_to_proto(self.dp.model_metadata(request.name, request.version or None))

    async def ModelInfer(self, request: Any, metadata: Metadata) -> Any:
        v2 = converters.request_from_proto(request)
        name, version = request.model_name, request.model_version or None
        if self.dp.wants_headers(name, version):
            # as MLServer: the call's metadata is the request's parameters.headers (binary keys left out)
            v2.parameters = dict(v2.parameters, headers={k: v for k, v in metadata if not k.endswith("-bin")})
        response = await self.dp.infer(name, version, v2, protocol="grpc", mlserver_shapes=True)
        extra = take_response_headers(response)  # and the response's go back as trailing metadata
        raw = v2.parameters.get("raw_output", True) is not False
        answer = converters.response_to_proto(response, raw)
        return (answer, sorted(extra.items())) if extra else answer

    async def RepositoryIndex(self, request: Any, metadata: Metadata) -> Any:
        return converters.index_to_proto(self.dp.repository_index({"ready": request.ready}))

    async def RepositoryModelLoad(self, request: Any, metadata: Metadata) -> Any:
        self._check_admin(metadata)
        await self.dp.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request: Any, metadata: Metadata) -> Any:
        self._check_admin(metadata)
        await self.dp.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _unary(
    path: str,
    request_type: Any,
    method: Callable[[Any, Metadata], Awaitable[Any]],
    access_log: bool,
    dataplane: DataPlane,
) -> Handler:
    """The transport's handler for one RPC: parse, call, serialize; the request id in and out (metadata
    ``x-request-id``, returned as trailing metadata), an access line when asked for, and the call's span
    (continuing the caller's ``traceparent``) when tracing is on."""
    parse = request_type.FromString
    name = path.rsplit("/", 1)[1]

    async def handle(data: bytes, metadata: Metadata) -> Union[bytes, Tuple[bytes, Metadata]]:
        tracing = dataplane.tracing
        if tracing is None:
            return await run(data, metadata)
        attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": name}
        with tracing.request(path, dict(metadata), attributes) as span:
            try:
                result = await run(data, metadata)
            except GrpcError as exc:
                span.set_attribute("rpc.grpc.status_code", exc.code)
                raise
            span.set_attribute("rpc.grpc.status_code", StatusCode.OK)
            return result

    async def run(data: bytes, metadata: Metadata) -> Union[bytes, Tuple[bytes, Metadata]]:
        started = time.perf_counter()
        rid = request_id(next((v for k, v in metadata if k == "x-request-id"), None))
        REQUEST_ID.set(rid)  # each call is its own Task: the value ends with it
        status, model = "OK", ""
        try:
            try:
                request = parse(data)
            except DecodeError as exc:
                raise GrpcError(
                    StatusCode.INVALID_ARGUMENT, "cannot parse %sRequest: %s" % (name, exc)
                ) from None
            model = getattr(request, "model_name", "") or getattr(request, "name", "")
            try:
                reply = await method(request, metadata)
            except EnvserveError as exc:
                raise GrpcError(code_for(exc), str(exc)) from None
        except GrpcError as exc:
            status = StatusCode.NAMES.get(exc.code, str(exc.code))
            exc.metadata.append(("x-request-id", rid))
            raise
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except BaseException:
            status = "INTERNAL"
            raise
        finally:
            if access_log:
                access("POST", path, model, status, started, "grpc")
        trailing = [("x-request-id", rid)]
        if isinstance(reply, tuple):  # (message, trailing metadata)
            reply, trailing = reply[0], reply[1] + trailing
        if dataplane.tracing is not None:
            with dataplane.tracing.span("encode"):
                return reply.SerializeToString(), trailing
        return reply.SerializeToString(), trailing

    return handle


async def start_grpc_server(
    dataplane: DataPlane,
    host: str,
    port: int,
    limits: Limits,
    admin_token: str = "",
    reflection: bool = True,
    access_log: bool = False,
) -> Tuple[GrpcServer, int]:
    """Start serving; returns (server, bound port). Port 0 picks a free one."""
    streams = Reflection().handlers() if reflection else {}
    service = InferenceService(dataplane, admin_token, access_log)
    server = GrpcServer(service.handlers(), limits, streams)
    try:
        bound = await server.start(host, port)
    except OSError as exc:
        from ...errors import SettingsError

        raise SettingsError(
            "cannot listen for gRPC on %s:%d (%s); choose another port with --grpc-port"
            % (host, port, exc.strerror or exc)
        ) from None
    return server, bound
