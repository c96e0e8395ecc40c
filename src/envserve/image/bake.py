"""Environments to bake into an image without their models (``--environment``): spec files, tarballs,
model folders and model URIs, each turned into the environment source the model will name at run time.

A base image for models fetched at start (KServe's storage initializer, Seldon's, an S3 sync) holds the
environments only; the model that arrives in ``/mnt/models`` finds its own in the cache by content hash:
the SHA-256 of its tarball, or of its normalised spec (so the copy baked here must read the same, which is
why a spec travels with its sibling environment files). For a model URI only ``MLmodel``, the settings
and the environment files are fetched.

In the build context every source becomes a settings-only model folder under ``bake/`` that names it, so
the image prepares them with the same ``envserve env prepare`` as a repository's.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, List, Mapping, Optional, Tuple

from ..environments import EnvironmentSource, environment_source
from ..environments.source import MLFLOW_ENV_FILES
from ..errors import SpecError
from ..settings.model import MODEL_SETTINGS_FILE, ModelSettings
from ..storage import fetch, is_remote

__all__ = ["BAKE_DIR", "TARBALL_SUFFIXES", "bake_source", "write_bake_folders"]

BAKE_DIR = "bake"
TARBALL_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tzst", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
#: What a model URI is fetched for when only its environment is wanted.
ENVIRONMENT_FILES = ("MLmodel", MODEL_SETTINGS_FILE, *MLFLOW_ENV_FILES)
_SPEC_SUFFIXES = (".txt", ".in", ".yaml", ".yml")
_SPEC_MAX_BYTES = 1 << 20


def bake_source(
    target: str, cache_root: str, environ: Optional[Mapping[str, str]] = None
) -> EnvironmentSource:
    """The environment ``target`` names: a requirements file, ``python_env.yaml`` or ``conda.yaml``; a
    tarball; a model folder (its settings' environment, or an MLflow model's own files); or a model URI
    (``models:/name/1``, ``runs:/...``, ``s3://...``: only the files above are fetched)."""
    if is_remote(target):
        folder = fetch(target, cache_root, environ, only=ENVIRONMENT_FILES)
        return _from_path(folder, target)
    path = os.path.abspath(
        os.path.expanduser(target[len("file://") :] if target.startswith("file://") else target)
    )
    return _from_path(path, target)


def _from_path(path: str, label: str) -> EnvironmentSource:
    if os.path.isdir(path):
        settings_file = os.path.join(path, MODEL_SETTINGS_FILE)
        if os.path.isfile(settings_file):
            settings = ModelSettings.load(settings_file)
        else:
            settings = ModelSettings.from_dict({"name": os.path.basename(path) or "model"}, folder=path)
        source = environment_source(settings)
        if source is None:
            raise SpecError(
                "%s declares no environment: neither parameters.environment_tarball / environment in its "
                "model-settings.json nor an MLflow MLmodel with %s" % (label, " / ".join(MLFLOW_ENV_FILES))
            )
        if source.kind == "path":
            raise SpecError(
                "%s names an existing environment (%s); there is nothing to bake" % (label, source.location)
            )
        return source
    if not os.path.isfile(path):
        raise SpecError("environment %s does not exist" % label)
    if path.endswith(TARBALL_SUFFIXES):
        return EnvironmentSource("tarball", path)
    return EnvironmentSource("spec", path)


def _spec_files(spec: str) -> List[str]:
    """The spec and the environment files beside it (a requirements file's ``-r`` includes, MLflow's
    python_env.yaml that gives a requirements file its Python version)."""
    folder = os.path.dirname(spec)
    names = {os.path.basename(spec)}
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if (
            name.endswith(_SPEC_SUFFIXES)
            and os.path.isfile(path)
            and os.path.getsize(path) <= _SPEC_MAX_BYTES
            and name != MODEL_SETTINGS_FILE
        ):
            names.add(name)
    return sorted(os.path.join(folder, n) for n in names)


def write_bake_folders(sources: List[Tuple[str, EnvironmentSource]], context: str) -> List[Dict[str, str]]:
    """One settings-only model folder per source under ``context/bake``; returns what was written, for
    the image's labels and the build log."""
    written = []
    for index, (label, source) in enumerate(sources):
        folder = os.path.join(context, BAKE_DIR, "env-%d" % index)
        os.makedirs(folder)
        parameters: Dict[str, str] = {}
        if source.kind == "tarball":
            name = os.path.basename(source.location)
            shutil.copy2(source.location, os.path.join(folder, name))
            parameters["environment_tarball"] = "./" + name
        else:
            for path in _spec_files(source.location):
                shutil.copy2(path, os.path.join(folder, os.path.basename(path)))
            parameters["environment"] = "./" + os.path.basename(source.location)
            if source.python:
                parameters["environment_python"] = source.python
        with open(os.path.join(folder, MODEL_SETTINGS_FILE), "w", encoding="utf-8") as f:
            json.dump({"name": "env-%d" % index, "parameters": parameters}, f, indent=2)
        written.append({"environment": label, "kind": source.kind, "folder": folder})
    return written
