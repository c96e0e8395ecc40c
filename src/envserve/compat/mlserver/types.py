"""MLServer's V2 types (``mlserver.types``), without pydantic. Worker closure, Python 3.6+."""

from enum import Enum
from typing import Any, Dict, List, Optional

from ._base import BaseModel

__all__ = [
    "Datatype",
    "InferenceErrorResponse",
    "InferenceRequest",
    "InferenceResponse",
    "MetadataModelResponse",
    "MetadataServerResponse",
    "MetadataTensor",
    "Parameters",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "TensorData",
]


class Datatype(str, Enum):
    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"


class TensorData(list):  # type: ignore[type-arg]
    """A tensor's data as the client sent it (MLServer's ``TensorData`` root model): a list, also reachable
    as ``.root`` (pydantic 2) and ``.__root__`` (pydantic 1). ``_array`` keeps the numpy array envserve
    decoded, so NumPy decoding does not go through Python lists."""

    _array: Any = None

    @property
    def root(self) -> List[Any]:
        return self

    @property
    def __root__(self) -> List[Any]:
        return self

    @classmethod
    def of_array(cls, array: Any) -> "TensorData":
        data = cls(array.ravel().tolist())
        data._array = array
        return data


def _tensor_data(value: Any) -> TensorData:
    if isinstance(value, TensorData):
        return value
    if hasattr(value, "tolist") and hasattr(value, "ravel"):
        return TensorData.of_array(value)
    return TensorData(value if isinstance(value, list) else [value])


class Parameters(BaseModel):
    _fields = {"content_type": (None, None, False), "headers": (None, None, False)}
    _extra_allowed = True
    content_type: Optional[str]
    headers: Optional[Dict[str, Any]]

    def __getitem__(self, key: str) -> Any:  # envserve's parameters were a dict; keep both spellings
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


class RequestOutput(BaseModel):
    _fields = {"name": (..., None, False), "parameters": (None, Parameters, False)}
    name: str
    parameters: Optional[Parameters]


class MetadataTensor(BaseModel):
    _fields = {
        "name": (..., None, False),
        "datatype": (..., Datatype, False),
        "shape": (..., None, False),
        "parameters": (None, Parameters, False),
    }
    name: str
    datatype: Datatype
    shape: List[int]
    parameters: Optional[Parameters]


class RequestInput(BaseModel):
    _fields = {
        "name": (..., None, False),
        "shape": (..., None, False),
        "datatype": (..., Datatype, False),
        "parameters": (None, Parameters, False),
        "data": (..., _tensor_data, False),
    }
    name: str
    shape: List[int]
    datatype: Datatype
    parameters: Optional[Parameters]
    data: TensorData


class ResponseOutput(RequestInput):
    pass


class InferenceRequest(BaseModel):
    _fields = {
        "id": (None, None, False),
        "parameters": (None, Parameters, False),
        "inputs": (..., RequestInput, True),
        "outputs": (None, RequestOutput, True),
    }
    id: Optional[str]
    parameters: Optional[Parameters]
    inputs: List[RequestInput]
    outputs: Optional[List[RequestOutput]]


class InferenceResponse(BaseModel):
    _fields = {
        "model_name": (..., None, False),
        "model_version": (None, None, False),
        "id": (None, None, False),
        "parameters": (None, Parameters, False),
        "outputs": (..., ResponseOutput, True),
    }
    model_name: str
    model_version: Optional[str]
    id: Optional[str]
    parameters: Optional[Parameters]
    outputs: List[ResponseOutput]


class MetadataModelResponse(BaseModel):
    _fields = {
        "name": (..., None, False),
        "versions": (None, None, False),
        "platform": ("", None, False),
        "inputs": (None, MetadataTensor, True),
        "outputs": (None, MetadataTensor, True),
        "parameters": (None, Parameters, False),
    }


class MetadataServerResponse(BaseModel):
    _fields = {"name": (..., None, False), "version": (..., None, False), "extensions": ([], None, False)}


class InferenceErrorResponse(BaseModel):
    _fields = {"error": (None, None, False)}
