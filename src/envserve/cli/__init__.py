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
