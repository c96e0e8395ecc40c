"""``PandasCodec``: a request as a DataFrame, one column per input (pandas only when the environment has
it; without pandas the codec exists and says so when used)."""

import json
from typing import Any, List, Optional

import numpy as np

from ..types import (
    Datatype,
    InferenceRequest,
    InferenceResponse,
    Parameters,
    RequestInput,
    ResponseOutput,
    TensorData,
)
from .base import RequestCodec, register_request_codec
from .errors import CodecError
from .numpy import to_datatype, to_dtype
from .utils import get_decoded_or_raw, inject_batch_dimension

try:
    import pandas as pd
except ImportError:  # pragma: no cover - environments without pandas
    pd = None

__all__ = ["PandasCodec"]


def _pandas() -> Any:
    if pd is None:
        raise CodecError("the pandas codec needs pandas, which this model's environment does not have")
    return pd


def _to_series(item: Any) -> Any:
    pandas = _pandas()
    params = item.parameters
    if params is not None and params.content_type == PandasCodec.JsonContentType:
        return pandas.Series([json.loads(v) for v in item.data])
    payload = get_decoded_or_raw(item)
    if str(getattr(item.datatype, "value", item.datatype)) == "BYTES":
        values = list(payload)
        if params is not None and params.content_type == "str":
            values = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
        return pandas.Series(values)
    array = getattr(item.data, "_array", None)
    if isinstance(payload, np.ndarray):
        array = payload
    if array is None:
        array = np.array(list(item.data), dtype=to_dtype(item))
    return pandas.Series(
        array.reshape(item.shape[0], -1)[:, 0] if array.ndim > 1 else array, dtype=to_dtype(item)
    )


def _series_datatype(series: Any) -> Datatype:
    """pandas' own dtypes too: strings (pandas 3's default ``str``), categories -> BYTES; nullable
    numbers by the numpy dtype they convert to."""
    dtype = series.dtype
    if isinstance(dtype, np.dtype):
        return to_datatype(dtype)
    if getattr(dtype, "kind", "O") in "OSU":
        return Datatype.BYTES
    return to_datatype(series.to_numpy().dtype)


def _to_output(series: Any, use_bytes: bool = True) -> ResponseOutput:
    datatype = _series_datatype(series)
    content_type: Optional[str] = None
    if datatype == Datatype.BYTES:
        values = series.tolist()
        if all(isinstance(v, (str, bytes)) for v in values):
            data: Any = TensorData(
                [v.encode("utf-8") if isinstance(v, str) and use_bytes else v for v in values]
            )
            content_type = "str"
        else:
            data = TensorData([json.dumps(v).encode("utf-8") if use_bytes else json.dumps(v) for v in values])
            content_type = PandasCodec.JsonContentType
    else:
        data = TensorData.of_array(series.to_numpy())
    return ResponseOutput(
        name=str(series.name),
        shape=inject_batch_dimension(list(series.shape)),
        data=data,
        datatype=datatype,
        parameters=Parameters(content_type=content_type) if content_type else None,
    )


@register_request_codec
class PandasCodec(RequestCodec):
    ContentType = "pd"
    JsonContentType = "pd_json"
    TypeHint = pd.DataFrame if pd is not None else None

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        return pd is not None and isinstance(payload, pd.DataFrame)

    @classmethod
    def encode_outputs(cls, payload: Any, use_bytes: bool = True) -> List[ResponseOutput]:
        return [_to_output(payload[column], use_bytes) for column in payload]

    @classmethod
    def encode_response(
        cls,
        model_name: str,
        payload: Any,
        model_version: Optional[str] = None,
        use_bytes: bool = True,
        **kwargs: Any,
    ) -> InferenceResponse:
        return InferenceResponse(
            model_name=model_name,
            model_version=model_version,
            parameters=Parameters(content_type=cls.ContentType),
            outputs=cls.encode_outputs(payload, use_bytes),
        )

    @classmethod
    def decode_response(cls, response: InferenceResponse) -> Any:
        return _pandas().DataFrame({o.name: _to_series(o) for o in response.outputs})

    @classmethod
    def encode_request(cls, payload: Any, use_bytes: bool = True, **kwargs: Any) -> InferenceRequest:
        return InferenceRequest(
            parameters=Parameters(content_type=cls.ContentType),
            inputs=[
                RequestInput(
                    name=o.name, datatype=o.datatype, shape=o.shape, data=o.data, parameters=o.parameters
                )
                for o in cls.encode_outputs(payload, use_bytes)
            ],
        )

    @classmethod
    def decode_request(cls, request: InferenceRequest) -> Any:
        return _pandas().DataFrame({i.name: _to_series(i) for i in request.inputs})
