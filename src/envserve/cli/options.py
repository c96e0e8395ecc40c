"""Options and formatting shared by several command groups."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, TypeVar

import click

__all__ = ["cache_option", "emit", "platform_option", "size", "with_options"]

cache_option = click.option(
    "--cache",
    "cache_dir",
    type=click.Path(file_okay=False),
    help="Environment cache [default: ENVSERVE_ENV_CACHE or ~/.cache/envserve/environments].",
)

platform_option = click.option(
    "--platform",
    "platform_file",
    type=click.Path(dir_okay=False),
    help="Platform file [default: ENVSERVE_PLATFORM or ~/.config/envserve/platform.json].",
)

_F = TypeVar("_F", bound=Callable[..., Any])


def with_options(options: List[Any]) -> Callable[[_F], _F]:
    """Apply a list of click options, first listed first in ``--help``."""

    def decorate(f: _F) -> _F:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


def size(n: Optional[int]) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return "%.0f %s" % (value, unit) if unit == "B" else "%.1f %s" % (value, unit)
        value /= 1024
    return str(n)


def emit(text: str, output: Optional[str], note: Optional[str] = None) -> None:
    """Print ``text``, or write it to ``output`` and say so on stderr (``note``, default "wrote OUTPUT")."""
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
        click.echo(note or "wrote %s" % output, err=True)
    else:
        click.echo(text, nl=False)
