"""Environment specs: what to build, read from a requirements file, MLflow's python_env.yaml or conda.yaml.

A spec is normalised (Python ``X.Y``, sorted requirement lines) so that equivalent files hash the same;
the hash also covers the platform, so a cache shared between machines never mixes builds.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..errors import SpecError

__all__ = ["EnvironmentSpec", "read_spec"]

#: Bumped when the way envserve builds environments changes, so old builds are not reused.
BUILD_RECIPE = 1


@dataclass
class EnvironmentSpec:
    python: str  # "3.8"
    requirements: List[str] = field(default_factory=list)
    source: str = ""
    #: pip options that must reach the installer (``--index-url`` and friends from a requirements file)
    options: List[str] = field(default_factory=list)
    #: Resolve as the package index was at this moment (ISO 8601, UTC): packages uploaded later are
    #: ignored, so unpinned requirements get the versions of the model's training time.
    as_of: Optional[str] = None

    def digest(self) -> str:
        doc: Dict[str, Any] = {
            "python": self.python,
            "requirements": sorted(self.requirements),
            "options": self.options,
            "platform": "%s-%s" % (sys.platform, platform.machine()),
            "recipe": BUILD_RECIPE,
        }
        if self.as_of is not None:
            doc["as_of"] = self.as_of
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _python_version(value: Any, where: str) -> str:
    text = str(value).strip()
    m = re.match(r"^(?:python)?\s*[=<>~!]*\s*(3)\.(\d+)", text)
    if not m:
        raise SpecError(
            "%s: cannot read a Python version from %r (expected e.g. 3.8 or 3.10.4)" % (where, text)
        )
    return "%s.%s" % (m.group(1), m.group(2))


def _requirement_lines(path: str, seen: Optional[set] = None) -> Tuple[List[str], List[str]]:  # type: ignore[type-arg]
    """Requirement lines and installer options of a requirements file; ``-r`` includes are followed."""
    seen = seen if seen is not None else set()
    real = os.path.realpath(path)
    if real in seen:
        return [], []
    seen.add(real)
    try:
        with open(path, encoding="utf-8") as f:
            raw = f.read().splitlines()
    except OSError as exc:
        raise SpecError("cannot read requirements file %s: %s" % (path, exc.strerror)) from None
    requirements: List[str] = []
    options: List[str] = []
    for line in raw:
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            included = os.path.join(os.path.dirname(path), line.split(None, 1)[1])
            more, more_options = _requirement_lines(included, seen)
            requirements += more
            options += more_options
        elif line.startswith(("-c ", "--constraint ")):
            raise SpecError("%s: constraint files (-c) are not supported in environment specs" % path)
        elif line.startswith("-"):
            options.append(line)
        else:
            requirements.append(line)
    return requirements, options


def _yaml(path: str) -> Any:
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a dependency of the environments extra
        raise SpecError("reading %s needs PyYAML: pip install pyyaml" % path) from None
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except OSError as exc:
        raise SpecError("cannot read %s: %s" % (path, exc.strerror)) from None
    except yaml.YAMLError as exc:
        raise SpecError("%s is not valid YAML: %s" % (path, exc)) from None


def _from_python_env(path: str, default_python: str) -> EnvironmentSpec:
    doc = _yaml(path)
    if not isinstance(doc, dict):
        raise SpecError("%s must be a mapping with 'python' and 'dependencies'" % path)
    python = _python_version(doc.get("python", default_python), path)
    requirements: List[str] = []
    options: List[str] = []
    for item in doc.get("build_dependencies") or []:
        requirements.append(str(item))
    for item in doc.get("dependencies") or []:
        item = str(item)
        if item.startswith("-r "):
            more, more_options = _requirement_lines(os.path.join(os.path.dirname(path), item[3:].strip()))
            requirements += more
            options += more_options
        else:
            requirements.append(item)
    return EnvironmentSpec(python, _drop_build_tools(requirements), path, options)


# Conda packages that are the Python toolchain itself, not libraries: satisfied by the interpreter and uv.
_CONDA_TOOLCHAIN = {"python", "pip", "setuptools", "wheel"}


def _from_conda(path: str, default_python: str) -> EnvironmentSpec:
    doc = _yaml(path)
    if not isinstance(doc, dict):
        raise SpecError("%s must be a mapping with 'dependencies'" % path)
    python = default_python
    requirements: List[str] = []
    conda_only: List[str] = []
    for item in doc.get("dependencies") or []:
        if isinstance(item, dict) and "pip" in item:
            requirements += [str(r) for r in item["pip"] or []]
            continue
        name = re.split(r"[=<>!~ ]", str(item).strip(), maxsplit=1)[0].split("::")[-1]
        if name == "python":
            python = _python_version(str(item)[len("python") :].lstrip("="), path)
        elif name not in _CONDA_TOOLCHAIN:
            conda_only.append(str(item))
    if conda_only:
        raise SpecError(
            "%s needs conda packages that envserve cannot install from PyPI: %s; move them to the 'pip:' "
            "section (most have PyPI equivalents) or serve a conda-pack tarball (environment_tarball)"
            % (path, ", ".join(conda_only))
        )
    return EnvironmentSpec(python, _drop_build_tools(requirements), path)


def _drop_build_tools(requirements: List[str]) -> List[str]:
    return [
        r
        for r in requirements
        if re.split(r"[=<>!~ \[;]", r, maxsplit=1)[0].lower() not in ("pip", "setuptools", "wheel")
    ]


def read_spec(path: str, default_python: Optional[str] = None) -> EnvironmentSpec:
    """Read ``path`` as python_env.yaml, conda.yaml/environment.yaml or a requirements file."""
    default = default_python or "%d.%d" % sys.version_info[:2]
    base = os.path.basename(path)
    if not os.path.isfile(path):
        raise SpecError("environment spec %s does not exist" % path)
    if base == "python_env.yaml":
        return _from_python_env(path, default)
    if base.endswith((".yaml", ".yml")):
        with open(path, encoding="utf-8") as f:
            doc_head = f.read(4096)
        if re.search(r"^python\s*:", doc_head, re.M) and not re.search(
            r"^dependencies\s*:\s*\n\s*-\s*python", doc_head, re.M
        ):
            return _from_python_env(path, default)
        return _from_conda(path, default)
    requirements, options = _requirement_lines(path)
    python = default
    # an MLflow model folder keeps its Python version next to requirements.txt
    sibling = os.path.join(os.path.dirname(path), "python_env.yaml")
    if os.path.isfile(sibling):
        python = _from_python_env(sibling, default).python
    return EnvironmentSpec(python, requirements, path, options)
