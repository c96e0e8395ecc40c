"""``envserve mlflow ...``: what ``mlflow models serve --enable-mlserver`` and ``mlflow models build-docker
--enable-mlserver`` did before MLflow removed them (3.13), with envserve as the server.

Both serve the model as ``mlflow-model`` (the name MLflow gave it for MLServer) over V2 REST and gRPC, and
over MLflow's own ``/invocations``, in the model's own environment when its MLmodel folder declares one.
MLflow's deployment plugin for the same (``mlflow deployments run-local -t envserve``) is
:mod:`envserve.mlflow_plugin`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Dict, Optional

import click

__all__ = ["MODEL_NAME", "build_docker", "mlflow", "model_folder", "serve_uri", "write_settings"]

#: The name ``mlflow models serve --enable-mlserver`` gave the model (MLServer's MLSERVER_MODEL_NAME).
MODEL_NAME = "mlflow-model"


@click.group("mlflow", context_settings={"help_option_names": ["-h", "--help"]})
def mlflow() -> None:
    """MLflow's --enable-mlserver, with envserve: serve a model URI, or build its image."""


@mlflow.command("serve")
@click.option("-m", "--model-uri", required=True, help="models:/name/1, runs:/id/model, s3://..., a path.")
@click.option("-p", "--port", type=int, default=5000, show_default=True, help="HTTP port (as mlflow's).")
@click.option("-h", "--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("-w", "--workers", type=int, help="Worker processes for a model in its own environment.")
@click.option("--grpc-port", type=int, default=-1, show_default=True, help="gRPC port (-1: off).")
@click.option("--name", default=MODEL_NAME, show_default=True, help="The model's name in V2 paths.")
@click.option(
    "--env-manager",
    type=click.Choice(["local", "virtualenv", "uv", "conda"]),
    default="virtualenv",
    show_default=True,
    help="local: the model runs in this environment; the others: in an environment built from the "
    "model's own python_env.yaml / requirements.txt / conda.yaml (cached), as MLflow's.",
)
def serve(
    model_uri: str, port: int, host: str, workers: Optional[int], grpc_port: int, name: str, env_manager: str
) -> None:
    """Serve MODEL_URI as `mlflow models serve -m MODEL_URI --enable-mlserver` did."""
    serve_uri(model_uri, port, host, workers, grpc_port, name, _environment(env_manager))


@mlflow.command("build-docker")
@click.option("-m", "--model-uri", required=True, help="models:/name/1, runs:/id/model, s3://..., a path.")
@click.option("-n", "--name", default="mlflow-pyfunc-servable", show_default=True, help="Image name.")
@click.option("--base", default=None, help="Base image [default: python:3.11-slim-bookworm].")
@click.option(
    "--wheelhouse", type=click.Path(file_okay=False, exists=True), help="Install offline from wheels."
)
@click.option(
    "--builder", type=click.Choice(["podman", "buildah", "docker"]), help="[default: the first found]"
)
@click.option(
    "--env-manager",
    type=click.Choice(["local", "virtualenv", "uv", "conda"]),
    default="virtualenv",
    show_default=True,
    help="local: the model runs in the server's environment; the others: in its own, built in the image.",
)
def build_docker_command(
    model_uri: str,
    name: str,
    base: Optional[str],
    wheelhouse: Optional[str],
    builder: Optional[str],
    env_manager: str,
) -> None:
    """Build an image serving MODEL_URI on port 8080, as `mlflow models build-docker --enable-mlserver`
    did: the model is fetched now and copied in, its environment prepared at build time."""
    click.echo(build_docker(model_uri, name, base, wheelhouse, builder, _environment(env_manager)))


def _environment(env_manager: str) -> Dict[str, Any]:
    """MLflow's --env-manager as model parameters: local is the server's environment; virtualenv, uv and
    conda the model's own (envserve builds every spec MLflow writes; conda.yaml's pip packages)."""
    return {"environment": "server"} if env_manager == "local" else {}


def serve_uri(
    model_uri: str,
    port: int,
    host: str = "127.0.0.1",
    workers: Optional[int] = None,
    grpc_port: int = -1,
    name: str = MODEL_NAME,
    parameters: Optional[Dict[str, Any]] = None,
) -> None:
    """Serve one model URI in the foreground (until SIGTERM/SIGINT), with these model ``parameters``
    (``environment``, ``environment_python``, ...) beside its ``uri``."""
    from ..server.logs import announce, configure
    from ..server.serve import serve as run
    from ..settings.server import ServerSettings

    with tempfile.TemporaryDirectory(prefix="envserve-mlflow-") as repository:
        write_settings(repository, name, absolute_uri(model_uri), parameters)
        overrides: Dict[str, Any] = {"http_port": port, "grpc_port": grpc_port, "host": host}
        if workers is not None:
            overrides["parallel_workers"] = workers
        if "ENVSERVE_TRUST_MODEL_CODE" not in os.environ:
            # the operator named this one model on the command line, as `mlflow models serve` runs it
            overrides["trust_model_code"] = True
        settings = ServerSettings.from_sources(repository, overrides)
        configure(settings.log_level, settings.log_format, settings.logging_settings)
        announce(settings)
        run(settings, announced=True)


def write_settings(
    repository: str, name: str, model_uri: str, parameters: Optional[Dict[str, Any]] = None
) -> str:
    """``repository/name/model-settings.json`` naming ``model_uri`` (and ``implementation``, when the
    parameters name one); returns the folder."""
    parameters = dict(parameters or {})
    doc: Dict[str, Any] = {"name": name}
    if "implementation" in parameters:
        doc["implementation"] = parameters.pop("implementation")
    doc["parameters"] = dict(parameters, uri=model_uri)
    folder = os.path.join(repository, name)
    os.makedirs(folder, exist_ok=True)
    partial = os.path.join(folder, "model-settings.json.partial")
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
    os.replace(partial, os.path.join(folder, "model-settings.json"))
    return folder


def absolute_uri(uri: str) -> str:
    """A local path as an absolute one (model-settings.json resolves relative paths from its folder)."""
    from ..storage import is_remote

    if is_remote(uri):
        return uri
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return os.path.abspath(os.path.expanduser(path))


def model_folder(
    model_uri: str, repository: str, name: str = MODEL_NAME, parameters: Optional[Dict[str, Any]] = None
) -> str:
    """Fetch ``model_uri`` into ``repository/name`` (its artifacts and a model-settings.json naming it)."""
    from ..settings.paths import default_cache_root
    from ..storage import fetch

    # fetched beside the environments, as the server fetches
    local = fetch(absolute_uri(model_uri), os.path.dirname(default_cache_root()))
    folder = os.path.join(repository, name)
    if os.path.isdir(local):
        shutil.copytree(local, folder, ignore=shutil.ignore_patterns("__pycache__", "model-settings.json"))
    else:
        os.makedirs(folder)
        shutil.copy(local, folder)
    doc: Dict[str, Any] = {"name": name}
    if parameters:
        doc["parameters"] = dict(parameters)
    with open(os.path.join(folder, "model-settings.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f)
    return folder


def build_docker(
    model_uri: str,
    tag: str,
    base: Optional[str] = None,
    wheelhouse: Optional[str] = None,
    builder: Optional[str] = None,
    parameters: Optional[Dict[str, Any]] = None,
) -> str:
    from ..image.build import build_image
    from ..image.dockerfile import DEFAULT_BASE

    with tempfile.TemporaryDirectory(prefix="envserve-mlflow-") as repository:
        model_folder(model_uri, repository, MODEL_NAME, parameters)
        return build_image(repository, tag, base or DEFAULT_BASE, wheelhouse, builder)
