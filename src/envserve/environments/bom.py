"""A bill of materials per model: CycloneDX 1.6 (ML-BOM) JSON.

The model is the BOM's subject (a ``machine-learning-model`` component, with its runtime, its MLflow run,
model id and creation time when it has an ``MLmodel``, and the URI it came from); it depends on its files
(SHA-256 each), the Python that runs it and every package of its environment — read from the
environment's own ``*.dist-info`` / ``*.egg-info`` metadata, not from what the server has installed, so
the BOM of a Python 3.8 model lists the packages of its Python 3.8 environment. Served at
``GET /envserve/models/{name}/bom``, written by ``envserve env bom``, and added to image SBOMs.
"""

from __future__ import annotations

import datetime
import glob
import os
import platform
import re
import uuid
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ..settings.model import ModelSettings
from .cache import file_digest

__all__ = ["environment_packages", "model_bom", "model_files"]

SPEC_VERSION = "1.6"
_SKIP_DIRS = {"__pycache__", ".git", ".ipynb_checkpoints"}


def model_files(settings: ModelSettings) -> List[Tuple[str, str]]:
    """(path relative to the model, absolute path) of the model's files: its artifact file, or every file
    of its folder except the environment tarball it names (whose packages the BOM lists instead)."""
    root = settings.model_path or settings.folder
    if root is None or not os.path.exists(root):
        return []
    if os.path.isfile(root):
        return [(os.path.basename(root), root)]
    skip = set()
    tarball = settings.parameters.get("environment_tarball")
    if isinstance(tarball, str) and tarball:
        skip.add(os.path.realpath(settings.resolve(tarball)))
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        for name in sorted(files):
            path = os.path.join(folder, name)
            if os.path.isfile(path) and os.path.realpath(path) not in skip:
                out.append((os.path.relpath(path, root), path))
    return out


def _site_dirs(prefix: str) -> List[str]:
    patterns = ("lib/python*/site-packages", "lib64/python*/site-packages", "Lib/site-packages")
    return sorted({d for p in patterns for d in glob.glob(os.path.join(prefix, p)) if os.path.isdir(d)})


def environment_packages(prefix: Optional[str]) -> List[Tuple[str, str]]:
    """(name, version) of every distribution installed in the environment at ``prefix``, from its own
    metadata files; the server's own environment when ``prefix`` is None."""
    from importlib import metadata

    if prefix is None:
        dists: Iterable[Any] = metadata.distributions()
    else:
        dists = metadata.distributions(path=_site_dirs(prefix))
    found: Dict[str, Tuple[str, str]] = {}
    for dist in dists:
        name = dist.metadata["Name"] if dist.metadata is not None else None
        if not name or not dist.version:
            continue
        found.setdefault(_canonical(name), (name, dist.version))
    return sorted(found.values(), key=lambda p: _canonical(p[0]))


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _mlflow_properties(folder: Optional[str], uri: Optional[str]) -> List[Dict[str, str]]:
    props = []
    if uri and uri.startswith(("models:/", "runs:/")):
        props.append({"name": "mlflow:model_uri", "value": uri})
        match = re.match(r"^models:/([^/]+)/(\d+)$", uri)
        if match:
            props.append({"name": "mlflow:registered_model", "value": match.group(1)})
            props.append({"name": "mlflow:model_version", "value": match.group(2)})
    if folder is None or not os.path.isfile(os.path.join(folder, "MLmodel")):
        return props
    from ..runtimes.mlflow import read_mlmodel

    try:
        mlmodel = read_mlmodel(folder)
    except Exception:  # an unreadable MLmodel fails the model's load, not its BOM
        return props
    for key in ("run_id", "model_uuid", "model_id", "utc_time_created", "mlflow_version", "artifact_path"):
        value = mlmodel.get(key)
        if value:
            props.append({"name": "mlflow:%s" % key, "value": str(value)})
    flavors = mlmodel.get("flavors") or {}
    if flavors:
        props.append({"name": "mlflow:flavors", "value": ",".join(sorted(flavors))})
    return props


def model_bom(
    settings: ModelSettings,
    *,
    runtime: Optional[str],
    environment: Optional[Dict[str, Any]] = None,
    source_uri: Optional[str] = None,
    tool_version: str = "",
    server_packages: bool = True,
) -> Dict[str, Any]:
    """The CycloneDX 1.6 document of one model. ``environment`` is the model's environment as the server
    describes it (``path``, ``python``, ``hash``, ``kind``, ``source``); None for the server's own, whose
    packages are listed unless ``server_packages`` is False (an image's SBOM lists them itself)."""
    model_ref = "model:%s" % settings.key
    props = [{"name": "envserve:runtime", "value": runtime or "unknown"}]
    if settings.implementation:
        props.append({"name": "envserve:implementation", "value": settings.implementation})
    env = environment or {}
    props.append({"name": "envserve:environment", "value": env.get("kind") or "server"})
    for key in ("hash", "source"):
        if env.get(key):
            props.append({"name": "envserve:environment_%s" % key, "value": str(env[key])})
    uri = source_uri or settings.uri
    if uri:
        props.append({"name": "envserve:model_uri", "value": uri})
    folder = settings.model_path or settings.folder
    if folder is not None and os.path.isfile(folder):
        folder = os.path.dirname(folder)
    props += _mlflow_properties(folder, uri)

    components: List[Dict[str, Any]] = []
    for rel, path in model_files(settings):
        components.append(
            {
                "type": "file",
                "bom-ref": "file:%s" % rel,
                "name": rel,
                "hashes": [{"alg": "SHA-256", "content": file_digest(path)}],
            }
        )
    python = env.get("python") or platform.python_version()
    components.append(
        {
            "type": "platform",
            "bom-ref": "python:%s" % python,
            "name": "python",
            "version": python,
            "purl": "pkg:generic/python@%s" % python,
        }
    )
    packages = environment_packages(env.get("path")) if env.get("path") or server_packages else []
    for name, version in packages:
        purl = "pkg:pypi/%s@%s" % (_canonical(name), version)
        components.append(
            {"type": "library", "bom-ref": purl, "name": name, "version": version, "purl": purl}
        )
    model: Dict[str, Any] = {
        "type": "machine-learning-model",
        "bom-ref": model_ref,
        "name": settings.name,
        "properties": props,
    }
    if settings.version:
        model["version"] = settings.version
    return {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": "urn:uuid:%s" % uuid.uuid4(),
        "version": 1,
        "metadata": {
            "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "envserve", "version": tool_version}]},
            "component": model,
        },
        "components": components,
        "dependencies": [{"ref": model_ref, "dependsOn": [c["bom-ref"] for c in components]}]
        + [{"ref": c["bom-ref"]} for c in components],
    }
