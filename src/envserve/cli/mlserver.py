"""``mlserver`` as MLServer's scripts, Helm charts and images call it, mapped onto envserve's commands.

- ``mlserver start FOLDER``: ``envserve serve FOLDER`` (settings.json, model-settings.json and the
  ``MLSERVER_*`` variables mean what they mean to MLServer);
- ``mlserver build FOLDER -t TAG [--no-cache]``: ``envserve image build`` of the folder, with the folder's
  ``requirements.txt`` installed beside envserve, as MLServer installs it into its image;
- ``mlserver dockerfile FOLDER [-i]``: the Dockerfile (and ``.dockerignore``) ``docker build FOLDER``
  builds that image from;
- ``mlserver infer ...``: MLServer's batch client (a file of V2 requests, one per line, to a model; the
  answers, one per line, with ``parameters.batch_index``), with its options and ``MLSERVER_INFER_*``
  variables.

The commands are ``envserve mlserver ...``; ``envserve mlserver install-shim`` writes an ``mlserver``
script that runs them, and refuses where a real MLServer is installed (images built by envserve have one in
/usr/local/bin). What a build uses where MLServer has no option: ``ENVSERVE_IMAGE_BASE`` (the base image),
``ENVSERVE_WHEELHOUSE`` (install offline from a folder of wheels), ``ENVSERVE_IMAGE_BUILDER``.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click

from ..errors import SettingsError
from ..mlflow_rest import open_url
from . import EnvserveGroup

__all__ = ["SHIM_MARKER", "install_shim", "mlserver", "shim_main"]

#: The line that marks an ``mlserver`` script as envserve's (a real MLServer's is never overwritten).
SHIM_MARKER = "# envserve's mlserver command (envserve mlserver install-shim)"
_REQUIREMENTS = "requirements.txt"


@click.group("mlserver", cls=EnvserveGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="envserve", message="mlserver (envserve %(version)s)")
def mlserver() -> None:
    """MLServer's command line (start, build, dockerfile, infer) mapped onto envserve's commands."""


@mlserver.command("start")
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.pass_context
def start(ctx: click.Context, folder: str) -> None:
    """Start serving the models in FOLDER (envserve serve FOLDER). As MLServer, it runs the folder's
    runtime classes (trust_model_code; ENVSERVE_TRUST_MODEL_CODE=false refuses them)."""
    from .serve import serve

    os.environ.setdefault("ENVSERVE_TRUST_MODEL_CODE", "true")
    ctx.invoke(serve, model_repository=folder)


@mlserver.command("dockerfile")
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.option("-i", "--include-dockerignore", is_flag=True, help="Also write a .dockerignore.")
def dockerfile(folder: str, include_dockerignore: bool) -> None:
    """Write FOLDER/Dockerfile: `docker build FOLDER` then builds an envserve image serving FOLDER."""
    path, ignore = write_dockerfile(folder, include_dockerignore)
    click.echo("Successfully written Dockerfile in %s" % path, err=True)
    if ignore:
        click.echo("Successfully written .dockerignore in %s" % ignore, err=True)


@mlserver.command("build")
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.option("-t", "--tag", required=True, help="Image reference to tag.")
@click.option("--no-cache", is_flag=True, help="Build every layer anew.")
def build(folder: str, tag: str, no_cache: bool) -> None:
    """Build an image serving FOLDER, with FOLDER's requirements.txt installed beside envserve."""
    from ..image.build import build_image
    from ..image.dockerfile import DEFAULT_BASE, DEFAULT_EXTRAS

    _refuse_conda(folder)
    requirements = os.path.join(folder, _REQUIREMENTS)
    build_image(
        folder,
        tag,
        os.environ.get("ENVSERVE_IMAGE_BASE") or DEFAULT_BASE,
        os.environ.get("ENVSERVE_WHEELHOUSE") or None,
        os.environ.get("ENVSERVE_IMAGE_BUILDER") or None,
        extras=DEFAULT_EXTRAS,
        requirements=requirements if os.path.isfile(requirements) else None,
        no_cache=no_cache,
    )
    click.echo("Successfully built custom Docker image with tag %s" % tag, err=True)


