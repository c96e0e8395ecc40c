"""The gRPC service over the data plane, and its server (grpc.aio in the server's event loop)."""

from __future__ import annotations

import hmac
import logging
from typing import Any, Optional

import grpc

from ... import __version__
from ...errors import EnvserveError
from ..dataplane import DataPlane
from . import converters
from .errors import code_for
from .generated import inference_pb2 as pb
from .generated import inference_pb2_grpc as pb_grpc

__all__ = ["InferenceService", "start_grpc_server"]

logger = logging.getLogger("envserve.grpc")


def _status(exc: BaseException) -> str:
    return str(code_for(exc).name)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, admin_token: str = "") -> None:
        self.dp = dataplane
        self.admin_token = admin_token

    async def _check_admin(self, context: Any) -> None:
        if not self.admin_token:
            return
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and hmac.compare_digest(str(value), "Bearer " + self.admin_token):
                return
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "this call needs the admin token: send metadata 'authorization: Bearer <token>'",
        )

    async def _fail(self, context: Any, exc: BaseException) -> None:
        if not isinstance(exc, EnvserveError):
            logger.exception("unexpected error in a gRPC call")
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error; see the server log")
        await context.abort(code_for(exc), str(exc))

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=self.dp.live())

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.dp.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            return pb.ModelReadyResponse(ready=self.dp.model_ready(request.name, request.version or None))
        except Exception as exc:
            await self._fail(context, exc)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        meta = self.dp.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=__version__, extensions=meta["extensions"]
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        try:
            return converters.metadata_to_proto(self.dp.model_metadata(request.name, request.version or None))
        except Exception as exc:
            await self._fail(context, exc)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        try:
            v2 = converters.request_from_proto(request)
            response = await self.dp.infer(
                request.model_name, request.model_version or None, v2, protocol="grpc", status_of=_status
            )
            raw = v2.parameters.get("raw_output", True) is not False
            return converters.response_to_proto(response, raw)
        except Exception as exc:
            await self._fail(context, exc)

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        return converters.index_to_proto(self.dp.repository_index({"ready": request.ready}))

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        await self._check_admin(context)
        try:
            await self.dp.load(request.model_name)
            return pb.RepositoryModelLoadResponse()
        except Exception as exc:
            await self._fail(context, exc)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self._check_admin(context)
        try:
            await self.dp.unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()
        except Exception as exc:
            await self._fail(context, exc)


async def start_grpc_server(
    dataplane: DataPlane, host: str, port: int, max_message: int, admin_token: str = ""
) -> Any:
    """Start serving; returns (server, bound port). Port 0 picks a free one."""
    options = [
        ("grpc.max_receive_message_length", max_message),
        ("grpc.max_send_message_length", max_message),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(dataplane, admin_token), server)  # type: ignore[no-untyped-call]
    address = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
    bound: Optional[int] = None
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise EnvserveError("cannot listen for gRPC on %s: %s" % (address, exc)) from None
    if not bound:
        from ...errors import SettingsError

        raise SettingsError("cannot listen for gRPC on %s; choose another port with --grpc-port" % address)
    await server.start()
    return server, bound
