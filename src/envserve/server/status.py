"""The one table from envserve errors to HTTP status codes: what the REST edge answers, and the ``status``
label every protocol's calls carry in the metrics (gRPC's included, so one query covers them all)."""

from __future__ import annotations

import asyncio
from typing import List, Optional, Tuple, Type

from ..errors import (
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

__all__ = ["CLIENT_CLOSED", "http_status", "status_label"]

#: Most specific first; the first isinstance match wins. Anything else is 500.
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

#: The status of a call whose client left before it was answered (nginx's "client closed request").
CLIENT_CLOSED = 499


def http_status(exc: BaseException) -> int:
    if isinstance(exc, asyncio.CancelledError):
        return CLIENT_CLOSED
    for cls, status in STATUS_CODES:
        if isinstance(exc, cls):
            return status
    return 500


def status_label(outcome: Optional[BaseException]) -> str:
    """The ``status`` label of a call in the metrics: its HTTP status, whatever protocol it came in."""
    return "200" if outcome is None else str(http_status(outcome))
