"""``envserve env ...``: the environment cache, packing, preparing a repository's environments."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import click

from ..errors import EnvironmentSetupError, EnvserveError
from .options import cache_option, emit, size

__all__ = ["env"]


@click.group()
def env() -> None:
    """Model environments: list and prune the cache, pack a venv, prepare a repository's environments."""


@env.command("list")
@cache_option
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
                size(r.get("size")),
                used,
                ",".join(r.get("models", [])) or "-",
                r.get("source", ""),
            )
        )


@env.command("prune")
@cache_option
@click.option(
    "--older-than", type=float, default=30.0, show_default=True, help="Remove environments unused for DAYS."
)
@click.option("--all", "everything", is_flag=True, help="Remove every environment no running server uses.")
def env_prune(cache_dir: Optional[str], older_than: float, everything: bool) -> None:
    """Remove cached environments (never one a running server holds)."""
    from ..environments import EnvironmentCache

    removed = EnvironmentCache(cache_dir).prune(older_than * 86400, everything)
    for r in removed:
        click.echo("removed %s (%s, %s)" % (r["hash"][:12], r.get("source", ""), size(r.get("size"))))
    click.echo("%d environment(s) removed" % len(removed))


@env.command("pack")
@click.argument("environment", type=click.Path(exists=True))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Tarball to write: .tar.zst (zstd, the default: ENVIRONMENT's name + .tar.zst) or .tar.gz.",
)
@click.option(
    "--level", type=click.IntRange(1, 19), help="Compression level (zstd 1-19, default 3; gzip 1-9)."
)
@click.option(
    "--compile/--no-compile",
    "compile_bytecode",
    default=True,
    show_default=True,
    help="Pack the bytecode of every module (compiled by the environment's interpreter; ENVIRONMENT is not "
    "changed), so the first start after unpacking, and every start from a read-only copy, does not compile.",
)
def env_pack(environment: str, output: Optional[str], level: Optional[int], compile_bytecode: bool) -> None:
    """Pack a venv, with its interpreter, into a tarball that runs on machines without that Python."""
    from ..environments.pack import pack_environment

    if output is None:
        output = os.path.basename(os.path.abspath(environment)) + ".tar.zst"
    manifest = pack_environment(environment, output, level, compile_bytecode)
    click.echo(
        "packed Python %s from %s into %s (%s%s)"
        % (
            manifest["python"],
            environment,
            output,
            size(manifest["size"]),
            ", bytecode of %d modules" % manifest["bytecode"] if manifest["bytecode"] else "",
        )
    )


