"""``envserve platform ...``: platform-wide default images per server type and protocol."""

from __future__ import annotations

from typing import Optional

import click

from .options import platform_option

__all__ = ["platform"]


@click.group()
def platform() -> None:
    """Platform default images per server type and protocol (Seldon's predictor_servers shape)."""


@platform.command("show")
@platform_option
def platform_show(platform_file: Optional[str]) -> None:
    """Print the effective default images (built-in defaults overlaid with the platform file)."""
    from ..deploy.platform import PlatformConfig

    config = PlatformConfig.load(platform_file)
    for server, entry in sorted(config.merged().items()):
        for protocol, image in sorted(entry["protocols"].items()):
            source = "platform" if config.image_for(server, protocol) else "built-in"
            click.echo(
                "%-18s %-10s %s:%s  (%s)"
                % (server, protocol, image["image"], image["defaultImageVersion"], source)
            )


@platform.command("import")
@click.argument("configmap", type=click.Path(exists=True, dir_okay=False))
@platform_option
def platform_import(configmap: str, platform_file: Optional[str]) -> None:
    """Read predictor_servers from a seldon-config ConfigMap YAML into the platform file."""
    from ..deploy.platform import PlatformConfig

    with open(configmap, encoding="utf-8") as f:
        config = PlatformConfig.from_configmap(f.read(), configmap)
    path = config.save(platform_file)
    click.echo("imported %d server types into %s" % (len(config.predictor_servers), path))


@platform.command("export")
@click.option("--configmap", "as_configmap", is_flag=True, help="As a seldon-config ConfigMap (YAML).")
@click.option("--name", default="seldon-config", show_default=True)
@click.option("--namespace", default="seldon-system", show_default=True)
@platform_option
def platform_export(as_configmap: bool, name: str, namespace: str, platform_file: Optional[str]) -> None:
    """Print the platform file, or a ConfigMap to apply to the cluster."""
    import json

    from ..deploy.manifest import dump_yaml
    from ..deploy.platform import PlatformConfig

    config = PlatformConfig.load(platform_file)
    if as_configmap:
        click.echo(dump_yaml([config.to_configmap(name, namespace)]), nl=False)
    else:
        click.echo(json.dumps({"predictor_servers": config.predictor_servers}, indent=2, sort_keys=True))


@platform.command("set-image")
@click.argument("server")
@click.argument("image")
@click.option("--protocol", type=click.Choice(["seldon", "v2"]), required=True)
@platform_option
def platform_set_image(server: str, image: str, protocol: str, platform_file: Optional[str]) -> None:
    """Set the default IMAGE (NAME:TAG) of SERVER for a protocol."""
    from ..deploy.platform import PlatformConfig

    config = PlatformConfig.load(platform_file)
    config.set_image(server, protocol, image)
    path = config.save(platform_file)
    click.echo("%s %s -> %s (%s)" % (server, protocol, image, path))
