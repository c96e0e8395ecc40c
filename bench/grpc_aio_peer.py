"""The peer of the grpc suite: envserve's own gRPC service, served by grpcio's asyncio server (grpc.aio)
instead of envserve's transport (python-hyper's h2), on the same data plane and models.

    python -m bench.grpc_aio_peer REPO HTTP_PORT GRPC_PORT

The two well-kept HTTP/2 stacks a Python server can build gRPC on are measured side by side with this
(bench/grpc.py); the product uses the one that wins. grpcio is a dev dependency only.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Callable

import grpc

from envserve.server.grpc.service import SERVICE, InferenceService
from envserve.server.grpc.transport import GrpcError
from envserve.server.serve import Server
from envserve.settings import ServerSettings

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _method(handler: Callable[..., Any]) -> Any:
    async def call(request: bytes, context: Any) -> bytes:
        try:
            remaining = context.time_remaining()
            reply = await handler(request, [tuple(m) for m in context.invocation_metadata()], remaining)
            payload, trailing = reply if isinstance(reply, tuple) else (reply, [])
            context.set_trailing_metadata(trailing)
            return payload
        except GrpcError as exc:
            await context.abort(_CODES[exc.code], exc.message)
            raise

    return grpc.unary_unary_rpc_method_handler(call)  # no (de)serialisers: bytes in, bytes out


async def main(repo: str, http_port: int, grpc_port: int) -> None:
    settings = ServerSettings.from_sources(repo, {"http_port": http_port, "grpc_port": -1})
    server = Server(settings)
    methods = {
        path.rsplit("/", 1)[1]: _method(handler)
        for path, handler in InferenceService(server.dataplane, server.calls).handlers().items()
    }
    aio = grpc.aio.server()
    aio.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    aio.add_insecure_port("127.0.0.1:%d" % grpc_port)
    await aio.start()
    try:
        await server.run()
    finally:
        await aio.stop(1)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
