"""The framing between the server and a worker process, for both sides (worker closure: stdlib only).

A frame is ``<u32 header length><u64 body length><header><body>``: the header a small JSON object, the
body raw bytes (tensors, see :mod:`.ipc`). :class:`FrameReader` is the one parser: the worker feeds it
from a blocking socket, the server from an asyncio protocol, each with its own JSON decoder.
"""

import json
import struct
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

__all__ = ["PREFIX", "FrameReader", "encode_frame", "json_default"]

PREFIX = struct.Struct("<IQ")


def json_default(obj: Any) -> Any:
    """JSON for what a header may hold besides plain values: bytes, numpy arrays and scalars (their
    ``tolist()`` gives Python values), anything else as text."""
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    tolist = getattr(obj, "tolist", None)
    if tolist is not None:
        return tolist()
    return str(obj)


def _dumps(header: Dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":"), default=json_default).encode("utf-8")


def encode_frame(
    header: Dict[str, Any], buffers: Sequence[Any] = (), dumps: Callable[[Dict[str, Any]], bytes] = _dumps
) -> List[Any]:
    """The frame as a list of bytes-like pieces (write them in order; no concatenation needed).
    ``dumps`` serialises the header: the standard library's json here (the worker side has nothing
    else); the server passes a faster one (orjson) producing the same JSON."""
    head = dumps(header)
    body_len = sum(memoryview(b).nbytes for b in buffers)
    return [PREFIX.pack(len(head), body_len), head, *buffers]


def _loads(raw: bytes) -> Any:
    return json.loads(raw.decode("utf-8"))


class FrameReader:
    """Collects bytes as they arrive and yields complete frames as ``(header dict, body bytes)``."""

    def __init__(self, loads: Callable[[bytes], Any] = _loads) -> None:
        self.buffer = bytearray()
        self.loads = loads

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def frames(self) -> Iterator[Tuple[Dict[str, Any], bytes]]:
        """Every complete frame in the buffer; ValueError when a header is not JSON (a broken peer)."""
        buf = self.buffer
        size = PREFIX.size
        while len(buf) >= size:
            head_len, body_len = PREFIX.unpack_from(buf)
            end = size + head_len + body_len
            if len(buf) < end:
                return
            header = self.loads(bytes(buf[size : size + head_len]))
            body = bytes(buf[size + head_len : end])
            del buf[:end]
            yield header, body
