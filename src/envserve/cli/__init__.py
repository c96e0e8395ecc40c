"""The ``envserve`` command line: thin commands that build settings and call one library function.

Heavy modules are imported inside the commands so that ``envserve --help`` stays instant.
Exit codes (one table, :data:`EXIT_CODES`): 0 success, 1 unexpected error, 2 usage error (click),
3 invalid settings, 4 other envserve error.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, TypeVar

import click

from ..errors import EnvserveError, SettingsError

__all__ = ["EXIT_CODES", "main"]

EXIT_CODES: List[Tuple[Type[EnvserveError], int]] = [
    (SettingsError, 3),
    (EnvserveError, 4),
]


def _exit_code(exc: EnvserveError) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return 1


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="envserve")
def cli() -> None:
    """envserve: serve models over the Open Inference Protocol, each in its own Python environment."""


@cli.command()
@click.argument("model_repository", required=False, type=click.Path(file_okay=False))
@click.option("--host", help="Address to listen on [default: 127.0.0.1; ENVSERVE_HOST].")
@click.option(
    "--http-port", type=int, help="REST port; 0 picks a free one [default: 8080; ENVSERVE_HTTP_PORT]."
)
@click.option("--grpc-port", type=int, help="gRPC port [default: 8081; ENVSERVE_GRPC_PORT].")
@click.option(
    "--metrics-port",
    type=int,
    help="Separate port for /metrics [default: none; /metrics is on the HTTP port].",
)
@click.option("--max-request-size", type=int, help="Largest request body in bytes [default: 100 MiB].")
@click.option(
    "--graceful-timeout", type=float, help="Seconds to drain in-flight requests on SIGTERM [default: 30]."
)
@click.option(
    "--parallel-workers", type=int, help="Default worker processes per model with its own environment."
)
@click.option(
    "--console", "console", flag_value=True, default=None, help="Serve the web console at /console/."
)
@click.option(
    "--worker-memory-limit", type=int, help="MiB of resident memory above which a worker is recycled."
)
@click.option(
    "--inference-timeout", type=float, help="Seconds one inference may take in a worker [default: 60]."
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="[default: info]")
@click.option(
    "--model-uri",
    help="Serve this model without a settings file: models:/name/version, models:/name@alias, "
    "runs:/<run>/<path>, s3://bucket/prefix, https://.../model.tar.gz or a path.",
)
@click.option("--model-name", help="Name for --model-uri [default: from the URI].")
def serve(model_repository: Optional[str], **flags: Any) -> None:
    """Serve every model found under MODEL_REPOSITORY (default: the current directory).

    Settings come from, highest precedence first: these flags, ENVSERVE_* environment variables,
    MODEL_REPOSITORY/settings.json, built-in defaults.
    """
    from ..settings import ServerSettings

    overrides: Dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    try:
        if flags.get("model_uri") and model_repository is None:
            overrides["model_repository"] = ""  # only the --model-uri model, no repository scan
        settings = ServerSettings.from_sources(model_repository or ".", overrides)
        _configure_logging(settings.log_level)
        from ..server.serve import serve as run

        run(settings)
    except EnvserveError as exc:
        click.echo("envserve: error: %s" % exc, err=True)
        sys.exit(_exit_code(exc))


def main(argv: Optional[List[str]] = None) -> None:
    cli.main(args=argv, prog_name="envserve")


# -- envserve env ... ---------------------------------------------------------------------------------

_cache_option = click.option(
    "--cache",
    "cache_dir",
    type=click.Path(file_okay=False),
    help="Environment cache [default: ENVSERVE_ENV_CACHE or ~/.cache/envserve/environments].",
)


@cli.group()
def env() -> None:
    """Model environments: list and prune the cache, pack a venv, prepare a repository's environments."""


def _size(n: Optional[int]) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return "%.0f %s" % (value, unit) if unit == "B" else "%.1f %s" % (value, unit)
        value /= 1024
    return str(n)


@env.command("list")
@_cache_option
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def env_list(cache_dir: Optional[str], as_json: bool) -> None:
    """List cached environments: hash, kind, Python, size, last used, models, source."""
    import json
    import time

    from ..environments import EnvironmentCache

    rows = EnvironmentCache(cache_dir).list()
    if as_json:
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    if not rows:
        click.echo("no cached environments")
        return
    click.echo(
        "%-12s  %-7s  %-8s  %9s  %-16s  %-20s  %s"
        % ("HASH", "KIND", "PYTHON", "SIZE", "LAST USED", "MODELS", "SOURCE")
    )
    for r in rows:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.get("last_used", r.get("created", 0))))
        click.echo(
            "%-12s  %-7s  %-8s  %9s  %-16s  %-20s  %s"
            % (
                r["hash"][:12],
                r.get("kind", "?"),
                r.get("python_version", "?"),
                _size(r.get("size")),
                used,
                ",".join(r.get("models", [])) or "-",
                r.get("source", ""),
            )
        )


