"""Input and output codecs for single tensors: ``np``, ``str`` and ``base64`` (MLServer's names).

Worker import closure: standard library and numpy only, Python 3.6+.
"""

import base64
import binascii
from typing import Any, Dict, List, Optional

import numpy as np

from ..errors import InvalidRequest
from ..protocol.datatypes import datatype_of
from ..protocol.v2 import RequestInput, ResponseOutput

__all__ = [
    "decode_base64",
    "decode_numpy",
    "decode_str",
    "encode_array",
    "encode_base64",
    "encode_str",
]


def decode_numpy(inp: RequestInput) -> np.ndarray:
    return inp.data


def _flat_bytes(inp: RequestInput, codec: str) -> List[bytes]:
    if inp.datatype != "BYTES":
        raise InvalidRequest(
            "input %r has content type %r, which needs datatype BYTES, not %s"
            % (inp.name, codec, inp.datatype)
        )
    return inp.data.ravel().tolist()


def decode_str(inp: RequestInput) -> List[str]:
    try:
        return [item.decode("utf-8") for item in _flat_bytes(inp, "str")]
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            "input %r has content type 'str' but is not valid UTF-8: %s" % (inp.name, exc)
        ) from None


def decode_base64(inp: RequestInput) -> List[bytes]:
    try:
        return [base64.b64decode(item, validate=True) for item in _flat_bytes(inp, "base64")]
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(
            "input %r has content type 'base64' but is not valid base64: %s" % (inp.name, exc)
        ) from None


def encode_array(name: str, value: Any, parameters: Optional[Dict[str, Any]] = None) -> ResponseOutput:
    arr = np.asarray(value)
    if arr.dtype.kind == "U":
        return encode_str(name, arr)
    if arr.dtype.kind == "S":
        arr = arr.astype(object)
    datatype = datatype_of(arr.dtype)
    return ResponseOutput(name, list(arr.shape), datatype, arr, parameters)


def encode_str(name: str, value: Any) -> ResponseOutput:
    arr = np.asarray(value)
    flat = np.empty(arr.size, dtype=object)
    flat[:] = [s if isinstance(s, bytes) else str(s).encode("utf-8") for s in arr.ravel().tolist()]
    return ResponseOutput(name, list(arr.shape), "BYTES", flat.reshape(arr.shape), {"content_type": "str"})


def encode_base64(name: str, value: Any) -> ResponseOutput:
    arr = np.asarray(value, dtype=object)
    flat = np.empty(arr.size, dtype=object)
    flat[:] = [
        base64.b64encode(b if isinstance(b, bytes) else str(b).encode("utf-8")) for b in arr.ravel().tolist()
    ]
    return ResponseOutput(name, list(arr.shape), "BYTES", flat.reshape(arr.shape), {"content_type": "base64"})
