"""One HTTP/2 stream of a gRPC call, as the connection keeps it: its request headers and bytes, its
task, what it still has to send, and (streaming calls) its inbox of request messages."""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional, Tuple

from .wire import GrpcError, Metadata, StatusCode, parse_timeout

__all__ = ["Stream", "call_headers", "check_call", "timeout_of"]


class Stream:
    __slots__ = (
        "data", "deferred", "drained", "headers", "heard", "inbox", "pending", "sid", "started", "task",
    )  # fmt: skip

    def __init__(self, sid: int, headers: List[Tuple[bytes, bytes]]) -> None:
        self.sid = sid
        self.headers = headers
        self.data = bytearray()
        self.deferred = 0  # flow-controlled bytes received but not yet handed back to the peer
        self.task: Optional[asyncio.Task[Any]] = None
        # unsent DATA and the trailers that follow it (None: a streaming call has more to send)
        self.pending: Optional[Tuple[memoryview, Optional[List[Tuple[bytes, bytes]]]]] = None
        # streaming calls only: request messages not yet taken by the handler (None ends them), whether
        # response headers went out, and a waiter for the peer to read what was written
        self.inbox: Optional[asyncio.Queue[Optional[bytes]]] = None
        self.started = False
        self.drained: Optional[asyncio.Event] = None
        #: the loop's time when the peer last sent on this stream (stalled requests time out)
        self.heard = 0.0


def call_headers(stream: Stream) -> Tuple[str, str, str, str, str, Metadata]:
    """(method, path, content-type, grpc-encoding, grpc-timeout, metadata) of a call's request headers."""
    method = path = content_type = encoding = timeout = ""
    metadata: Metadata = []
    for raw_name, raw_value in stream.headers:
        name = raw_name.decode("latin-1")
        value = raw_value.decode("latin-1")
        if name[0] == ":":
            if name == ":path":
                path = value
            elif name == ":method":
                method = value
        elif name == "content-type":
            content_type = value
        elif name == "grpc-encoding":
            encoding = value
        elif name == "grpc-timeout":
            timeout = value
        elif name != "te":
            metadata.append((name, value))
    return method, path, content_type, encoding, timeout, metadata


def check_call(method: str, content_type: str) -> None:
    if method != "POST":
        raise GrpcError(StatusCode.UNIMPLEMENTED, "gRPC calls are POST requests, got %r" % method)
    if not content_type.startswith("application/grpc"):
        raise GrpcError(StatusCode.INVALID_ARGUMENT, "content-type must be application/grpc")


def timeout_of(timeout: str) -> Optional[float]:
    if not timeout:
        return None
    seconds = parse_timeout(timeout)
    if seconds is None:
        raise GrpcError(StatusCode.INVALID_ARGUMENT, "malformed grpc-timeout %r" % timeout)
    return seconds
