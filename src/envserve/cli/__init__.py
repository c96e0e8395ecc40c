"""The ``envserve`` command line: thin commands that build settings and call one library function.

Heavy modules are imported inside the commands so that ``envserve --help`` stays instant.
Exit codes (one table, :data:`EXIT_CODES`): 0 success, 1 unexpected error, 2 usage error (click),
3 invalid settings, 4 other envserve error.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Dict, List, Optional, Tuple, Type

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
@click.option("--max-request-size", type=int, help="Largest request body in bytes [default: 100 MiB].")
@click.option(
    "--graceful-timeout", type=float, help="Seconds to drain in-flight requests on SIGTERM [default: 30]."
)
@click.option(
    "--parallel-workers", type=int, help="Default worker processes per model with its own environment."
)
@click.option(
    "--inference-timeout", type=float, help="Seconds one inference may take in a worker [default: 60]."
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="[default: info]")
def serve(model_repository: Optional[str], **flags: Any) -> None:
    """Serve every model found under MODEL_REPOSITORY (default: the current directory).

    Settings come from, highest precedence first: these flags, ENVSERVE_* environment variables,
    MODEL_REPOSITORY/settings.json, built-in defaults.
    """
    from ..settings import ServerSettings

    overrides: Dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    try:
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