@env.command("prune")
@_cache_option
@click.option(
    "--older-than", type=float, default=30.0, show_default=True, help="Remove environments unused for DAYS."
)
@click.option("--all", "everything", is_flag=True, help="Remove every environment no running server uses.")
def env_prune(cache_dir: Optional[str], older_than: float, everything: bool) -> None:
    """Remove cached environments (never one a running server holds)."""
    from ..environments import EnvironmentCache

    removed = EnvironmentCache(cache_dir).prune(older_than * 86400, everything)
    for r in removed:
        click.echo("removed %s (%s, %s)" % (r["hash"][:12], r.get("source", ""), _size(r.get("size"))))
    click.echo("%d environment(s) removed" % len(removed))


@env.command("pack")
@click.argument("environment", type=click.Path(exists=True))
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="Tarball to write (.tar.gz)."
)
def env_pack(environment: str, output: str) -> None:
    """Pack a venv, with its interpreter, into a tarball that runs on machines without that Python."""
    from ..environments.pack import pack_environment

    try:
        manifest = pack_environment(environment, output)
    except EnvserveError as exc:
        click.echo("envserve: error: %s" % exc, err=True)
        sys.exit(_exit_code(exc))
    click.echo(
        "packed Python %s from %s into %s (%s)"
        % (manifest["python"], environment, output, _size(manifest["size"]))
    )


@env.command("prepare")
@click.argument("model_repository", required=False, type=click.Path(file_okay=False, exists=True))
@_cache_option
def env_prepare(model_repository: Optional[str], cache_dir: Optional[str]) -> None:
    """Extract or build the environment of every model in MODEL_REPOSITORY into the cache (as at start-up)."""
    from ..environments import EnvironmentCache, environment_source
    from ..settings import scan_repository

    _configure_logging("info")
    cache = EnvironmentCache(cache_dir)
    failed = 0
    for entry in scan_repository(model_repository or "."):
        if entry.settings is None:
            continue
        try:
            source = environment_source(entry.settings)
            if source is None:
                continue
            prepared = cache.prepare(source, entry.settings.name)
            prepared.release()
            click.echo(
                "%s: %s (Python %s) %s"
                % (entry.settings.name, (prepared.digest or "")[:12], prepared.python_version, prepared.root)
            )
        except EnvserveError as exc:
            failed += 1
            click.echo("%s: error: %s" % (entry.settings.name, exc), err=True)
    if failed:
        sys.exit(4)


# -- envserve deploy ... / envserve platform ... ----------------------------------------------------------

_platform_option = click.option(
    "--platform",
    "platform_file",
    type=click.Path(dir_okay=False),
    help="Platform file [default: ENVSERVE_PLATFORM or ~/.config/envserve/platform.json].",
)


def _fail(exc: EnvserveError) -> None:
    click.echo("envserve: error: %s" % exc, err=True)
    sys.exit(_exit_code(exc))


@cli.group()
def deploy() -> None:
    """Kubernetes manifests: Seldon Core, KServe, or envserve on plain Kubernetes."""


