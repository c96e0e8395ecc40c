"""Building a virtual environment from an :class:`EnvironmentSpec` with uv (pip as the fallback)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import List, Optional

from ..errors import SpecError
from .interpreters import find_interpreter
from .spec import EnvironmentSpec

__all__ = ["RESOLVED_FILE", "build_environment", "find_uv"]

logger = logging.getLogger("envserve.environments")

#: The exact versions installed, written into every environment built from a spec (``uv pip freeze``).
RESOLVED_FILE = "envserve-resolved.txt"
#: The worker itself needs numpy inside the environment; added when the spec does not name it.
WORKER_REQUIREMENTS = ("numpy",)


def find_uv() -> Optional[str]:
    """The uv binary: the one installed with envserve (PyPI package ``uv``), else ``uv`` on PATH."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except Exception:
        return shutil.which("uv")


def _names(requirements: List[str]) -> set:  # type: ignore[type-arg]
    return {
        re.split(r"[=<>!~ \[;@]", r.strip(), maxsplit=1)[0].lower().replace("_", "-") for r in requirements
    }


def _run(argv: List[str], what: str, log_prefix: str) -> None:
    logger.info("%s: %s", log_prefix, " ".join(argv))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: List[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        lines.append(line)
        logger.info("%s: %s", log_prefix, line)  # progress, as the installer reports it
    if proc.wait() != 0:
        tail = "\n".join(lines[-25:]).strip()
        raise SpecError("%s failed (exit code %d):\n%s" % (what, proc.returncode, tail))


def _freeze(uv: str, env_python: str, path: str) -> None:
    proc = subprocess.run([uv, "pip", "freeze", "--python", env_python], capture_output=True, text=True)
    if proc.returncode == 0:
        with open(path, "w") as f:
            f.write(proc.stdout)


def build_environment(spec: EnvironmentSpec, target: str, label: str = "environment") -> str:
    """Create a venv at ``target`` (which must not exist) and install the spec; returns its python.

    On failure nothing is left at ``target``.
    """
    uv = find_uv()
    python = find_interpreter(spec.python, uv)
    requirements = list(spec.requirements)
    missing = [r for r in WORKER_REQUIREMENTS if r not in _names(requirements)]
    requirements += missing
    env_python = os.path.join(target, "bin", "python")
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("\n".join(spec.options + requirements) + "\n")
            req_file = f.name
        try:
            if uv is not None:
                _run([uv, "venv", "--quiet", "--python", python, target], "creating the venv", label)
                as_of = ["--exclude-newer", spec.as_of] if spec.as_of else []
                _run(
                    [uv, "pip", "install", "--python", env_python, *as_of, "-r", req_file],
                    "installing %s%s"
                    % (spec.source or "the requirements", " as of %s" % spec.as_of if spec.as_of else ""),
                    label,
                )
                _freeze(uv, env_python, os.path.join(target, RESOLVED_FILE))
            elif spec.as_of:
                raise SpecError("resolving as of %s needs uv (pip install uv)" % spec.as_of)
            else:
                _run([python, "-m", "venv", target], "creating the venv", label)
                _run(
                    [env_python, "-m", "pip", "install", "--disable-pip-version-check", "-r", req_file],
                    "installing %s" % (spec.source or "the requirements"),
                    label,
                )
        finally:
            os.unlink(req_file)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return env_python


def server_python_version() -> str:
    return "%d.%d" % sys.version_info[:2]
