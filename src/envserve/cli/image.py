"""``envserve image ...``: container images with environments prepared at build time; SBOMs, scans."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Tuple

import click

from ..errors import VulnerabilitiesFound
from .options import cache_option, with_options

if TYPE_CHECKING:
    from ..environments import EnvironmentSource

__all__ = ["image"]


@click.group()
def image() -> None:
    """Container images with the model environments prepared at build time; SBOMs and scans."""


_IMAGE_OPTIONS = [
    click.option("--base", default=None, help="Base image [default: python:3.11-slim-bookworm]."),
    click.option(
        "--wheelhouse",
        type=click.Path(file_okay=False, exists=True),
        help="Install envserve from this folder of wheels, offline.",
    ),
    click.option(
        "--no-models",
        "copy_models",
        flag_value=False,
        default=True,
        help="Leave models to a volume or a URI instead of copying them in.",
    ),
    click.option(
        "--environment",
        "environments",
        multiple=True,
        metavar="SOURCE",
        help="Bake this environment without its model (a base image for models fetched at start): a "
        "requirements.txt, python_env.yaml or conda.yaml, a tarball, a model folder, or a model URI "
        "(models:/name/1, runs:/..., s3://..., gs://..., wasbs://...: only MLmodel and the environment "
        "files are "
        "fetched). Repeatable.",
    ),
    click.option("--uid", type=int, default=8888, show_default=True, help="User the server runs as."),
    click.option("--extras", help="envserve extras to install [default: grpc,sklearn]."),
]


@image.command("dockerfile")
@click.argument(
    "model_repository", required=False, default=".", type=click.Path(file_okay=False, exists=True)
)
@with_options(_IMAGE_OPTIONS)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE instead of stdout.")
def image_dockerfile(
    model_repository: str,
    base: Optional[str],
    wheelhouse: Optional[str],
    copy_models: bool,
    environments: Tuple[str, ...],
    uid: int,
    extras: Optional[str],
    output: Optional[str],
) -> None:
    """Write the Dockerfile for MODEL_REPOSITORY (from the template in envserve/image/templates)."""
    from ..image.dockerfile import DEFAULT_BASE, DEFAULT_EXTRAS, folder_digest, render_dockerfile

    baked = [source for _, source in _baked(environments)]
    text = render_dockerfile(
        model_repository,
        base or DEFAULT_BASE,
        bool(wheelhouse),
        copy_models,
        uid,
        DEFAULT_EXTRAS if extras is None else extras,
        baked,
        folder_digest(wheelhouse) if wheelhouse else "",
    )
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
        click.echo("wrote %s" % output, err=True)
    else:
        click.echo(text, nl=False)


@image.command("build")
@click.argument(
    "model_repository", required=False, default=".", type=click.Path(file_okay=False, exists=True)
)
@with_options(_IMAGE_OPTIONS)
@click.option("-t", "--tag", required=True, help="Image reference to tag, e.g. localhost/models:1.")
@click.option(
    "--builder", type=click.Choice(["podman", "buildah", "docker"]), help="[default: the first found]"
)
def image_build(
    model_repository: str,
    base: Optional[str],
    wheelhouse: Optional[str],
    copy_models: bool,
    environments: Tuple[str, ...],
    uid: int,
    extras: Optional[str],
    tag: str,
    builder: Optional[str],
) -> None:
    """Build the image with docker, podman or buildah (the build log is streamed); print its reference.

    With --no-models and --environment it is a base image: the environments are baked, the models come
    at run time (in /mnt/models, as the operators mount them) and find their environment by content hash."""
    from ..image.build import build_image
    from ..image.dockerfile import DEFAULT_BASE, DEFAULT_EXTRAS

    click.echo(
        build_image(
            model_repository,
            tag,
            base or DEFAULT_BASE,
            wheelhouse,
            builder,
            copy_models,
            uid,
            DEFAULT_EXTRAS if extras is None else extras,
            baked=_baked(environments),
        )
    )


def _baked(environments: Tuple[str, ...]) -> List[Tuple[str, EnvironmentSource]]:
    """The sources --environment names, resolved on this machine (URIs fetched here, so the build needs
    neither network nor credentials)."""
    from ..image.bake import bake_source
    from ..settings.paths import default_cache_root

    return [(target, bake_source(target, default_cache_root())) for target in environments]


@image.command("sbom")
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option(
    "--environment",
    "is_environment",
    is_flag=True,
    help="SOURCE is an environment directory (cyclonedx-py), not an image (syft).",
)
@click.option(
    "--models",
    "model_repository",
    type=click.Path(file_okay=False, exists=True),
    help="Add the ML-BOM of every model in this repository (its files, environment packages, runtime, "
    "MLflow run), as `envserve env bom` makes them.",
)
@cache_option
def image_sbom(
    source: str, output: str, is_environment: bool, model_repository: Optional[str], cache_dir: Optional[str]
) -> None:
    """CycloneDX SBOM of an image (SOURCE as syft takes it, e.g. oci-archive:img.tar) or of an environment."""
    from ..image.sbom import environment_sbom
    from ..image.sbom import image_sbom as sbom_of_image

    path = environment_sbom(source, output) if is_environment else sbom_of_image(source, output)
    if model_repository is not None:
        import json

        from ..image.sbom import add_model_boms
        from .env import repository_boms

        with open(path) as f:
            doc = json.load(f)
        boms = repository_boms(model_repository, cache_dir)
        with open(path, "w") as f:
            json.dump(add_model_boms(doc, boms), f, indent=2)
    click.echo(path)


@image.command("scan")
@click.argument("image_ref")
@click.option(
    "--fail-on", type=click.Choice(["LOW", "MEDIUM", "HIGH", "CRITICAL"]), default="HIGH", show_default=True
)
@click.option(
    "--report",
    type=click.Path(exists=True, dir_okay=False),
    help="Summarise an existing trivy/grype JSON report instead of running a scanner.",
)
@click.option("--os-updates", is_flag=True, help="Also list pending Debian security updates in the image.")
def image_scan(image_ref: str, fail_on: str, report: Optional[str], os_updates: bool) -> None:
    """Scan IMAGE_REF with trivy or grype: exit 1 at or above --fail-on, 5 when no scanner is installed."""
    import json

    from ..image import scan

    if report:
        with open(report, encoding="utf-8") as f:
            doc = json.load(f)
        findings = (
            scan.parse_trivy(doc) if "Results" in doc or "SchemaVersion" in doc else scan.parse_grype(doc)
        )
    else:
        findings = scan.run_scanner(image_ref)
    table, failed = scan.summarise(findings, fail_on)
    click.echo(table)
    pending = []
    if os_updates:
        pending = scan.pending_security_updates(image_ref)
        click.echo("%d pending Debian security updates%s" % (len(pending), ":" if pending else ""))
        for line in pending:
            click.echo("  " + line)
    if failed or pending:
        raise VulnerabilitiesFound(
            "%s%s"
            % (
                "vulnerabilities at or above %s" % fail_on if failed else "",
                ("; " if failed else "") + "%d pending security updates" % len(pending) if pending else "",
            )
        )
