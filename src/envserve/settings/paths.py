"""Where envserve keeps things by default, and the variables that move them (read here, nowhere else).

- environment cache: ``ENVSERVE_ENV_CACHE``, else ``$XDG_CACHE_HOME/envserve/environments``;
- platform file (default images): ``ENVSERVE_PLATFORM``, else ``$XDG_CONFIG_HOME/envserve/platform.json``;
- an interpreter for Python X.Y, before pyenv and PATH are searched: ``ENVSERVE_PYTHON_X_Y``.
"""

import os
from typing import Mapping, Optional

__all__ = ["default_cache_root", "default_platform_path", "python_override"]


def _env(environ: Optional[Mapping[str, str]]) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def default_cache_root(environ: Optional[Mapping[str, str]] = None) -> str:
    env = _env(environ)
    return env.get("ENVSERVE_ENV_CACHE") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "envserve", "environments"
    )


def default_platform_path(environ: Optional[Mapping[str, str]] = None) -> str:
    env = _env(environ)
    return env.get("ENVSERVE_PLATFORM") or os.path.join(
        env.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "envserve", "platform.json"
    )


def python_override(version: str, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The interpreter ``ENVSERVE_PYTHON_3_8`` (for ``version`` "3.8") names, if any."""
    return _env(environ).get("ENVSERVE_PYTHON_" + version.replace(".", "_")) or None
