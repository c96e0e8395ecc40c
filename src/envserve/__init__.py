"""envserve: serve models over the Open Inference Protocol, each in its own Python environment if needed.

The public names are few and re-exported here, lazily: ``import envserve`` stays cheap (the CLI's
``--help`` is instant) and importable inside a model's environment, where the worker uses
``envserve.runtimes`` and friends without any server dependency.
"""

import sys as _sys

from ._lazy import lazy_exports as _lazy_exports
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
    "ServerSettings": "envserve.settings.server",
    "serve": "envserve.server.serve",
}


if _sys.version_info < (3, 7):  # noqa: UP036 - Python 3.6 model environments: no module __getattr__
    from .protocol.v2 import InferenceRequest, InferenceResponse
    from .runtimes.base import Runtime
    from .settings.model import ModelSettings

__getattr__ = _lazy_exports(__name__, _LAZY, globals())