def _spec_options(f: Any) -> Any:
    for decorator in reversed(
        [
            click.option(
                "--target",
                type=click.Choice(["seldon", "kserve", "k8s"]),
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
            click.option(
                "--protocol", type=click.Choice(["seldon", "v2"]), default="seldon", show_default=True
            ),
            click.option("--model-uri", default="", help="s3://..., gs://..., models:/name/version, ..."),
            click.option("--secret", help="Secret with storage credentials (Seldon envSecretRefName)."),
            click.option("--replicas", type=click.IntRange(min=0), default=1, show_default=True),
            click.option(
                "--max-replicas", type=click.IntRange(min=1), help="Autoscale up to N (k8s: HPA; kserve)."
            ),
            click.option("--cpu", help="CPU request/limit, e.g. 500m."),
            click.option("--memory", help="Memory request/limit, e.g. 1Gi."),
            click.option("--image", help="Override the image (NAME:TAG) for this deployment."),
            click.option(
                "--model-image", help="Image set at model level (below --image, above the platform)."
            ),
            click.option(
                "--custom-server", is_flag=True, help="Serve with envserve's image as a custom server."
            ),
        ]
    ):
        f = decorator(f)
    return f


@deploy.command("manifest")
@_spec_options
@_platform_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE instead of stdout.")
def deploy_manifest(platform_file: Optional[str], output: Optional[str], **fields: Any) -> None:
    """Render a manifest from flags, validate it offline, print or write it."""
    from ..deploy.manifest import DeploymentSpec, dump_yaml, render
    from ..deploy.platform import PlatformConfig
    from ..deploy.validate import validate_documents

    try:
        spec = DeploymentSpec(**fields)
        docs = render(spec, PlatformConfig.load(platform_file))
        errors = validate_documents(docs, output or "manifest")
    except EnvserveError as exc:
        _fail(exc)
        return
    if errors:
        click.echo("\n".join(errors), err=True)
        sys.exit(4)
    text = dump_yaml(docs)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
        click.echo("wrote %s (validated); apply with: kubectl apply -f %s" % (output, output), err=True)
    else:
        click.echo(text, nl=False)


@deploy.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path())
def deploy_validate(files: Any) -> None:
    """Validate manifests offline against Kubernetes and CRD schemas; errors name document and field."""
    from ..deploy.validate import validate_files

    try:
        errors = validate_files(files)
    except EnvserveError as exc:
        _fail(exc)
        return
    if errors:
        click.echo("\n".join(errors), err=True)
        sys.exit(4)
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
@click.option("--target", type=click.Choice(["seldon", "kserve", "k8s"]))
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
@_platform_option
def deploy_wizard(answers_file: Optional[str], platform_file: Optional[str], **flags: Any) -> None:
    """Interactive deployment wizard (MLflow registry via MLFLOW_TRACKING_URI, or a model URI)."""
    import os

    from ..deploy.platform import PlatformConfig
    from ..deploy.validate import validate_documents
    from ..deploy.wizard import answers_from_file, run_wizard

    try:
        answers = answers_from_file(answers_file) if answers_file else {}
        answers.update({k: v for k, v in flags.items() if v is not None})
        result = run_wizard(
            answers,
            PlatformConfig.load(platform_file),
            os.environ.get("MLFLOW_TRACKING_URI"),
            interactive=sys.stdin.isatty(),
        )
        import yaml

        errors = validate_documents(list(yaml.safe_load_all(result.manifest)), result.output)
    except EnvserveError as exc:
        _fail(exc)
        return
    except (click.Abort, EOFError):
        click.echo("\ncancelled; nothing written", err=True)
        sys.exit(1)
    if errors:
        click.echo("\n".join(errors), err=True)
        sys.exit(4)
    with open(result.output, "w", encoding="utf-8") as f:
        f.write(result.manifest)
    click.echo("wrote %s (validated)" % result.output)
    click.echo("apply with: kubectl apply -f %s" % result.output)


@cli.group()
def platform() -> None:
    """Platform default images per server type and protocol (Seldon's predictor_servers shape)."""


@platform.command("show")
@_platform_option
def platform_show(platform_file: Optional[str]) -> None:
    """Print the effective default images (built-in defaults overlaid with the platform file)."""
    from ..deploy.platform import PlatformConfig

    try:
        config = PlatformConfig.load(platform_file)
    except EnvserveError as exc:
        _fail(exc)
        return
    for server, entry in sorted(config.merged().items()):
        for protocol, image in sorted(entry["protocols"].items()):
            source = "platform" if config.image_for(server, protocol) else "built-in"
            click.echo(
                "%-18s %-10s %s:%s  (%s)"
                % (server, protocol, image["image"], image["defaultImageVersion"], source)
            )


@platform.command("import")
@click.argument("configmap", type=click.Path(exists=True, dir_okay=False))
@_platform_option
def platform_import(configmap: str, platform_file: Optional[str]) -> None:
    """Read predictor_servers from a seldon-config ConfigMap YAML into the platform file."""
    from ..deploy.platform import PlatformConfig

    try:
        with open(configmap, encoding="utf-8") as f:
            config = PlatformConfig.from_configmap(f.read(), configmap)
        path = config.save(platform_file)
    except EnvserveError as exc:
        _fail(exc)
        return
    click.echo("imported %d server types into %s" % (len(config.predictor_servers), path))


