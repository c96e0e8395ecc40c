"""``envserve image dockerfile``: render the Dockerfile template for a model repository."""

from __future__ import annotations

import os
from typing import List

from .. import __version__
from ..environments import environment_source, read_spec
from ..environments.cache import file_digest
from ..errors import EnvserveError
from ..settings.repository import scan_repository

__all__ = ["DEFAULT_BASE", "environment_hashes", "render_dockerfile"]

#: The default base image: a Python slim image from a registry (tests use a locally built one).
DEFAULT_BASE = "docker.io/library/python:3.11-slim-bookworm"
SOURCE = "https://github.com/envserve/envserve"


def environment_hashes(repository: str) -> List[str]:
    """Content hashes of the environments the repository's models declare (for the image's labels)."""
    hashes = []
    for entry in scan_repository(repository):
        if entry.settings is None:
            continue
        try:
            source = environment_source(entry.settings)
        except EnvserveError:
            continue
        if source is None:
            continue
        if source.kind == "tarball" and os.path.isfile(source.location):
            hashes.append(file_digest(source.location))
        elif source.kind == "spec" and os.path.isfile(source.location):
            hashes.append(read_spec(source.location, source.python).digest())
    return sorted(set(hashes))


def render_dockerfile(
    repository: str,
    base: str = DEFAULT_BASE,
    wheelhouse: bool = False,
    copy_models: bool = True,
    uid: int = 8888,
    extras: str = "sklearn",
) -> str:
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
        environments=",".join(environment_hashes(repository)),
        wheelhouse=wheelhouse,
        copy_models=copy_models,
        uid=uid,
        requirement=requirement,
    )