@mlserver.command("infer")
@click.option("--url", "-u", default="localhost:8080", envvar="MLSERVER_INFER_URL", show_default=True)
@click.option("--model-name", "-m", required=True, envvar="MLSERVER_INFER_MODEL_NAME")
@click.option(
    "--input-data-path", "-i", required=True, type=click.Path(), envvar="MLSERVER_INFER_INPUT_DATA_PATH"
)
@click.option(
    "--output-data-path", "-o", required=True, type=click.Path(), envvar="MLSERVER_INFER_OUTPUT_DATA_PATH"
)
@click.option("--workers", "-w", default=10, envvar="MLSERVER_INFER_WORKERS", show_default=True)
@click.option("--retries", "-r", default=3, envvar="MLSERVER_INFER_RETRIES", show_default=True)
@click.option("--batch-size", "-s", default=1, envvar="MLSERVER_INFER_BATCH_SIZE", show_default=True)
@click.option("--binary-data", "-b", is_flag=True, envvar="MLSERVER_INFER_BINARY_DATA")
@click.option("--verbose", "-v", is_flag=True, envvar="MLSERVER_INFER_VERBOSE")
@click.option("--extra-verbose", "-vv", is_flag=True, envvar="MLSERVER_INFER_EXTRA_VERBOSE")
@click.option(
    "--transport",
    "-t",
    type=click.Choice(["rest", "grpc"]),
    default="rest",
    envvar="MLSERVER_INFER_TRANSPORT",
)
@click.option("--request-headers", "-H", multiple=True, envvar="MLSERVER_INFER_REQUEST_HEADERS")
@click.option("--timeout", default=60, envvar="MLSERVER_INFER_CONNECTION_TIMEOUT", show_default=True)
@click.option("--batch-interval", default=0.0, type=float, envvar="MLSERVER_INFER_BATCH_INTERVAL")
@click.option("--batch-jitter", default=0.0, type=float, envvar="MLSERVER_INFER_BATCH_JITTER")
@click.option("--use-ssl", is_flag=True, envvar="MLSERVER_INFER_USE_SSL")
@click.option("--insecure", is_flag=True, envvar="MLSERVER_INFER_INSECURE")
def infer(
    url: str,
    model_name: str,
    input_data_path: str,
    output_data_path: str,
    workers: int,
    retries: int,
    batch_size: int,
    binary_data: bool,
    verbose: bool,
    extra_verbose: bool,
    transport: str,
    request_headers: Tuple[str, ...],
    timeout: int,
    batch_interval: float,
    batch_jitter: float,
    use_ssl: bool,
    insecure: bool,
) -> None:
    """Send the V2 requests in a file (one JSON per line) to a model; write its answers, one per line."""
    if transport == "grpc":
        raise click.BadParameter("the 'grpc' transport is not supported (as in MLServer): use rest")
    headers = _headers(request_headers)
    client = BatchClient(
        ("https://" if use_ssl else "http://") + url,
        model_name,
        headers,
        retries,
        float(timeout),
        batch_interval,
        batch_jitter,
        insecure,
        binary_data,
    )
    started = time.monotonic()
    counted = client.run(input_data_path, output_data_path, workers, batch_size, verbose or extra_verbose)
    click.echo(
        "processed %d instances in %.2f s" % (counted, time.monotonic() - started),
        err=True,
    )


@mlserver.command("install-shim")
@click.option(
    "--bin-dir",
    type=click.Path(file_okay=False),
    help="Where to write the mlserver script [default: this Python's scripts folder].",
)
@click.option("--force", is_flag=True, help="Overwrite an mlserver command that is not envserve's.")
def install_shim_command(bin_dir: Optional[str], force: bool) -> None:
    """Write an `mlserver` command that runs `envserve mlserver` (refused where MLServer is installed)."""
    click.echo(install_shim(bin_dir or os.path.dirname(sys.executable), force))


