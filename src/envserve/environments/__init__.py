"""Per-model Python environments: where they come from, the cache that prepares them once, packing.

Server side only (never imported by workers): the worker runs *inside* the environments made here. The
names are re-exported lazily, so that a submodule (``tarball``, run as the extraction process) is imported
without the cache, the settings and numpy.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

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
    "Environment": ".cache",
    "EnvironmentCache": ".cache",
    "find_python": ".cache",
    "runtime_env": ".cache",
    "EnvironmentSource": ".source",
    "environment_source": ".source",
    "EnvironmentSpec": ".spec",
    "read_spec": ".spec",
    "default_cache_root": "envserve.settings.paths",
}

__getattr__ = lazy_exports(__name__, _LAZY, globals())
