"""The ``pd`` request codec: several inputs become the columns of one DataFrame, and back.

pandas is imported on first use, so environments without it can still use the other codecs.
Worker import closure: standard library, numpy and (lazily) pandas, Python 3.6+.
"""

from typing import Any, Dict, List, Optional

import numpy as np

from ..errors import InvalidRequest
from ..protocol.v2 import InferenceRequest, RequestInput, ResponseOutput
from .tensor import decode_base64, decode_str, encode_array, encode_str

__all__ = ["decode_dataframe", "encode_dataframe"]


def _column(inp: RequestInput, content_type: Optional[str]) -> Any:
    if inp.datatype == "BYTES":
        values: List[Any] = decode_base64(inp) if content_type == "base64" else _maybe_str(inp)
        return values
    data = inp.data
    if data.ndim == 0:
        return data.reshape(1)
    if data.ndim == 1 or (data.ndim == 2 and data.shape[1] == 1):
        return data.reshape(-1)
    # A column of vectors: one row per first-dimension entry.
    return list(data.reshape(data.shape[0], -1))


def _maybe_str(inp: RequestInput) -> List[Any]:
    try:
        return decode_str(inp)
    except InvalidRequest:
        return inp.data.ravel().tolist()


def decode_dataframe(request: InferenceRequest, content_types: Dict[str, Optional[str]]) -> Any:
    import pandas as pd

    columns: Dict[str, Any] = {}
    length = None
    for inp in request.inputs:
        column = _column(inp, content_types.get(inp.name))
        if length is not None and len(column) != length:
            raise InvalidRequest(
                "content type 'pd' needs inputs of equal length; input %r has %d rows, the others %d"
                % (inp.name, len(column), length)
            )
        length = len(column)
        columns[inp.name] = column
    return pd.DataFrame(columns)


def encode_dataframe(frame: Any) -> List[ResponseOutput]:
    outputs = []
    for name in frame.columns:
        series = frame[name]
        if series.dtype.kind in "OSU" or str(series.dtype) in ("string", "str"):
            out = encode_str(str(name), np.asarray(series.astype(str)).reshape(-1, 1))
        else:
            out = encode_array(str(name), series.to_numpy().reshape(-1, 1))
        outputs.append(out)
    return outputs
