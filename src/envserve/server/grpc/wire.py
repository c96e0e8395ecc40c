"""gRPC over HTTP/2 as the wire carries it, for the server: status codes and errors, the 5-byte message
prefix, gzip-compressed requests, ``grpc-timeout``, and the status trailers (``grpc-message``
percent-encoded and capped at :data:`MAX_STATUS_MESSAGE` characters). No state: :mod:`.connection` drives
the HTTP/2 connection and uses these.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from typing import AsyncGenerator, AsyncIterator, Awaitable, Callable, List, Optional, Tuple, Union
from urllib.parse import quote

__all__ = [
    "MAX_STATUS_MESSAGE",
    "OK_TRAILERS",
    "RESPONSE_HEADERS",
    "GrpcError",
    "Handler",
    "Metadata",
    "StatusCode",
    "StreamHandler",
    "framed",
    "parse_timeout",
    "read_message",
    "status_headers",
]

Metadata = List[Tuple[str, str]]
# no deadline; the transport enforces it), returns the response message's bytes (or those bytes and
# metadata to send as trailers before ``grpc-status``), and raises GrpcError for a non-OK status.
Handler = Callable[[bytes, Metadata, Optional[float]], Awaitable[Union[bytes, Tuple[bytes, Metadata]]]]
# A bidirectional streaming handler gets the request messages as they arrive (the iterator ends when the
# client half-closes) and yields response messages; raising GrpcError ends the call with that status.
StreamHandler = Callable[[AsyncIterator[bytes], Metadata], AsyncGenerator[bytes, None]]


class StatusCode:
    """gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16

    NAMES = {
        0: "OK",
        1: "CANCELLED",
        2: "UNKNOWN",
        3: "INVALID_ARGUMENT",
        4: "DEADLINE_EXCEEDED",
        5: "NOT_FOUND",
        7: "PERMISSION_DENIED",
        8: "RESOURCE_EXHAUSTED",
        12: "UNIMPLEMENTED",
        13: "INTERNAL",
        14: "UNAVAILABLE",
        16: "UNAUTHENTICATED",
    }


class GrpcError(Exception):
    """A call's non-OK status; ``metadata`` goes out with it (in the trailers-only response)."""

    def __init__(self, code: int, message: str, metadata: Optional[Metadata] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.metadata = metadata or []


#: Characters of a status message sent in ``grpc-message`` (before percent-encoding); the rest is cut.
MAX_STATUS_MESSAGE = 1024
_STATUS_UNTOUCHED = " !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
RESPONSE_HEADERS = [
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
    (b"grpc-accept-encoding", b"identity,gzip"),
]
OK_TRAILERS = [(b"grpc-status", b"0")]


def parse_timeout(value: str) -> Optional[float]:
    """``grpc-timeout`` (at most 8 digits and a unit) in seconds; None when malformed."""
    if 2 <= len(value) <= 9 and value[:-1].isdigit() and value[-1] in _TIMEOUT_UNITS:
        return int(value[:-1]) * _TIMEOUT_UNITS[value[-1]]
    return None


def status_headers(code: int, message: str) -> List[Tuple[bytes, bytes]]:
    """``grpc-status`` and the percent-encoded, length-capped ``grpc-message``."""
    block = [(b"grpc-status", str(code).encode())]
    if message:
        if len(message) > MAX_STATUS_MESSAGE:
            message = message[: MAX_STATUS_MESSAGE - 3] + "..."
        block.append((b"grpc-message", quote(message, safe=_STATUS_UNTOUCHED).encode("ascii")))
    return block


def framed(message: bytes) -> bytes:
    """A message with its 5-byte prefix (not compressed)."""
    return struct.pack(">BI", 0, len(message)) + message


async def receive_message(data: bytearray, encoding: str, limit: int) -> bytes:
    """:func:`read_message`, with a compressed message inflated off the event loop (up to ``limit``
    bytes of work that would otherwise stall every other call and probe)."""
    if len(data) >= 5 and data[0]:
        return await asyncio.get_running_loop().run_in_executor(None, read_message, data, encoding, limit)
    return read_message(data, encoding, limit)


def read_message(data: bytearray, encoding: str, limit: int) -> bytes:
    """A unary call's request: exactly one length-prefixed (maybe gzipped) message of at most ``limit``
    bytes once decompressed."""
    if len(data) < 5:
        raise GrpcError(StatusCode.INVALID_ARGUMENT, "request has no gRPC message")
    compressed, length = struct.unpack_from(">BI", data)
    if length != len(data) - 5:
        raise GrpcError(
            StatusCode.INVALID_ARGUMENT,
            "unary call must carry exactly one message (length prefix %d, %d bytes sent)"
            % (length, len(data) - 5),
        )
    message = bytes(memoryview(data)[5:])
    if not compressed:
        return message
    if encoding != "gzip":
        raise GrpcError(
            StatusCode.UNIMPLEMENTED, "message compressed with %r; this server accepts gzip" % encoding
        )
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(message, limit + 1)
    except zlib.error as exc:
        raise GrpcError(StatusCode.INVALID_ARGUMENT, "cannot decompress the request: %s" % exc) from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise GrpcError(StatusCode.RESOURCE_EXHAUSTED, "decompressed request exceeds the server's limit")
    return out
