"""Raw tensor bytes, shared by the REST binary tensor extension and the worker IPC.

Numeric tensors are their elements in row-major order, little-endian (native on every platform envserve
runs on); BYTES tensors are each element as ``<u32 little-endian length><bytes>``. Decoding checks the
byte count against the shape before anything is built, so a declared shape never allocates by itself.

Worker import closure: standard library and numpy, Python 3.6+.
"""

import struct
from typing import Any, List

import numpy as np

from ..errors import InvalidRequest, ShapeMismatch
from .datatypes import DATATYPES, check_shape_size

__all__ = ["tensor_bytes", "tensor_from_bytes"]

_LEN = struct.Struct("<I")


def tensor_bytes(data: np.ndarray, datatype: str) -> Any:
    """The tensor's bytes (a bytes-like object; numeric tensors are not copied when contiguous)."""
    if datatype == "BYTES":
        parts = []
        for item in data.ravel().tolist():
            raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(_LEN.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    arr = np.ascontiguousarray(data, dtype=DATATYPES[datatype])
    return arr.data.cast("B") if arr.size else b""


def _count(shape: List[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def tensor_from_bytes(
    buf: Any,
    offset: int,
    nbytes: int,
    shape: List[int],
    datatype: str,
    where: str = "tensor",
    loose_bytes: bool = False,
) -> np.ndarray:
    """The tensor stored in ``buf[offset:offset + nbytes]``; InvalidRequest when sizes disagree -- except,
    with ``loose_bytes``, a BYTES tensor whose shape does not count its elements (as MLServer's clients
    shape strings: ``protocol.v2.shaped``), whose elements are then returned flat."""
    view = memoryview(buf)
    if offset < 0 or nbytes < 0 or offset + nbytes > view.nbytes:
        raise InvalidRequest(
            "%s: binary_data_size %d is more than the %d bytes left in the body"
            % (where, nbytes, max(view.nbytes - offset, 0))
        )
    check_shape_size(shape, where)
    expected = _count(shape)
    if datatype == "BYTES":
        items = []
        pos, end = offset, offset + nbytes
        while pos < end:
            if pos + 4 > end:
                raise InvalidRequest("%s: truncated BYTES element length" % where)
            (n,) = _LEN.unpack_from(view, pos)
            pos += 4
            if pos + n > end:
                raise InvalidRequest("%s: BYTES element of %d bytes runs past binary_data_size" % (where, n))
            items.append(bytes(view[pos : pos + n]))
            pos += n
            if len(items) > expected and not loose_bytes:
                break
        if len(items) != expected and loose_bytes:
            flat = np.empty(len(items), dtype=object)
            flat[:] = items
            return flat
        if len(items) != expected:
            raise ShapeMismatch(
                "%s: shape %r needs %d elements but the binary data has %s"
                % (where, shape, expected, "more" if len(items) > expected else len(items))
            )
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
        return arr.reshape(shape)
    try:
        dtype = DATATYPES[datatype]
    except KeyError:
        raise InvalidRequest(
            "%s: %r is not an Open Inference Protocol datatype" % (where, datatype)
        ) from None
    if nbytes != expected * dtype.itemsize:
        raise ShapeMismatch(
            "%s: shape %r of %s needs %d bytes but binary_data_size is %d"
            % (where, shape, datatype, expected * dtype.itemsize, nbytes)
        )
    return np.frombuffer(buf, dtype=dtype, count=expected, offset=offset).reshape(shape)
