"""The ``envserve`` command line: thin commands that build settings and call one library function.

A module per command group (``serve``, ``env``, ``deploy``, ``platform``, ``image``); heavy modules are
imported inside the commands so that ``envserve --help`` stays instant. Commands raise envserve errors and
never exit themselves: :class:`EnvserveGroup` catches them in one place, prints ``envserve: error: ...``
and exits with the code :data:`EXIT_CODES` gives (click's ``ClickException.exit_code`` idea, for our error
tree). Usage errors are click's own (exit 2); any other exception is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, List, Optional, Tuple, Type

import click

from ..errors import Cancelled, EnvserveError, NoScanner, SettingsError, UpgradeMismatch, VulnerabilitiesFound

__all__ = ["EXIT_CODES", "cli", "exit_code", "main"]

#: Exit codes, most specific error first (docs/lifecycle.md has the same table). 0 is success, 2 a usage
#: error (click), and 1 also an unexpected error (a traceback is printed).
EXIT_CODES: List[Tuple[Type[EnvserveError], int]] = [
    (Cancelled, 1),
    (VulnerabilitiesFound, 1),
    (SettingsError, 3),
    (NoScanner, 5),
    (UpgradeMismatch, 6),
    (EnvserveError, 4),
]


def exit_code(exc: EnvserveError) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return 4


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


class EnvserveGroup(click.Group):
    """The root group: the one place envserve errors become a message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EnvserveError as exc:
            click.echo("envserve: error: %s" % exc, err=True)
            ctx.exit(exit_code(exc))


@click.group(cls=EnvserveGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="envserve")
def cli() -> None:
    """envserve: serve models over the Open Inference Protocol, each in its own Python environment."""


def main(argv: Optional[List[str]] = None) -> None:
    cli.main(args=argv, prog_name="envserve")


def _register() -> None:
    from . import deploy, env, image, mlflow, mlserver, platform, serve

    cli.add_command(serve.serve)
    cli.add_command(serve.health)
    cli.add_command(env.env)
    cli.add_command(deploy.deploy)
    cli.add_command(platform.platform)
    cli.add_command(image.image)
    cli.add_command(mlserver.mlserver)
    cli.add_command(mlflow.mlflow)


_register()
