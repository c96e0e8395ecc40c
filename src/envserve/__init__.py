"""envserve: serve models over the Open Inference Protocol, each in its own Python environment if needed.

The public names are few and re-exported here. This module must stay importable inside a model's
environment (the worker imports ``envserve.runtimes`` and friends through it), so names from the server
layers are loaded lazily, on first attribute access.
"""

from __future__ import annotations

from typing import Any

from .errors import EnvserveError
from .protocol.v2 import InferenceRequest, InferenceResponse
from .runtimes.base import Runtime
from .settings import ModelSettings, ServerSettings

__version__ = "0.1.0"

__all__ = [
    "EnvserveError",
    "InferenceRequest",
    "InferenceResponse",
    "ModelSettings",
    "Runtime",
    "ServerSettings",
    "__version__",
    "serve",
]


def __getattr__(name: str) -> Any:
    if name == "serve":
        from .server.serve import serve

        return serve
    raise AttributeError("module 'envserve' has no attribute %r" % name)
