"""The REST edge's one error table: an error becomes an HTTP status (:mod:`..status`) and a body in the
shape the call's protocol uses for errors.

- Open Inference Protocol V2, KServe V1 and envserve's own API: ``{"error": "..."}``;
- MLflow's scoring protocol: ``{"error_code", "message"}`` as MLflow's server writes them, with envserve's
  ``error`` beside them;
- Seldon v1: Seldon's ``{"status": {"code", "info", "reason", "status": "FAILURE"}}``.

Every 503 says ``Retry-After: 1``: the model is loading, its worker restarting, or its queue full.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

from ...protocol import seldon
from ..call import Protocol
from ..status import http_status
from .routing import JSON, Response, dumps

__all__ = ["error_response", "http_status"]

_RETRY: List[Tuple[bytes, bytes]] = JSON + [(b"retry-after", b"1")]

#: MLflow's error_code for our statuses
_MLFLOW_CODES = {
    400: "BAD_REQUEST",
    404: "RESOURCE_DOES_NOT_EXIST",
    413: "BAD_REQUEST",
    415: "BAD_REQUEST",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _mlflow(status: int, message: str) -> Dict[str, Any]:
    return {"error_code": _MLFLOW_CODES.get(status, "INTERNAL_ERROR"), "message": message, "error": message}


def _plain(status: int, message: str) -> Dict[str, Any]:
    return {"error": message}


_BODIES: Dict[Protocol, Callable[[int, str], Dict[str, Any]]] = {
    Protocol.MLFLOW: _mlflow,
    Protocol.SELDON: seldon.error_body,
}


def error_response(protocol: Protocol, status: int, message: str) -> Response:
    """The answer to a call of ``protocol`` that failed with ``status`` and ``message``."""
    body = _BODIES.get(protocol, _plain)(status, message)
    return Response(status, dumps(body), _RETRY if status == 503 else JSON)