# -- the shim ----------------------------------------------------------------------------------------------


def install_shim(bin_dir: str, force: bool = False) -> str:
    """Write ``bin_dir/mlserver`` running this Python's ``envserve mlserver``; return its path. A real
    MLServer importable by this Python, or an ``mlserver`` file there that is not envserve's, is left alone
    (``force`` overwrites the file)."""
    import importlib.util

    path = os.path.join(bin_dir, "mlserver")
    spec = importlib.util.find_spec("mlserver")
    if spec is not None and not force:
        raise SettingsError(
            "a real MLServer is installed for %s (%s): its mlserver command stays; use envserve mlserver, "
            "or --force" % (sys.executable, spec.origin or "mlserver")
        )
    if os.path.exists(path) and not force:
        with open(path, "rb") as f:
            head = f.read(4096)
        if SHIM_MARKER.encode() not in head:
            raise SettingsError("%s exists and is not envserve's; left alone (--force overwrites it)" % path)
    os.makedirs(bin_dir, exist_ok=True)
    text = (
        "#!%s\n%s\nimport sys\n\nfrom envserve.cli.mlserver import shim_main\n\nsys.exit(shim_main())\n"
        % (
            sys.executable,
            SHIM_MARKER,
        )
    )
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        f.write(text)
    mode = os.stat(partial).st_mode
    os.chmod(partial, mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
    os.replace(partial, path)
    return path


def shim_main(argv: Optional[List[str]] = None) -> int:
    """``mlserver ...``: ``envserve mlserver ...``, with envserve's error messages and exit codes."""
    mlserver.main(args=argv, prog_name="mlserver")
    return 0


# -- dockerfile ----------------------------------------------------------------------------------------------

_DOCKERIGNORE = """# written by envserve mlserver dockerfile
.git
**/__pycache__
Dockerfile
.dockerignore
"""


def write_dockerfile(folder: str, include_dockerignore: bool) -> Tuple[str, Optional[str]]:
    """FOLDER/Dockerfile for ``docker build FOLDER`` (the folder is the context: it is copied in as the
    model repository, its requirements.txt installed beside envserve)."""
    from ..image.dockerfile import DEFAULT_BASE, DEFAULT_EXTRAS, render_dockerfile

    _refuse_conda(folder)
    text = render_dockerfile(
        folder,
        os.environ.get("ENVSERVE_IMAGE_BASE") or DEFAULT_BASE,
        extras=DEFAULT_EXTRAS,
        models_from=".",
        requirements=_REQUIREMENTS if os.path.isfile(os.path.join(folder, _REQUIREMENTS)) else "",
    )
    path = os.path.join(folder, "Dockerfile")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    ignore = None
    if include_dockerignore:
        ignore = os.path.join(folder, ".dockerignore")
        with open(ignore, "w", encoding="utf-8") as f:
            f.write(_DOCKERIGNORE)
    return path, ignore


def _refuse_conda(folder: str) -> None:
    for name in ("environment.yml", "environment.yaml"):
        if os.path.isfile(os.path.join(folder, name)):
            raise SettingsError(
                "%s: envserve does not build conda environments into the server's (no conda channels); "
                "list the packages in requirements.txt, or give the model its own environment "
                "(parameters.environment: %s, docs/environments.md)" % (os.path.join(folder, name), name)
            )


# -- infer: MLServer's batch client -----------------------------------------------------------------------


def _headers(raw: Sequence[str]) -> Dict[str, str]:
    """``-H 'Name: value'`` options (the variable: ``'Name:value Other:value'``)."""
    found: Dict[str, str] = {}
    items: List[str] = []
    for item in raw:
        items.extend(item.split() if ":" in item and " " in item and item.count(":") > 1 else [item])
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter("header %r is not 'Name: value'" % item)
        found[name.strip()] = value.strip()
    return found


class BatchClient:
    """Reads a file of V2 requests, sends them (``batch_size`` merged into one call along the first axis)
    from ``workers`` threads with ``retries``, writes each answer with ``parameters.batch_index`` (its line
    in the input) and ``parameters.inference_id`` (the id of the call that carried it); a line that is not
    a request, or a call that failed every retry, is written as MLServer writes it:
    ``{"parameters": {"batch_index": i}, "error": {"status": "preprocessing error", "msg": ...}}``.
    Answers are written as they come (MLServer's order too): sort by ``batch_index`` for input order."""

    def __init__(
        self,
        url: str,
        model: str,
        headers: Dict[str, str],
        retries: int,
        timeout: float,
        interval: float = 0.0,
        jitter: float = 0.0,
        insecure: bool = False,
        binary_data: bool = False,
    ) -> None:
        self.endpoint = "%s/v2/models/%s/infer" % (url.rstrip("/"), model)
        self.headers = dict(headers)
        self.retries = max(1, retries)
        self.timeout = timeout
        self.interval = interval
        self.jitter = jitter
        self.binary_data = binary_data  # answers come back as JSON either way: the file holds JSON
        self._context: Any = None
        if insecure:
            import ssl

            self._context = ssl._create_unverified_context()
        self._lock = threading.Lock()

    def run(self, source: str, target: str, workers: int, batch_size: int, verbose: bool = False) -> int:
        from concurrent.futures import ThreadPoolExecutor

        directory = os.path.dirname(os.path.abspath(target))
        if not os.access(directory, os.W_OK):
            raise click.BadParameter("Provided output file path '%s' is not writable." % target)
        with open(source, "rb") as f:
            lines = [(i, line) for i, line in enumerate(f) if line.strip()]
        groups = [lines[i : i + max(1, batch_size)] for i in range(0, len(lines), max(1, batch_size))]
        written = 0
        with open(target, "wb") as out, ThreadPoolExecutor(max(1, workers)) as pool:
            for answers in pool.map(self._group, groups):
                with self._lock:
                    for answer in answers:
                        out.write(json.dumps(answer, separators=(",", ":")).encode("utf-8") + b"\n")
                        written += 1
                if verbose:
                    click.echo("processed instances: %d" % written, err=True)
        return written

    def _group(self, items: List[Tuple[int, bytes]]) -> List[Dict[str, Any]]:
        requests: List[Tuple[int, Dict[str, Any]]] = []
        failed: List[Dict[str, Any]] = []
        for index, line in items:
            try:
                doc = json.loads(line)
                _check_request(doc)
            except (ValueError, TypeError) as exc:
                failed.append(_failure(index, str(exc)))
                continue
            doc.setdefault("id", str(uuid.uuid4()))
            requests.append((index, doc))
        if not requests:
            return failed
        merged, sizes = _merge([doc for _, doc in requests])
        if len(requests) == 1:
            merged["id"] = requests[0][1]["id"]
        if self.interval or self.jitter:
            import random

            time.sleep(self.interval + random.random() * self.jitter)
        try:
            answer = self._send(merged)
            parts = _split(answer, sizes)
        except Exception as exc:  # the call failed every retry: each request says why
            return [_failure(index, str(exc)) for index, _ in requests] + failed
        out = []
        for (index, doc), part in zip(requests, parts):
            part["id"] = doc["id"]
            part["parameters"] = dict(
                part.get("parameters") or {}, batch_index=index, inference_id=answer.get("id")
            )
            out.append(part)
        return out + failed

    def _send(self, doc: Dict[str, Any]) -> Dict[str, Any]:
        body = json.dumps(doc).encode("utf-8")
        headers = {"Content-Type": "application/json", **self.headers}
        headers.setdefault("x-request-id", str(doc["id"]))
        headers.setdefault("seldon-puid", str(doc["id"]))
        last: Exception = RuntimeError("no attempt")
        for attempt in range(self.retries):
            request = urllib.request.Request(self.endpoint, body, headers, method="POST")
            try:
                with open_url(request, self.timeout, self._context) as r:
                    answer = json.loads(r.read())
                if not isinstance(answer, dict):
                    raise ValueError("the server's answer is not a JSON object")
                return answer
            except urllib.error.HTTPError as exc:
                text = exc.read().decode("utf-8", "replace")
                try:
                    detail = json.loads(text)
                    text = detail.get("error") or json.dumps(detail.get("detail", detail))
                except (ValueError, AttributeError):
                    pass
                last = RuntimeError("[%d] %s" % (exc.code, text))
                if exc.code < 500:  # a client's mistake is not retried
                    break
            except (OSError, ValueError) as exc:
                last = exc
            if attempt + 1 < self.retries:
                time.sleep(1.0)
        raise last


def _check_request(doc: Any) -> None:
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise ValueError("not a V2 inference request: 'inputs' must be a non-empty list")
    for item in doc["inputs"]:
        if not isinstance(item, dict) or not all(k in item for k in ("name", "shape", "datatype", "data")):
            raise ValueError("every input needs name, shape, datatype and data")
        if not isinstance(item["shape"], list) or not item["shape"]:
            raise ValueError("input %r: shape must be a non-empty list" % item.get("name"))


def _flat(data: Any) -> List[Any]:
    if isinstance(data, list):
        out: List[Any] = []
        for item in data:
            out.extend(_flat(item))
        return out
    return [data]


def _merge(docs: List[Dict[str, Any]]) -> Tuple[Dict[str, Any], List[int]]:
    """Requests with the same inputs (names, datatypes, shapes after the first axis) as one request, their
    data along the first axis; the first axis of each, to split the answer by."""
    if len(docs) == 1:
        return docs[0], [int(docs[0]["inputs"][0]["shape"][0])]
    first = docs[0]
    key = [(i["name"], i["datatype"], list(i["shape"][1:])) for i in first["inputs"]]
    for doc in docs[1:]:
        if [(i["name"], i["datatype"], list(i["shape"][1:])) for i in doc["inputs"]] != key:
            raise ValueError("micro-batched requests must have the same inputs (names, datatypes, shapes)")
    inputs = []
    for position, item in enumerate(first["inputs"]):
        data: List[Any] = []
        rows = 0
        for doc in docs:
            data.extend(_flat(doc["inputs"][position]["data"]))
            rows += int(doc["inputs"][position]["shape"][0])
        inputs.append(dict(item, shape=[rows, *item["shape"][1:]], data=data))
    merged = {k: v for k, v in first.items() if k not in ("inputs", "id")}
    merged["inputs"] = inputs
    merged["id"] = str(uuid.uuid4())
    return merged, [int(doc["inputs"][0]["shape"][0]) for doc in docs]


def _split(answer: Dict[str, Any], sizes: List[int]) -> List[Dict[str, Any]]:
    if len(sizes) == 1:
        return [dict(answer)]
    total = sum(sizes)
    parts: List[Dict[str, Any]] = [
        {k: v for k, v in answer.items() if k != "outputs"} | {"outputs": []} for _ in sizes
    ]
    for output in answer.get("outputs") or []:
        shape = list(output.get("shape") or [])
        data = _flat(output.get("data"))
        if not shape or shape[0] != total:
            raise ValueError("output %r is not one row per request row; cannot split it" % output.get("name"))
        per_row = len(data) // total if total else 0
        start = 0
        for part, rows in zip(parts, sizes):
            piece = dict(output, shape=[rows, *shape[1:]], data=data[start : start + rows * per_row])
            part["outputs"].append(piece)
            start += rows * per_row
    return parts


def _failure(index: int, message: str) -> Dict[str, Any]:
    return {"parameters": {"batch_index": index}, "error": {"status": "preprocessing error", "msg": message}}
