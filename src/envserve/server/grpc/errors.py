"""The gRPC edge's one error table: envserve errors to gRPC status codes (anything else: INTERNAL)."""

from __future__ import annotations

from typing import List, Tuple, Type

from ...errors import (
    EnvserveError,
    InferenceError,
    InferenceTimeout,
    InvalidRequest,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    PayloadTooLarge,
    SettingsError,
    WorkerUnavailable,
)
from .wire import StatusCode

__all__ = ["code_for"]

# Most specific first; the first isinstance match wins.
STATUS_CODES: List[Tuple[Type[EnvserveError], int]] = [
    (InvalidRequest, StatusCode.INVALID_ARGUMENT),
    (ModelNotFound, StatusCode.NOT_FOUND),
    (PayloadTooLarge, StatusCode.RESOURCE_EXHAUSTED),
    (InferenceError, StatusCode.INTERNAL),
    (ModelLoadError, StatusCode.INTERNAL),
    (SettingsError, StatusCode.INTERNAL),
    (ModelNotReady, StatusCode.UNAVAILABLE),
    (WorkerUnavailable, StatusCode.UNAVAILABLE),
    (Overloaded, StatusCode.UNAVAILABLE),
    (InferenceTimeout, StatusCode.DEADLINE_EXCEEDED),
]


def code_for(exc: BaseException) -> int:
    for cls, code in STATUS_CODES:
        if isinstance(exc, cls):
            return code
    return StatusCode.INTERNAL
