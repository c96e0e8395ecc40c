"""``envserve image dockerfile``: render the Dockerfile template for a model repository."""

from __future__ import annotations

import hashlib
import json
import os
from typing import List, Optional, Sequence

from .. import __version__
from ..environments import EnvironmentSource, environment_source, read_spec
from ..environments.cache import file_digest
from ..errors import EnvserveError
from ..settings.repository import scan_repository

__all__ = [
    "DEFAULT_BASE",
    "DEFAULT_EXTRAS",
    "environment_hashes",
    "folder_digest",
    "render_dockerfile",
    "source_digest",
]

#: What the image installs with envserve: a runtime, and the gRPC edge the operators' sidecars call.
DEFAULT_EXTRAS = "grpc,sklearn"
#: The default base image: a Python slim image from a registry (tests use a locally built one).
DEFAULT_BASE = "docker.io/library/python:3.11-slim-bookworm"
SOURCE = "https://github.com/envserve/envserve"


def folder_digest(folder: str) -> str:
    """SHA-256 over a folder's file names and contents (a wheelhouse: what the image installs)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            h.update(name.encode("utf-8", "surrogateescape") + b"\0" + file_digest(path).encode() + b"\n")
    return h.hexdigest()


def source_digest(source: EnvironmentSource) -> Optional[str]:
    """The cache's name for an environment source: its tarball's or its normalised spec's SHA-256."""
    if source.kind == "tarball" and os.path.isfile(source.location):
        return file_digest(source.location)
    if source.kind == "spec" and os.path.isfile(source.location):
        return read_spec(source.location, source.python).digest()
    return None


def environment_hashes(repository: Optional[str], baked: Sequence[EnvironmentSource] = ()) -> List[str]:
    """Content hashes of the environments the repository's models declare and of those baked without
    their models (for the image's labels)."""
    sources = list(baked)
    for entry in scan_repository(repository) if repository else []:
        if entry.settings is None:
            continue
        try:
            source = environment_source(entry.settings)
        except EnvserveError:
            continue
        if source is not None:
            sources.append(source)
    return sorted({d for d in (source_digest(s) for s in sources) if d})


#: Offline installs inside the build, from the mounted wheelhouse (uv first, pip as the builder's fallback).
_OFFLINE = "UV_OFFLINE=1 UV_FIND_LINKS=/tmp/wheels PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wheels"


def render_dockerfile(
    repository: Optional[str],
    base: str = DEFAULT_BASE,
    wheelhouse: bool = False,
    copy_models: bool = True,
    uid: int = 8888,
    extras: str = DEFAULT_EXTRAS,
    baked: Sequence[EnvironmentSource] = (),
    wheelhouse_digest: str = "",
    models_from: str = "models/",
    requirements: str = "",
) -> str:
    """The Dockerfile; ``repository`` is copied in when ``copy_models`` (from ``models_from`` in the build
    context: ``models/``, or ``.`` when the context is the repository itself), ``baked`` are the sources
    :func:`envserve.image.bake.write_bake_folders` put in the context, and ``requirements`` a requirements
    file in the context installed beside envserve."""
    import jinja2

    requirement = "envserve[%s]==%s" % (extras, __version__) if extras else "envserve==%s" % __version__
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("envserve.image", "templates"),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template("Dockerfile.j2").render(
        base=base,
        version=__version__,
        source=SOURCE,
        environments=",".join(environment_hashes(repository if copy_models else None, baked)),
        baked=",".join(d for d in (source_digest(s) for s in baked) if d),
        bake=list(baked),
        offline=_OFFLINE,
        defaults=json.dumps(
            {
                "host": "0.0.0.0",
                "http_port": 8080,
                "grpc_port": 8081,
                "model_repository": "/models" if copy_models else "/mnt/models",
            },
            separators=(",", ":"),
        ),
        wheelhouse=wheelhouse,
        wheelhouse_digest=wheelhouse_digest or "unknown",
        copy_models=copy_models,
        uid=uid,
        requirement=requirement,
        models_from=models_from,
        requirements=requirements,
    )
