"""``envserve deploy ...``: Kubernetes manifests (Seldon Core, KServe, plain), validated offline."""

from __future__ import annotations

import sys
from typing import Any, List, Optional

import click

from ..errors import Cancelled, InvalidManifest
from .options import emit, platform_option, with_options

__all__ = ["deploy"]


@click.group()
def deploy() -> None:
    """Kubernetes manifests: Seldon Core, KServe, or envserve on plain Kubernetes."""


_SPEC_OPTIONS = [
    click.option(
        "--target",
        type=click.Choice(["seldon", "kserve", "seldon2", "k8s"]),
        default="seldon",
        show_default=True,
    ),
    click.option("--name", required=True, help="Deployment name (DNS-1123 label)."),
    click.option("--namespace", default="default", show_default=True),
    click.option(
        "--server-type",
        default="MLFLOW_SERVER",
        show_default=True,
        help="MLFLOW_SERVER, SKLEARN_SERVER, XGBOOST_SERVER, TRITON_SERVER, ... or ENVSERVE.",
    ),
    click.option("--protocol", type=click.Choice(["seldon", "v2"]), default="seldon", show_default=True),
    click.option(
        "--model-uri", default="", help="s3://..., gs://..., wasbs://..., models:/name/version, ..."
    ),
    click.option("--secret", help="Secret with storage credentials (Seldon envSecretRefName)."),
    click.option("--replicas", type=click.IntRange(min=0), default=1, show_default=True),
    click.option("--max-replicas", type=click.IntRange(min=1), help="Autoscale up to N (k8s: HPA; kserve)."),
    click.option("--cpu", help="CPU request/limit, e.g. 500m."),
    click.option("--memory", help="Memory request/limit, e.g. 1Gi."),
    click.option("--image", help="Override the image (NAME:TAG) for this deployment."),
    click.option("--model-image", help="Image set at model level (below --image, above the platform)."),
    click.option("--custom-server", is_flag=True, help="Serve with envserve's image as a custom server."),
]


def _check(errors: List[str]) -> None:
    if errors:
        raise InvalidManifest("the manifest is not valid:\n" + "\n".join(errors))


@deploy.command("manifest")
@with_options(_SPEC_OPTIONS)
@platform_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE instead of stdout.")
def deploy_manifest(platform_file: Optional[str], output: Optional[str], **fields: Any) -> None:
    """Render a manifest from flags, validate it offline, print or write it."""
    from ..deploy.manifest import DeploymentSpec, dump_yaml, render
    from ..deploy.platform import PlatformConfig
    from ..deploy.validate import validate_documents

    docs = render(DeploymentSpec(**fields), PlatformConfig.load(platform_file))
    _check(validate_documents(docs, output or "manifest"))
    emit(dump_yaml(docs), output, "wrote %s (validated); apply with: kubectl apply -f %s" % (output, output))


@deploy.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path())
def deploy_validate(files: Any) -> None:
    """Validate manifests offline against Kubernetes and CRD schemas; errors name document and field."""
    from ..deploy.validate import validate_files

    _check(validate_files(files))
    click.echo("%d file(s) valid" % len(files))


@deploy.command("wizard")
@click.option(
    "--answers",
    "answers_file",
    type=click.Path(dir_okay=False, exists=True),
    help="Replay answers from a YAML/JSON file (same keys as the flags).",
)
@click.option("--source", type=click.Choice(["registry", "uri"]))
@click.option("--model", help="Registered model name.")
@click.option("--version", "version", help="Version number, alias or 'latest'.")
@click.option("--model-uri")
@click.option("--target", type=click.Choice(["seldon", "kserve", "seldon2", "k8s"]))
@click.option("--server-type")
@click.option("--protocol", type=click.Choice(["seldon", "v2"]))
@click.option("--image")
@click.option("--namespace")
@click.option("--name")
@click.option("--replicas")
@click.option("--cpu")
@click.option("--memory")
@click.option("--secret")
@click.option("--output", type=click.Path(dir_okay=False))
@click.option("--yes", "confirm", flag_value="yes", default=None, help="Skip the final confirmation.")
@platform_option
def deploy_wizard(answers_file: Optional[str], platform_file: Optional[str], **flags: Any) -> None:
    """Interactive deployment wizard (MLflow registry via MLFLOW_TRACKING_URI, or a model URI)."""
    import os

    import yaml

    from ..deploy.platform import PlatformConfig
    from ..deploy.validate import validate_documents
    from ..deploy.wizard import answers_from_file, run_wizard

    answers = answers_from_file(answers_file) if answers_file else {}
    answers.update({k: v for k, v in flags.items() if v is not None})
    try:
        result = run_wizard(
            answers,
            PlatformConfig.load(platform_file),
            os.environ.get("MLFLOW_TRACKING_URI"),
            interactive=sys.stdin.isatty(),
        )
    except (click.Abort, EOFError):
        raise Cancelled("cancelled; nothing written") from None
    _check(validate_documents(list(yaml.safe_load_all(result.manifest)), result.output))
    with open(result.output, "w", encoding="utf-8") as f:
        f.write(result.manifest)
    click.echo("wrote %s (validated)" % result.output)
    click.echo("apply with: kubectl apply -f %s" % result.output)
