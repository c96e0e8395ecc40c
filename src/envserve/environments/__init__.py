"""Per-model Python environments: where they come from, the cache that prepares them once, packing.

Server side only (never imported by workers): the worker runs *inside* the environments made here.
"""

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
