"""Wire data models: Open Inference Protocol (V2) and, later, Seldon's v1 protocol.

Worker import closure: standard library and numpy only, Python 3.6+.
"""

from .datatypes import DATATYPES, datatype_of, dtype_of
from .v2 import (
    InferenceRequest,
    InferenceResponse,
    MetadataTensor,
    RequestInput,
    RequestOutput,
    ResponseOutput,
    parse_inference_request,
)

__all__ = [
    "DATATYPES",
    "InferenceRequest",
    "InferenceResponse",
    "MetadataTensor",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "datatype_of",
    "dtype_of",
    "parse_inference_request",
]
