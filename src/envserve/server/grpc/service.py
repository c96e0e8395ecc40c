"""The gRPC service over the data plane, served over HTTP/2 by ``transport.py`` (python-hyper's h2)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, Dict, Optional, Tuple, Type

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as Message

from ... import __version__
from ...errors import EnvserveError, InvalidRequest, SettingsError
from ...protocol.v2 import InferenceRequest
from ..call import LOOPBACK_ONLY, PEER, Call, Calls, Protocol, is_loopback
from ..dataplane import DataPlane
from . import converters
from .errors import code_for
from .generated import inference_pb2 as pb
from .reflection import Reflection
from .transport import GrpcServer, Limits
from .wire import GrpcError, Handler, Metadata, StatusCode, StreamHandler

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
)  # and ModelStreamInfer, a stream (stream_handlers)

#: One RPC of the service: the parsed request message (each RPC's own type) and its call -> the response.
Method = Callable[[Any, Call], Awaitable[Message]]


class InferenceService:
    """One coroutine per RPC: (request message, call) -> response message; errors raise."""

    def __init__(
        self, dataplane: DataPlane, calls: Calls, admin_token: str = "", admin_open: bool = False
    ) -> None:
        self.dp = dataplane
        self.calls = calls
        self.admin_token = admin_token
        self.admin_open = admin_open

    def handlers(self) -> Dict[str, Handler]:
        table = {}
        for name in METHODS:
            path = "/%s/%s" % (SERVICE, name)
            table[path] = self._unary(path, getattr(pb, name + "Request"), getattr(self, name))
        return table

    def _unary(self, path: str, request_type: Type[Message], method: Method) -> Handler:
        """The transport's handler for one RPC: begin the call (request id from metadata ``x-request-id``,
        returned as trailing metadata; the span; the deadline), parse, run, serialize, map an error
        through the one table (:mod:`.errors`), end the call (its access line)."""
        parse = request_type.FromString
        calls = self.calls

        async def handle(data: bytes, metadata: Metadata, timeout: Optional[float]) -> Tuple[bytes, Metadata]:
            incoming = next((v for k, v in metadata if k == "x-request-id"), None)
            deadline = None if timeout is None else time.monotonic() + timeout
            call = calls.begin(Protocol.V2_GRPC, "POST", path, metadata, incoming, None, deadline)
            code = StatusCode.OK
            try:
                try:
                    request = parse(data)
                except DecodeError as exc:
                    name = path.rsplit("/", 1)[1]
                    raise GrpcError(
                        StatusCode.INVALID_ARGUMENT, "cannot parse %sRequest: %s" % (name, exc)
                    ) from None
                call.model = getattr(request, "model_name", "") or getattr(request, "name", "")
                try:
                    reply = await method(request, call)
                except EnvserveError as exc:
                    raise GrpcError(code_for(exc), str(exc)) from None
                with call.span("encode"):
                    payload = reply.SerializeToString()
                trailing = [("x-request-id", call.request_id)]
                if call.response_headers:  # what the model set (MLServer runtimes), as trailing metadata
                    trailing = sorted(call.response_headers.items()) + trailing
                return payload, trailing
            except GrpcError as exc:
                code = exc.code
                exc.metadata.append(("x-request-id", call.request_id))
                raise
            except asyncio.CancelledError:
                code = StatusCode.CANCELLED
                raise
            except BaseException:
                code = StatusCode.INTERNAL
                raise
            finally:
                calls.end(call, code, StatusCode.NAMES.get(code) or str(code))

        return handle

    def stream_handlers(self) -> Dict[str, StreamHandler]:
        return {"/%s/ModelStreamInfer" % SERVICE: self.ModelStreamInfer}

    async def ModelStreamInfer(
        self, messages: AsyncIterator[bytes], metadata: Metadata
    ) -> AsyncGenerator[bytes, None]:
        """MLServer's streaming RPC: the client's ModelInferRequests (the first names the model) go to the
        model's stream as they arrive, its answers come back as ModelInferResponses as it yields them."""
        path = "/%s/ModelStreamInfer" % SERVICE
        incoming = next((v for k, v in metadata if k == "x-request-id"), None)
        call = self.calls.begin(Protocol.V2_GRPC, "POST", path, metadata, incoming)
        code = StatusCode.OK
        try:
            try:
                first = pb.ModelInferRequest.FromString(await messages.__anext__())
            except StopAsyncIteration:
                raise GrpcError(StatusCode.INVALID_ARGUMENT, "the stream sent no ModelInferRequest") from None
            except DecodeError as exc:
                raise GrpcError(
                    StatusCode.INVALID_ARGUMENT, "cannot parse ModelInferRequest: %s" % exc
                ) from None
            call.model = first.model_name
            raw = True

            async def requests() -> AsyncIterator[InferenceRequest]:
                nonlocal raw
                v2 = converters.request_from_proto(first)
                raw = v2.parameters.get("raw_output", True) is not False
                yield v2
                async for data in messages:
                    try:
                        message = pb.ModelInferRequest.FromString(data)
                    except DecodeError as exc:
                        raise InvalidRequest("cannot parse ModelInferRequest: %s" % exc) from None
                    yield converters.request_from_proto(message)

            answers = self.dp.infer_stream(call, first.model_name, first.model_version or None, requests())
            try:
                async with contextlib.aclosing(answers):
                    async for response in answers:
                        yield converters.response_to_proto(response, raw).SerializeToString()
            except EnvserveError as exc:
                raise GrpcError(code_for(exc), str(exc)) from None
        except GrpcError as exc:
            code = exc.code
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = StatusCode.CANCELLED
            raise
        except BaseException:
            code = StatusCode.INTERNAL
            raise
        finally:
            self.calls.end(call, code, StatusCode.NAMES.get(code) or str(code))

    def _check_admin(self, call: Call) -> None:
        if not self.admin_token:
            if not self.admin_open and not is_loopback(PEER.get()):
                raise GrpcError(StatusCode.PERMISSION_DENIED, LOOPBACK_ONLY)
            return
        value = call.headers.get("authorization", "")
        # compared as bytes: a token of any characters is a wrong token, not an error of the server's
        sent = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
        if hmac.compare_digest(sent, ("Bearer " + self.admin_token).encode("utf-8")):
            return
        raise GrpcError(
            StatusCode.UNAUTHENTICATED,
            "this call needs the admin token: send metadata 'authorization: Bearer <token>'",
        )

    async def ServerLive(self, request: pb.ServerLiveRequest, call: Call) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dp.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, call: Call) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dp.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, call: Call) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.dp.model_ready(request.name, request.version or None))

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, call: Call
    ) -> pb.ServerMetadataResponse:
        meta = self.dp.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=__version__, extensions=meta["extensions"]
        )

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, call: Call) -> pb.ModelMetadataResponse:
        return converters.metadata_to_proto(self.dp.model_metadata(request.name, request.version or None))

    async def ModelInfer(self, request: pb.ModelInferRequest, call: Call) -> pb.ModelInferResponse:
        v2 = converters.request_from_proto(request)
        response = await self.dp.infer(call, request.model_name, request.model_version or None, v2)
        raw = v2.parameters.get("raw_output", True) is not False
        return converters.response_to_proto(response, raw)

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, call: Call
    ) -> pb.RepositoryIndexResponse:
        return converters.index_to_proto(self.dp.repository_index({"ready": request.ready}))

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, call: Call
    ) -> pb.RepositoryModelLoadResponse:
        self._check_admin(call)
        await self.dp.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, call: Call
    ) -> pb.RepositoryModelUnloadResponse:
        self._check_admin(call)
        await self.dp.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


async def start_grpc_server(
    dataplane: DataPlane,
    calls: Calls,
    host: str,
    port: int,
    limits: Limits,
    admin_token: str = "",
    reflection: bool = True,
    admin_open: bool = False,
) -> Tuple[GrpcServer, int]:
    """Start serving; returns (server, bound port). Port 0 picks a free one."""
    service = InferenceService(dataplane, calls, admin_token, admin_open)
    streams = dict(service.stream_handlers())
    if reflection:
        streams.update(Reflection().handlers())
    server = GrpcServer(service.handlers(), limits, streams)
    try:
        bound = await server.start(host, port)
    except OSError as exc:
        raise SettingsError(
            "cannot listen for gRPC on %s:%d (%s); choose another port with --grpc-port"
            % (host, port, exc.strerror or exc)
        ) from None
    return server, bound
