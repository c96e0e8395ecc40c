"""The one table from envserve errors to HTTP status codes."""

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
    UnsupportedMediaType,
    WorkerUnavailable,
)

__all__ = ["status_for", "status_label"]

# Most specific first; the first isinstance match wins.
STATUS_CODES: List[Tuple[Type[EnvserveError], int]] = [
    (UnsupportedMediaType, 415),
    (InvalidRequest, 400),
    (ModelNotFound, 404),
    (PayloadTooLarge, 413),
    (InferenceError, 500),
    (ModelLoadError, 500),
    (SettingsError, 500),
    (ModelNotReady, 503),
    (WorkerUnavailable, 503),
    (Overloaded, 503),
    (InferenceTimeout, 504),
]


def status_label(outcome: Optional[BaseException]) -> str:
    """The ``status`` label of a REST request in the metrics."""
    if outcome is None:
        return "200"
    return str(status_for(outcome) if isinstance(outcome, EnvserveError) else 500)


def status_for(exc: EnvserveError) -> int:
    for cls, status in STATUS_CODES:
        if isinstance(exc, cls):
            return status
    return 500
