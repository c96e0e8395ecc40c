"""envserve: serve models over the Open Inference Protocol, each in its own Python environment if needed.

The public names are few and re-exported here, lazily: ``import envserve`` stays cheap (the CLI's
``--help`` is instant) and importable inside a model's environment, where the worker uses
``envserve.runtimes`` and friends without any server dependency.
"""

from __future__ import annotations

import importlib as _importlib
from typing import Any as _Any

from .errors import EnvserveError

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

_LAZY = {
    "InferenceRequest": "envserve.protocol.v2",
    "InferenceResponse": "envserve.protocol.v2",
    "ModelSettings": "envserve.settings",
    "Runtime": "envserve.runtimes.base",
    "ServerSettings": "envserve.settings",
    "serve": "envserve.server.serve",
}


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError("module 'envserve' has no attribute %r" % name)
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value