@env.command("prepare")
@click.argument("model_repository", required=False, type=click.Path(file_okay=False, exists=True))
@click.option(
    "--environment",
    "environments",
    multiple=True,
    metavar="SOURCE",
    help="Also prepare this environment without its model: a requirements.txt, python_env.yaml or "
    "conda.yaml, a tarball, a model folder, or a model URI (models:/name/1, runs:/..., s3://..., gs://..., "
    "wasbs://...: "
    "only MLmodel and the environment files are fetched). Repeatable.",
)
@click.option(
    "--worker-code",
    is_flag=True,
    help="Also lay out the worker's code link in the cache (an image does, so a read-only one needs no "
    "write at start).",
)
@click.option(
    "--as-of",
    metavar="DATE|created",
    help="Build environments from specs with the package index as it was at DATE (YYYY-MM-DD[THH:MM:SS], "
    "UTC), or at each MLflow model's creation ('created': its utc_time_created), so unpinned requirements "
    "get the versions of the model's time; the resolved pins are recorded with the environment.",
)
@cache_option
def env_prepare(
    model_repository: Optional[str],
    environments: Tuple[str, ...],
    worker_code: bool,
    as_of: Optional[str],
    cache_dir: Optional[str],
) -> None:
    """Extract or build the environment of every model in MODEL_REPOSITORY into the cache (as at start-up),
    and of every --environment. Without MODEL_REPOSITORY the current directory is scanned, unless
    --environment or --worker-code is given."""
    import dataclasses

    from ..environments import EnvironmentCache, EnvironmentSource, environment_source
    from ..environments.source import resolve_as_of
    from ..settings.model import ModelSettings
    from ..settings.repository import scan_repository
    from ..settings.server import ServerSettings
    from . import configure_logging

    configure_logging("info")
    cache = EnvironmentCache(cache_dir, compile_bytecode=True)  # for images run read-only
    todo: List[Tuple[str, Any]] = []  # (name, model settings or an --environment target)
    default_tarball = None
    if model_repository is not None or not (environments or worker_code):
        repository = model_repository or "."
        default_tarball = ServerSettings.from_sources(repository).env_tarball or None
        todo += [(e.settings.name, e.settings) for e in scan_repository(repository) if e.settings is not None]
    todo += [(target, target) for target in environments]
    failed = []
    for name, what in todo:
        try:
            if isinstance(what, str):
                from ..image.bake import bake_source

                source: Optional[EnvironmentSource] = bake_source(what, cache.root)
                settings = ModelSettings(
                    name=name, folder=os.path.dirname(what) if os.path.isfile(what) else what
                )
            else:
                source = environment_source(what, default_tarball)
                settings = what
            if source is None:
                continue
            if as_of and source.kind == "spec":
                source = dataclasses.replace(source, as_of=resolve_as_of(settings, as_of))
            prepared = cache.prepare(source, name)
            prepared.release()
            click.echo(
                "%s: %s (Python %s) %s%s"
                % (
                    name,
                    (prepared.digest or "")[:12],
                    prepared.python_version,
                    prepared.root,
                    " as of %s" % prepared.record["as_of"] if prepared.record.get("as_of") else "",
                )
            )
        except EnvserveError as exc:  # every one is tried; the failures are summed up at the end
            failed.append(name)
            click.echo("%s: error: %s" % (name, exc), err=True)
    if worker_code:
        from ..workers.process import worker_code_dir

        click.echo("worker code: %s" % worker_code_dir(cache.root))
    if failed:
        raise EnvironmentSetupError(
            "%d environment(s) could not be prepared: %s" % (len(failed), ", ".join(failed))
        )


def _model_at_hand(target: str, cache: Any) -> Any:
    """The settings of one model: a folder (with or without model-settings.json), a model-settings.json,
    or a model URI (fetched next to the environment cache)."""
    from ..settings.model import MODEL_SETTINGS_FILE, ModelSettings
    from ..storage import fetch, is_remote, name_from_uri

    if is_remote(target):
        local = fetch(target, os.path.dirname(cache.root))
        settings_file = os.path.join(local, MODEL_SETTINGS_FILE)
        if os.path.isfile(settings_file):
            return ModelSettings.load(settings_file)
        return ModelSettings(name=name_from_uri(target), folder=local)
    if os.path.isfile(target) and os.path.basename(target) == MODEL_SETTINGS_FILE:
        return ModelSettings.load(target)
    if os.path.isfile(os.path.join(target, MODEL_SETTINGS_FILE)):
        return ModelSettings.load(os.path.join(target, MODEL_SETTINGS_FILE))
    if not os.path.exists(target):
        raise EnvserveError("%s: no such model folder, settings file or URI" % target)
    folder = os.path.abspath(target)
    return ModelSettings(name=os.path.basename(folder.rstrip(os.sep)), folder=folder)


def _environment_of(settings: Any, cache: Any) -> Optional[Dict[str, Any]]:
    """The model's environment prepared as the server would (None: the server's own)."""
    from ..environments import environment_source

    source = environment_source(settings, None)
    if source is None:
        return None
    prepared = cache.prepare(source, settings.name)
    prepared.release()
    return {
        "path": prepared.root,
        "python": prepared.python_version,
        "hash": prepared.digest,
        "kind": prepared.kind,
        "source": prepared.source,
    }


