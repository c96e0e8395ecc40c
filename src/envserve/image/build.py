"""``envserve image build``: a build context (Dockerfile, models, wheelhouse) built by docker, podman
or buildah — whichever is installed — with argv lists and the build log streamed through."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from typing import IO, List, Optional, Sequence, Tuple

from ..environments import EnvironmentSource
from ..errors import ImageBuildError
from .bake import write_bake_folders
from .dockerfile import DEFAULT_BASE, DEFAULT_EXTRAS, folder_digest, render_dockerfile

__all__ = ["BUILDERS", "ImageBuildError", "build_image", "find_builder", "prepare_context"]

BUILDERS = ("podman", "buildah", "docker")


def find_builder(preferred: Optional[str] = None) -> str:
    names = [preferred] if preferred else list(BUILDERS)
    for name in names:
        if name and shutil.which(name):
            return name
    raise ImageBuildError(
        "no container builder found (looked for %s); install one: apt-get install podman buildah, or Docker"
        % ", ".join(names)
    )


def prepare_context(
    repository: str,
    directory: str,
    base: str,
    wheelhouse: Optional[str],
    copy_models: bool,
    uid: int,
    extras: str,
    baked: Sequence[Tuple[str, EnvironmentSource]] = (),
    requirements: Optional[str] = None,
) -> str:
    """Fill ``directory`` with Dockerfile, models/, bake/ and wheels/ (and ``requirements``, a requirements
    file for the server's environment, as server-requirements.txt); returns the Dockerfile path."""
    os.makedirs(directory, exist_ok=True)
    write_bake_folders(list(baked), directory)
    if requirements:
        shutil.copyfile(requirements, os.path.join(directory, "server-requirements.txt"))
    if copy_models:
        shutil.copytree(
            repository,
            os.path.join(directory, "models"),
            symlinks=False,
            ignore=shutil.ignore_patterns(".git", "__pycache__", ".cache"),
        )
    if wheelhouse:
        shutil.copytree(wheelhouse, os.path.join(directory, "wheels"))
    dockerfile = os.path.join(directory, "Dockerfile")
    with open(dockerfile, "w", encoding="utf-8") as f:
        f.write(
            render_dockerfile(
                repository,
                base,
                bool(wheelhouse),
                copy_models,
                uid,
                extras,
                [s for _, s in baked],
                folder_digest(wheelhouse) if wheelhouse else "",
                requirements="server-requirements.txt" if requirements else "",
            )
        )
    return dockerfile


def _argv(builder: str, context: str, tag: str, offline: bool) -> List[str]:
    if builder == "buildah":
        argv = ["buildah", "bud", "--layers", "-t", tag]
        if offline:
            argv += ["--isolation", "oci", "--network", "none", "--pull-never"]
    elif builder == "podman":
        argv = ["podman", "build", "--layers", "-t", tag]
        if offline:
            argv += ["--network", "none", "--pull=never"]
    else:
        argv = ["docker", "build", "-t", tag]
        if offline:
            argv += ["--network", "none", "--pull=false"]
    return argv + [context]


def build_image(
    repository: str,
    tag: str,
    base: str = DEFAULT_BASE,
    wheelhouse: Optional[str] = None,
    builder: Optional[str] = None,
    copy_models: bool = True,
    uid: int = 8888,
    extras: str = DEFAULT_EXTRAS,
    log: IO[str] = sys.stderr,
    extra_args: Sequence[str] = (),
    baked: Sequence[Tuple[str, EnvironmentSource]] = (),
    requirements: Optional[str] = None,
    no_cache: bool = False,
) -> str:
    """Build and tag the image; returns the tag. Offline (``--network none``) when a wheelhouse is given.
    ``baked``: (what the user named, its source) of environments baked without their models;
    ``requirements``: a requirements file installed beside envserve in the server's environment."""
    name = find_builder(builder)
    with tempfile.TemporaryDirectory(prefix="envserve-image-") as context:
        prepare_context(repository, context, base, wheelhouse, copy_models, uid, extras, baked, requirements)
        if no_cache:
            extra_args = ["--no-cache", *extra_args]
        for label, source in baked:
            log.write("baking %s (%s)\n" % (label, source.describe()))
        argv = _argv(name, context, tag, offline=bool(wheelhouse))
        argv[-1:-1] = list(extra_args)
        log.write("$ %s\n" % " ".join(argv))
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        tail: List[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail = (tail + [line.rstrip()])[-30:]
        if proc.wait() != 0:
            raise ImageBuildError(
                "%s failed with exit code %d:\n%s" % (name, proc.returncode, "\n".join(tail))
            )
    return tag
