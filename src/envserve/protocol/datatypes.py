"""Open Inference Protocol datatypes and their numpy equivalents (worker closure: stdlib + numpy, py3.6+)."""

from typing import Dict

import numpy as np

__all__ = ["DATATYPES", "datatype_of", "dtype_of"]

#: V2 datatype name -> numpy dtype. BYTES elements are Python ``bytes`` in an object array.
DATATYPES: Dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

_BY_DTYPE: Dict[np.dtype, str] = {v: k for k, v in DATATYPES.items() if k != "BYTES"}


def dtype_of(datatype: str) -> np.dtype:
    """The numpy dtype of a V2 datatype; KeyError for an unknown name."""
    return DATATYPES[datatype]


def datatype_of(dtype: np.dtype) -> str:
    """The V2 datatype for a numpy dtype; strings, bytes and objects map to BYTES."""
    name = _BY_DTYPE.get(np.dtype(dtype))
    if name is not None:
        return name
    if dtype.kind in "USO":
        return "BYTES"
    raise TypeError("numpy dtype %s has no Open Inference Protocol datatype" % dtype)
