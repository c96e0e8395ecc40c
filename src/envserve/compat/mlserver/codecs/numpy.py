"""``NumpyCodec`` / ``NumpyRequestCodec``."""

from typing import Any

import numpy as np

from ..types import Datatype, Parameters, ResponseOutput
from .base import InputCodec, register_input_codec, register_request_codec
from .utils import SingleInputRequestCodec, inject_batch_dimension

__all__ = ["NumpyCodec", "NumpyRequestCodec", "to_datatype", "to_dtype"]

_TO_NUMPY = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items()}


def to_datatype(dtype: Any) -> Datatype:
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return Datatype.BYTES
    return Datatype(_FROM_NUMPY[str(dtype)])


def to_dtype(item: Any) -> Any:
    datatype = str(getattr(item.datatype, "value", item.datatype))
    if datatype == "BYTES":
        return np.dtype(object)
    return np.dtype(_TO_NUMPY[datatype])


def _to_ndarray(item: Any) -> np.ndarray:
    array = getattr(item.data, "_array", None)
    dtype = to_dtype(item)
    if array is None:
        data = list(item.data)
        if dtype == np.dtype(object):
            if data and all(isinstance(x, str) for x in data):
                array = np.array(data, dtype=str)
            else:
                array = np.array(data, dtype=object)
        else:
            array = np.array(data, dtype=dtype)
    elif dtype != np.dtype(object) and array.dtype != dtype:
        array = array.astype(dtype)
    return array.reshape(item.shape) if array.size == int(np.prod(item.shape)) else array


def _encode_data(array: np.ndarray, datatype: Datatype) -> Any:
    from ..types import TensorData

    if datatype == Datatype.BYTES:
        values = [v.encode("utf-8") if isinstance(v, str) else v for v in array.ravel().tolist()]
        return TensorData(values)
    return TensorData.of_array(np.ascontiguousarray(array))


@register_input_codec
class NumpyCodec(InputCodec):
    ContentType = "np"
    TypeHint = np.ndarray

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        return isinstance(payload, np.ndarray)

    @classmethod
    def encode_output(cls, name: str, payload: Any, **kwargs: Any) -> ResponseOutput:
        datatype = to_datatype(payload.dtype)
        return ResponseOutput(
            name=name,
            datatype=datatype,
            shape=inject_batch_dimension(list(payload.shape)),
            data=_encode_data(payload, datatype),
            parameters=Parameters(content_type=cls.ContentType),
        )

    @classmethod
    def decode_input(cls, request_input: Any) -> Any:
        return _to_ndarray(request_input)


@register_request_codec
class NumpyRequestCodec(SingleInputRequestCodec):
    InputCodec = NumpyCodec
    ContentType = NumpyCodec.ContentType
    TypeHint = np.ndarray
