"""Per-model Python environments: where they come from, the cache that prepares them once, packing.

Server side only (never imported by workers): the worker runs *inside* the environments made here. The
names are re-exported lazily, so that a submodule (``tarball``, run as the extraction process) is imported
without the cache, the settings and numpy.
"""

import importlib as _importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..settings.paths import default_cache_root
    from .cache import Environment, EnvironmentCache, find_python, runtime_env
    from .source import EnvironmentSource, environment_source
    from .spec import EnvironmentSpec, read_spec

__all__ = [
    "Environment",
    "EnvironmentCache",
    "EnvironmentSource",
    "EnvironmentSpec",
    "default_cache_root",
    "environment_source",
    "find_python",
    "read_spec",
    "runtime_env",
]

_LAZY = {
    "Environment": "envserve.environments.cache",
    "EnvironmentCache": "envserve.environments.cache",
    "find_python": "envserve.environments.cache",
    "runtime_env": "envserve.environments.cache",
    "EnvironmentSource": "envserve.environments.source",
    "environment_source": "envserve.environments.source",
    "EnvironmentSpec": "envserve.environments.spec",
    "read_spec": "envserve.environments.spec",
    "default_cache_root": "envserve.settings.paths",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value
