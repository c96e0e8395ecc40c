"""Open Inference Protocol datatypes, their numpy equivalents, and the bound on what a shape may declare
(worker closure: stdlib + numpy, py3.6+)."""

from typing import Dict, Sequence

import numpy as np

from ..errors import ShapeMismatch

__all__ = ["DATATYPES", "MAX_ELEMENTS", "check_shape_size", "datatype_of", "dtype_of"]

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


#: Most elements a shape may declare (counting zero-sized dimensions as 1): far beyond any request the
#: body limit allows, and well inside what numpy can describe without overflowing.
MAX_ELEMENTS = 2**40


def check_shape_size(shape: Sequence[int], where: str) -> None:
    """Refuse shapes numpy could not even describe (zero dimensions do not make huge ones harmless)."""
    size = 1
    for dim in shape:
        size *= max(dim, 1)
        if size > MAX_ELEMENTS:
            raise ShapeMismatch(
                "%s.shape %r declares more than %d elements" % (where, list(shape), MAX_ELEMENTS)
            )
