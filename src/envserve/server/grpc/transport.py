"""The gRPC server: listens, accepts a :class:`~.connection.Connection` per client, and stops gracefully.

The HTTP/2 protocol itself (framing, HPACK, stream states, flow-control accounting, SETTINGS, PING,
CONTINUATION limits, header validation) is ``h2.connection.H2Connection``'s job, as in hypercorn and
httpcore. envserve's layer is split the way hypercorn splits its HTTP/2 protocol:

- :mod:`.wire`: the gRPC layer without state (status codes, message framing, gzip, ``grpc-timeout``,
  status trailers);
- :mod:`.stream`: one stream's state and its call's request headers;
- :mod:`.flow`: how much of the peer's data a connection acknowledges, so its memory stays bounded;
- :mod:`.connection`: one connection (``h2`` driven by asyncio): events, calls as Tasks, responses,
  resets, timeouts, GOAWAY;
- this module: the listening server.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Dict, Optional, Set

from .connection import Connection, Limits
from .wire import GrpcError, Handler, Metadata, StatusCode, StreamHandler, parse_timeout

__all__ = [
    "GrpcError",
    "GrpcServer",
    "Handler",
    "Limits",
    "Metadata",
    "StatusCode",
    "StreamHandler",
    "parse_timeout",
]


class GrpcServer:
    """Serve gRPC methods (``/package.Service/Method`` -> Handler, or StreamHandler for bidirectional
    streaming ones) over cleartext HTTP/2."""

    def __init__(
        self,
        handlers: Dict[str, Handler],
        limits: Limits,
        stream_handlers: Optional[Dict[str, StreamHandler]] = None,
    ) -> None:
        self.handlers = handlers
        self.stream_handlers = stream_handlers or {}
        self.limits = limits
        self.connections: Set[Connection] = set()
        self._server: Optional[asyncio.AbstractServer] = None
        self._idle = asyncio.Event()

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(self), host, port, reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    def connection_closed(self) -> None:
        if not self.connections:
            self._idle.set()

    async def stop(self, grace: Optional[float]) -> None:
        """Stop accepting, let in-flight calls finish (up to ``grace`` seconds), then close."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        if self.connections:
            self._idle.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        calls = [s.task for conn in self.connections for s in conn.streams.values() if s.task is not None]
        for conn in list(self.connections):
            conn._abort()
        await asyncio.sleep(0)  # let the aborted transports close (which cancels their calls)
        for task in calls:
            task.cancel()
        if calls:  # the cancelled calls unwind (their generators closed) before the loop may stop
            await asyncio.wait(calls, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