@platform.command("export")
@click.option("--configmap", "as_configmap", is_flag=True, help="As a seldon-config ConfigMap (YAML).")
@click.option("--name", default="seldon-config", show_default=True)
@click.option("--namespace", default="seldon-system", show_default=True)
@_platform_option
def platform_export(as_configmap: bool, name: str, namespace: str, platform_file: Optional[str]) -> None:
    """Print the platform file, or a ConfigMap to apply to the cluster."""
    import json

    from ..deploy.manifest import dump_yaml
    from ..deploy.platform import PlatformConfig

    try:
        config = PlatformConfig.load(platform_file)
    except EnvserveError as exc:
        _fail(exc)
        return
    if as_configmap:
        click.echo(dump_yaml([config.to_configmap(name, namespace)]), nl=False)
    else:
        click.echo(json.dumps({"predictor_servers": config.predictor_servers}, indent=2, sort_keys=True))


@platform.command("set-image")
@click.argument("server")
@click.argument("image")
@click.option("--protocol", type=click.Choice(["seldon", "v2"]), required=True)
@_platform_option
def platform_set_image(server: str, image: str, protocol: str, platform_file: Optional[str]) -> None:
    """Set the default IMAGE (NAME:TAG) of SERVER for a protocol."""
    from ..deploy.platform import PlatformConfig

    try:
        config = PlatformConfig.load(platform_file)
        config.set_image(server, protocol, image)
        path = config.save(platform_file)
    except EnvserveError as exc:
        _fail(exc)
        return
    click.echo("%s %s -> %s (%s)" % (server, protocol, image, path))


# -- envserve image ... ------------------------------------------------------------------------------


@cli.group()
def image() -> None:
    """Container images with the model environments prepared at build time; SBOMs and scans."""


_image_options = [
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
    click.option("--uid", type=int, default=8888, show_default=True, help="User the server runs as."),
    click.option("--extras", default="sklearn", show_default=True, help="envserve extras to install."),
]


_F = TypeVar("_F", bound=Callable[..., Any])


def _with(options: List[Any]) -> Callable[[_F], _F]:
    def decorate(f: _F) -> _F:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


@image.command("dockerfile")
@click.argument(
    "model_repository", required=False, default=".", type=click.Path(file_okay=False, exists=True)
)
@_with(_image_options)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE instead of stdout.")
def image_dockerfile(
    model_repository: str,
    base: Optional[str],
    wheelhouse: Optional[str],
    copy_models: bool,
    uid: int,
    extras: str,
    output: Optional[str],
) -> None:
    """Write the Dockerfile for MODEL_REPOSITORY (from the template in envserve/image/templates)."""
    from ..image.dockerfile import DEFAULT_BASE, render_dockerfile

    text = render_dockerfile(
        model_repository, base or DEFAULT_BASE, bool(wheelhouse), copy_models, uid, extras
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
@_with(_image_options)
@click.option("-t", "--tag", required=True, help="Image reference to tag, e.g. localhost/models:1.")
@click.option(
    "--builder", type=click.Choice(["podman", "buildah", "docker"]), help="[default: the first found]"
)
def image_build(
    model_repository: str,
    base: Optional[str],
    wheelhouse: Optional[str],
    copy_models: bool,
    uid: int,
    extras: str,
    tag: str,
    builder: Optional[str],
) -> None:
    """Build the image with docker, podman or buildah (the build log is streamed); print its reference."""
    from ..image.build import build_image
    from ..image.dockerfile import DEFAULT_BASE

    try:
        ref = build_image(
            model_repository, tag, base or DEFAULT_BASE, wheelhouse, builder, copy_models, uid, extras
        )
    except EnvserveError as exc:
        _fail(exc)
        return
    click.echo(ref)


@image.command("sbom")
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option(
    "--environment",
    "is_environment",
    is_flag=True,
    help="SOURCE is an environment directory (cyclonedx-py), not an image (syft).",
)
def image_sbom(source: str, output: str, is_environment: bool) -> None:
    """CycloneDX SBOM of an image (SOURCE as syft takes it, e.g. oci-archive:img.tar) or of an environment."""
    from ..image.sbom import environment_sbom
    from ..image.sbom import image_sbom as sbom_of_image

    try:
        path = environment_sbom(source, output) if is_environment else sbom_of_image(source, output)
    except EnvserveError as exc:
        _fail(exc)
        return
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

    try:
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
        if os_updates:
            pending = scan.pending_security_updates(image_ref)
            click.echo("%d pending Debian security updates%s" % (len(pending), ":" if pending else ""))
            for line in pending:
                click.echo("  " + line)
            failed = failed or bool(pending)
    except scan.NoScanner as exc:
        click.echo("envserve: %s" % exc, err=True)
        sys.exit(scan.NO_SCANNER_EXIT)
    except EnvserveError as exc:
        _fail(exc)
        return
    sys.exit(1 if failed else 0)
