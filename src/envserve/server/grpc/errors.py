"""The one table from envserve errors to gRPC status codes."""

from __future__ import annotations

from typing import List, Optional, Tuple, Type

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
from .transport import StatusCode

__all__ = ["code_for", "status_label"]

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


def status_label(outcome: Optional[BaseException]) -> str:
    """The ``status`` label of a gRPC call in the metrics."""
    return "OK" if outcome is None else StatusCode.NAMES[code_for(outcome)]


def code_for(exc: BaseException) -> int:
    for cls, code in STATUS_CODES:
        if isinstance(exc, cls):
            return code
    return StatusCode.INTERNAL
