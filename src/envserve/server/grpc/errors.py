"""The one table from envserve errors to gRPC status codes."""

from __future__ import annotations

from typing import List, Tuple, Type

import grpc

from ...errors import (
    EnvserveError,
    InferenceError,
    InferenceTimeout,
    InvalidRequest,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    PayloadTooLarge,
    SettingsError,
    WorkerUnavailable,
)

__all__ = ["code_for"]

# Most specific first; the first isinstance match wins.
STATUS_CODES: List[Tuple[Type[EnvserveError], grpc.StatusCode]] = [
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (PayloadTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (InferenceError, grpc.StatusCode.INTERNAL),
    (ModelLoadError, grpc.StatusCode.INTERNAL),
    (SettingsError, grpc.StatusCode.INTERNAL),
    (ModelNotReady, grpc.StatusCode.UNAVAILABLE),
    (WorkerUnavailable, grpc.StatusCode.UNAVAILABLE),
    (InferenceTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
]


def code_for(exc: BaseException) -> grpc.StatusCode:
    for cls, code in STATUS_CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL
