"""Finding a Python interpreter of a requested ``X.Y`` version on this machine.

Looked for, in order: ``ENVSERVE_PYTHON_X_Y`` (an explicit path), pyenv installations
(``$PYENV_ROOT/versions/X.Y.*``), ``pythonX.Y`` on PATH, interpreters managed by uv
(``uv python find``). Nothing is downloaded.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from typing import Dict, List, Mapping, Optional

from ..errors import EnvironmentSetupError, SpecError
from ..settings.paths import python_override

__all__ = ["find_interpreter", "interpreter_version", "known_interpreters", "probe_python"]


def probe_python(python: str, env: Optional[Mapping[str, str]] = None) -> str:
    """``X.Y.Z`` of an interpreter; EnvironmentSetupError with the interpreter's own error when it cannot
    start."""
    try:
        proc = subprocess.run(
            [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
            timeout=60,
            env=None if env is None else dict(env),
        )
    except OSError as exc:
        target = os.path.realpath(python)
        raise EnvironmentSetupError(
            "the environment's Python %s cannot start: %s%s"
            % (python, exc.strerror or exc, "" if target == python else " (it links to %s)" % target)
        ) from None
    except subprocess.TimeoutExpired:
        raise EnvironmentSetupError(
            "the environment's Python %s did not start within 60 s" % python
        ) from None
    if proc.returncode != 0:
        raise EnvironmentSetupError(
            "the environment's Python %s cannot start (exit code %d): %s"
            % (python, proc.returncode, (proc.stderr or proc.stdout).strip()[-2000:])
        )
    return proc.stdout.strip()


def interpreter_version(python: str) -> Optional[str]:
    """``X.Y.Z`` of an interpreter, or None when it cannot start."""
    try:
        return probe_python(python)
    except EnvironmentSetupError:
        return None


def _pyenv_candidates(version: str) -> List[str]:
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = []
    for prefix in sorted(
        glob.glob(os.path.join(root, "versions", version + ".*")), key=_natural, reverse=True
    ):
        exe = os.path.join(prefix, "bin", "python" + version)
        if os.path.isfile(exe):
            found.append(exe)
    return found


def _natural(text: str) -> List[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def _uv_candidate(version: str, uv: Optional[str]) -> Optional[str]:
    if uv is None:
        return None
    try:
        out = subprocess.run(
            [uv, "python", "find", "--no-python-downloads", version],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = out.stdout.strip()
    return path if out.returncode == 0 and path else None


def find_interpreter(version: str, uv: Optional[str] = None) -> str:
    """Path of a working interpreter for ``version`` ("3.8"); SpecError listing what was found if none."""
    candidates: List[str] = []
    explicit = python_override(version)
    if explicit:
        candidates.append(explicit)
    candidates += _pyenv_candidates(version)
    on_path = shutil.which("python" + version)
    if on_path:
        candidates.append(on_path)
    from_uv = _uv_candidate(version, uv)
    if from_uv:
        candidates.append(from_uv)
    for candidate in candidates:
        full = interpreter_version(candidate)
        if full is not None and full.startswith(version + "."):
            return candidate
    found = known_interpreters(uv)
    listing = ", ".join("%s (%s)" % (v, p) for v, p in sorted(found.items())) or "none"
    raise SpecError(
        "no Python %s interpreter on this machine; found: %s. Install one (e.g. pyenv install %s) or set "
        "ENVSERVE_PYTHON_%s to its path" % (version, listing, version, version.replace(".", "_"))
    )


def known_interpreters(uv: Optional[str] = None) -> Dict[str, str]:
    """``X.Y`` -> path of every interpreter found the same ways as :func:`find_interpreter`."""
    found: Dict[str, str] = {}
    for minor in range(6, 20):
        version = "3.%d" % minor
        paths = _pyenv_candidates(version)
        which = shutil.which("python" + version)
        if which:
            paths.append(which)
        if paths:
            found[version] = paths[0]
    return found