def _bom_of(
    settings: Any, cache: Any, source_uri: Optional[str], server_packages: bool = True
) -> Dict[str, Any]:
    from .. import __version__
    from ..environments.bom import model_bom
    from ..runtimes import runtime_name

    return model_bom(
        settings,
        runtime=runtime_name(settings),
        environment=_environment_of(settings, cache),
        source_uri=source_uri or settings.uri,
        tool_version=__version__,
        server_packages=server_packages,
    )


def repository_boms(repository: str, cache_dir: Optional[str]) -> List[Dict[str, Any]]:
    """The ML-BOM of every model of a repository (their environments prepared in the cache)."""
    from ..environments import EnvironmentCache
    from ..settings.repository import scan_repository

    cache = EnvironmentCache(cache_dir)
    # in an image, a model served in process runs on the image's own packages, which its SBOM lists
    return [
        _bom_of(e.settings, cache, None, server_packages=False)
        for e in scan_repository(repository)
        if e.settings is not None
    ]


@env.command("bom")
@click.argument("model")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File to write [default: stdout].")
@cache_option
def env_bom(model: str, output: Optional[str], cache_dir: Optional[str]) -> None:
    """CycloneDX 1.6 ML-BOM of MODEL (a folder, its model-settings.json, or a model URI): its files with
    SHA-256, the Python and exact packages of the environment it runs in, its runtime and MLflow run."""
    import json

    from ..environments import EnvironmentCache

    cache = EnvironmentCache(cache_dir)
    settings = _model_at_hand(model, cache)
    remote = "://" in model or model.startswith(("models:", "runs:"))
    doc = _bom_of(settings, cache, model if remote else None)
    emit(
        json.dumps(doc, indent=2) + "\n",
        output,
        "wrote %s (%d components)" % (output, len(doc["components"])),
    )


@env.command("check-upgrade")
@click.argument("model")
@click.option(
    "--candidate",
    required=True,
    help="The environment to try: a requirements file, python_env.yaml, conda.yaml, a tarball, an existing "
    "environment directory, or 'server' (the server's own).",
)
@click.option(
    "--inputs",
    type=click.Path(exists=True, dir_okay=False),
    help="Recorded requests: V2 JSON lines (.jsonl), MLflow dataframe_split JSON, CSV or Parquet "
    "[default: the model's MLflow input_example, else rows generated from its metadata].",
)
@click.option("--rows", type=click.IntRange(1), default=64, show_default=True, help="Rows to generate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated rows.")
@click.option("--batch", type=click.IntRange(1), default=32, show_default=True, help="Rows per request.")
@click.option("--rtol", type=float, default=1e-7, show_default=True, help="Relative tolerance of 'close'.")
@click.option("--atol", type=float, default=0.0, show_default=True, help="Absolute tolerance of 'close'.")
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text", show_default=True
)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File to write [default: stdout].")
@cache_option
def env_check_upgrade(
    model: str,
    candidate: str,
    inputs: Optional[str],
    rows: int,
    seed: int,
    batch: int,
    rtol: float,
    atol: float,
    fmt: str,
    output: Optional[str],
    cache_dir: Optional[str],
) -> None:
    """Load MODEL in its own environment and in a candidate one side by side, replay the same inputs
    through both and compare the outputs. Exits 0 only when every output matches within the tolerance
    (6 otherwise, with the report)."""
    import asyncio

    from ..environments import EnvironmentCache
    from ..errors import UpgradeMismatch
    from ..server.upgrade import check_upgrade
    from ..server.upgrade_report import render_html, render_json, render_text
    from . import configure_logging

    configure_logging("warning")
    cache = EnvironmentCache(cache_dir)
    settings = _model_at_hand(model, cache)
    report = asyncio.run(
        check_upgrade(
            settings,
            candidate,
            inputs=inputs,
            rows=rows,
            seed=seed,
            batch=batch,
            rtol=rtol,
            atol=atol,
            cache=cache,
        )
    )
    text = {"text": render_text, "json": render_json, "html": render_html}[fmt](report)
    emit(text, output)
    if not report.ok:
        raise UpgradeMismatch(
            "model %s is %s in candidate %s (see the report)" % (report.model, report.verdict, candidate)
        )
