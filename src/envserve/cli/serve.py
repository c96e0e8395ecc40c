"""``envserve serve``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, Optional

import click

from ..errors import EnvserveError

if TYPE_CHECKING:
    from ..environments.cache import EnvironmentCache
    from ..settings.server import ServerSettings

__all__ = ["health", "serve"]


@click.command()
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
@click.option(
    "--max-queue-size", type=int, help="Requests one model may hold waiting; 503 beyond [default: 256]."
)
@click.option(
    "--max-connections", type=int, help="REST requests in flight / gRPC connections [default: 1024]."
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="[default: info]")
@click.option(
    "--model-uri",
    help="Serve this model without a settings file: models:/name/version, models:/name@alias, "
    "runs:/<run>/<path>, s3://bucket/prefix, gs://bucket/prefix, Azure Blob "
    "(https://<account>.blob.core.windows.net/<container>/<path>, wasbs://, abfss://), "
    "https://.../model.tar.gz or a path.",
)
@click.option("--model-name", help="Name for --model-uri [default: from the URI].")
@click.option(
    "--trust-model-code",
    is_flag=True,
    default=None,
    help="Run models' own Python (runtime classes, MLflow PythonModels) [default: off; "
    "ENVSERVE_TRUST_MODEL_CODE; docs/security.md].",
)
def serve(model_repository: Optional[str], **flags: Any) -> None:
    """Serve every model found under MODEL_REPOSITORY (default: the current directory).

    Settings come from, highest precedence first: these flags, ENVSERVE_* environment variables, the
    container contract the environment describes (Seldon Core v1's PREDICTIVE_UNIT_*, MLServer's
    MLSERVER_* as KServe and Seldon Core 2 set them; docs/deploy.md), MODEL_REPOSITORY/settings.json,
    built-in defaults. Started with no arguments under a contract, it serves what the contract names.
    """
    from ..server.logs import announce, configure
    from ..settings.server import ServerSettings

    overrides: Dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if flags.get("model_uri") and model_repository is None:
        overrides["model_repository"] = ""  # only the --model-uri model, no repository scan
    settings = ServerSettings.from_sources(model_repository, overrides)
    configure(settings.log_level, settings.log_format, settings.logging_settings)
    announce(settings)
    environments = _begin_extractions(settings)
    from ..server.serve import serve as run  # imported while the extractions run

    run(settings, environments=environments, announced=True)


def _begin_extractions(settings: ServerSettings) -> EnvironmentCache:
    """The environment cache, with the tarballs it has never seen already extracting (each in a process of
    its own): the server's default one (``MLSERVER_ENV_TARBALL``, as KServe and Seldon Core set it for a
    model fetched at run time) and the repository's models'. The server's imports and start then overlap
    them: a first start from a tarball is what every new pod pays. One that no model asks for after all is
    stopped once the models have loaded."""
    from ..environments import EnvironmentCache, EnvironmentSource, environment_source
    from ..settings.repository import scan_repository

    cache = EnvironmentCache(settings.environments_dir or None)
    if not settings.load_models_at_startup:
        return cache
    if settings.env_tarball:  # the path environment_source gives every model without one of its own
        cache.begin(EnvironmentSource("tarball", os.path.abspath(os.path.expanduser(settings.env_tarball))))
    repository = settings.model_repository
    if not repository or not os.path.isdir(repository):
        return cache
    for entry in scan_repository(repository):
        if entry.settings is None:
            continue
        try:
            source = environment_source(entry.settings, settings.env_tarball or None)
        except EnvserveError:
            continue  # the registry reports it when it loads the model
        if source is not None:
            cache.begin(source)
    return cache


@click.command()
@click.option("--live", is_flag=True, help="Ask for liveness instead of readiness.")
@click.option("--timeout", type=float, default=2.0, show_default=True, help="Seconds to wait for the answer.")
def health(live: bool, timeout: float) -> None:
    """Exit 0 when the server these settings describe answers ready (or live), 1 otherwise.

    For a container's HEALTHCHECK: it reads the port the way `envserve serve` does (flags aside), so it
    follows whichever operator contract started the server."""
    import urllib.error
    import urllib.request

    from ..settings.server import ServerSettings

    settings = ServerSettings.from_sources()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = "http://%s:%d/v2/health/%s" % (
        "[%s]" % host if ":" in host else host,
        settings.http_port,
        "live" if live else "ready",
    )
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            ok = response.status == 200
    except (urllib.error.URLError, OSError) as exc:
        click.echo("%s: %s" % (url, getattr(exc, "reason", exc)), err=True)
        raise SystemExit(1) from None
    click.echo("%s: %s" % (url, "ok" if ok else "not ready"))
    raise SystemExit(0 if ok else 1)
