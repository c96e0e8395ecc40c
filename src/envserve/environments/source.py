"""Where a model's environment comes from, read from its settings (MLServer-compatible names first).

``parameters`` keys, first match wins:

- ``environment_tarball``: a tarball (conda-pack, venv-pack, ``envserve env pack``), relative to the
  settings file;
- ``environment_path``: an existing environment directory, or its python executable;
- ``environment``: a spec file (requirements.txt, MLflow python_env.yaml, conda.yaml), built by envserve;
  ``environment_python`` may give the Python version for a plain requirements file;
- an MLflow model folder (``MLmodel``): its own python_env.yaml / requirements.txt / conda.yaml;
- otherwise the server-wide default tarball (the server setting ``env_tarball``: ``ENVSERVE_ENV_TARBALL``
  or MLServer's ``MLSERVER_ENV_TARBALL``); ``"environment": "server"`` opts a model out of both.

No source means the model runs in the server's own process.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import SettingsError
from ..settings.model import ModelSettings

__all__ = ["EnvironmentSource", "environment_source", "resolve_as_of", "with_environment"]


@dataclass(frozen=True)
class EnvironmentSource:
    kind: str  # "tarball" | "path" | "spec"
    location: str  # absolute path
    python: Optional[str] = None  # requested X.Y for specs without one
    as_of: Optional[str] = None  # specs: resolve as the package index was then (ISO 8601, UTC)

    def describe(self) -> str:
        return "%s %s" % (self.kind, self.location)


def resolve_as_of(settings: ModelSettings, value: Any) -> Optional[str]:
    """``environment_as_of`` as an ISO 8601 UTC moment: a date or date-time as given, or ``created``: the
    model's creation time from its MLmodel (``utc_time_created``)."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    if text == "created":
        folder = settings.model_path
        created = None
        if folder is not None and os.path.isfile(os.path.join(folder, "MLmodel")):
            from ..runtimes.mlflow import read_mlmodel

            created = read_mlmodel(folder).get("utc_time_created")
        if not created:
            raise SettingsError(
                "model %r: environment_as_of 'created' needs an MLmodel with utc_time_created; give a date"
                % settings.name
            )
        text = str(created)
    match = re.match(r"^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2})?))?", text)
    if match is None:
        raise SettingsError(
            "model %r: environment_as_of %r is not a date (YYYY-MM-DD[THH:MM:SS]) or 'created'"
            % (settings.name, value)
        )
    clock = match.group(2) or "23:59:59"
    if len(clock) == 5:
        clock += ":00"
    return "%sT%sZ" % (match.group(1), clock)


#: An MLflow model's own environment files, in the order MLflow itself prefers them.
MLFLOW_ENV_FILES = ("python_env.yaml", "requirements.txt", "conda.yaml")


def mlflow_environment(settings: ModelSettings) -> Optional[EnvironmentSource]:
    """The environment an MLflow model folder declares (python_env.yaml > requirements.txt > conda.yaml)."""
    folder = settings.model_path
    if folder is None or not os.path.isfile(os.path.join(folder, "MLmodel")):
        return None
    if settings.implementation not in (None, "mlflow", "mlserver_mlflow.MLflowRuntime"):
        return None
    for name in MLFLOW_ENV_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return EnvironmentSource("spec", path)
    return None


def environment_source(
    settings: ModelSettings, default_tarball: Optional[str] = None
) -> Optional[EnvironmentSource]:
    """Where the model's environment comes from; ``default_tarball`` is the server's ``env_tarball``."""
    params = settings.parameters
    for key, kind in (
        ("environment_tarball", "tarball"),
        ("environment_path", "path"),
        ("environment", "spec"),
    ):
        value = params.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise SettingsError("model %r: parameters.%s must be a path" % (settings.name, key))
        if kind == "spec" and value == "server":
            return None
        python = params.get("environment_python")
        as_of = resolve_as_of(settings, params.get("environment_as_of")) if kind == "spec" else None
        return EnvironmentSource(
            kind, settings.resolve(value), str(python) if python is not None else None, as_of
        )
    spec = mlflow_environment(settings)
    if spec is not None:
        as_of = resolve_as_of(settings, params.get("environment_as_of"))
        return dataclasses.replace(spec, as_of=as_of) if as_of else spec
    if default_tarball:
        return EnvironmentSource("tarball", os.path.abspath(os.path.expanduser(default_tarball)))
    return None


_ENV_KEYS = ("environment_tarball", "environment_path", "environment", "environment_python")
_TARBALLS = (".tar.gz", ".tgz", ".tar.zst", ".tar.xz", ".tar.bz2", ".tar")


def with_environment(settings: ModelSettings, candidate: str) -> ModelSettings:
    """The model's settings with its environment replaced by ``candidate``: a tarball, an environment
    directory, a spec file (requirements.txt, python_env.yaml, conda.yaml) or ``server`` (the server's own,
    in process). Used by the upgrade check and shadow serving."""
    params = {k: v for k, v in settings.parameters.items() if k not in _ENV_KEYS}
    if candidate == "server":
        params["environment"] = "server"
    else:
        path = os.path.abspath(os.path.expanduser(candidate))
        if os.path.isdir(path):
            if not any(os.path.exists(os.path.join(path, p)) for p in ("bin/python", "python.exe")):
                raise SettingsError(
                    "candidate %s is a directory without bin/python (not an environment)" % path
                )
            params["environment_path"] = path
        elif not os.path.isfile(path):
            raise SettingsError("candidate environment %s does not exist" % candidate)
        elif path.endswith(_TARBALLS):
            params["environment_tarball"] = path
        else:  # requirements.txt, python_env.yaml, conda.yaml
            params["environment"] = path
    return dataclasses.replace(settings, parameters=params)
