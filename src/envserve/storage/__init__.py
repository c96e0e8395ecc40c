"""Model URIs: fetch a model's artifacts to a local folder, cached by content.

Schemes (a name -> ``"module:function"`` table, imported lazily):

- a local path (or ``file://``): used in place;
- ``s3://bucket/prefix``: boto3 (extra ``s3``) with the standard AWS variables and shared credential
  files; ``AWS_ENDPOINT_URL`` (or ``S3_ENDPOINT``) for S3-compatible stores; credentials may also come from a
  mounted secret directory (``ENVSERVE_SECRET_DIR``: one file per variable, as Kubernetes mounts a Secret
  and Seldon's ``envSecretRefName`` provides it);
- ``gs://bucket/prefix``: google-cloud-storage (extra ``gcs``) with Google's credential sources, or an
  endpoint override (``STORAGE_EMULATOR_HOST``) for emulators;
- Azure Blob Storage (``https://<account>.blob.core.windows.net/<container>/<path>``, ``wasbs://``,
  ``abfss://``): azure-storage-blob (extra ``azure``) with a connection string, SAS, account key or
  azure-identity;
- ``models:/name/version``, ``models:/name@alias``, ``models:/name/latest``, ``runs:/<run>/<path>``:
  resolved through the MLflow tracking server in ``MLFLOW_TRACKING_URI`` to the artifacts' own location,
  which is then fetched by its scheme;
- ``https://`` (or ``http://``) archives (``.tar.gz``, ``.tgz``, ``.zip``) or single files.

Downloads land in ``<cache>/downloads/<key>`` where the key is a digest of what identifies the content
(S3 ETags, MLflow's resolved location, HTTP ETag or the bytes themselves), written to a temporary directory
and renamed when complete, under a file lock. Credentials never appear in logs or errors: messages name
the URI with any userinfo removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from typing import Any, Callable, Collection, Dict, Iterable, Mapping, Optional, Tuple

from ..errors import StorageError

__all__ = [
    "SCHEMES",
    "StorageError",
    "fetch",
    "fetch_objects",
    "is_remote",
    "name_from_uri",
    "redact",
    "secret_environment",
]

logger = logging.getLogger("envserve.storage")

SCHEMES: Dict[str, str] = {
    "s3": "envserve.storage.s3:fetch_s3",
    "gs": "envserve.storage.gcs:fetch_gs",
    "wasbs": "envserve.storage.azure:fetch_azure",
    "wasb": "envserve.storage.azure:fetch_azure",
    "abfss": "envserve.storage.azure:fetch_azure",
    "abfs": "envserve.storage.azure:fetch_azure",
    "models": "envserve.storage.mlflow:fetch_mlflow",
    "runs": "envserve.storage.mlflow:fetch_mlflow",
    "mlflow-artifacts": "envserve.storage.mlflow:fetch_mlflow_artifacts",
    "http": "envserve.storage.http:fetch_http",
    "https": "envserve.storage.http:fetch_http",
}


def redact(uri: str) -> str:
    """The URI without userinfo or query-string secrets (in wasbs:// and abfss:// URIs the part before
    ``@`` is the container, not a secret)."""
    if not re.match(r"^(?:wasbs?|abfss?)://", uri, re.I):
        uri = re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1", uri)
    return re.sub(
        r"([?&](?:X-Amz-[^=&]*|sig|signature|token|access_token|key)=)[^&]*", r"\1***", uri, flags=re.I
    )


def scheme_of(uri: str) -> Optional[str]:
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*):", uri)
    if m is None or len(m.group(1)) == 1:  # "C:" is a drive, not a scheme
        return None
    return m.group(1).lower()


def secret_environment(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Process environment plus the files of ``ENVSERVE_SECRET_DIR`` (file name = variable name)."""
    env = dict(os.environ if environ is None else environ)
    directory = env.get("ENVSERVE_SECRET_DIR")
    if directory and os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            # variables that are set win over the mounted secret
            if re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name) and os.path.isfile(path) and not env.get(name):
                with open(path, encoding="utf-8") as f:
                    env[name] = f.read().strip()
    return env


class DownloadCache:
    def __init__(self, root: str) -> None:
        self.root = os.path.join(root, "downloads")

    def get_or_fetch(self, key: str, uri: str, download: Callable[[str], None]) -> str:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        final = os.path.join(self.root, digest)
        marker = final + ".json"
        if os.path.exists(marker):
            return final
        os.makedirs(self.root, exist_ok=True)
        with open(final + ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if os.path.exists(marker):
                return final
            shutil.rmtree(final, ignore_errors=True)
            work = tempfile.mkdtemp(prefix=digest[:12] + "-", dir=self.root)
            try:
                target = os.path.join(work, "content")
                os.makedirs(target)
                started = time.monotonic()
                download(target)
                os.rename(target, final)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            with open(marker, "w", encoding="utf-8") as f:
                json.dump(
                    {
                        "uri": redact(uri),
                        "fetched": time.time(),
                        "seconds": round(time.monotonic() - started, 3),
                    },
                    f,
                )
        logger.info("fetched %s into the download cache", redact(uri))
        return final


def fetch_objects(
    uri: str,
    cache: DownloadCache,
    store: str,
    prefix: str,
    list_objects: Callable[[], Iterable[Tuple[str, str]]],
    only: Optional[Collection[str]],
    download_one: Callable[[str, str], None],
    explain: Callable[[Exception], StorageError],
) -> str:
    """The common part of the object stores (S3, GCS, Azure Blob): from the listing under ``prefix`` as
    (name, version tag) pairs, take the one object named exactly ``prefix``, else everything under it
    (with ``only``: those top-level names); download them into the cache, keyed by ``store`` (where they
    live) and their version tags. ``download_one(name, path)`` writes one object to a local path; what
    the store's client raises while listing or downloading becomes ``explain(exc)``."""
    try:
        objects = list(list_objects())
    except StorageError:
        raise
    except Exception as exc:
        raise explain(exc) from None
    if not objects:
        raise StorageError("model URI %s: no objects under this prefix" % redact(uri))
    exact = [o for o in objects if o[0] == prefix]
    base = prefix if not exact else os.path.dirname(prefix)
    selected = exact or [o for o in objects if o[0].startswith(prefix.rstrip("/") + "/") or not prefix]
    if only is not None and not exact:
        selected = [o for o in selected if os.path.relpath(o[0], base or ".") in only]
    if not selected:
        raise StorageError(
            "model URI %s: no objects under this prefix%s"
            % (redact(uri), " named %s" % ", ".join(sorted(only)) if only is not None else "")
        )
    key = "%s|%s" % (store, ",".join("%s=%s" % o for o in sorted(selected)))

    def download(target: str) -> None:
        for name, _ in selected:
            rel = os.path.relpath(name, base) if base else name
            if rel.startswith("..") or os.path.isabs(rel) or name.endswith("/"):
                continue
            path = os.path.join(target, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                download_one(name, path)
            except Exception as exc:
                raise explain(exc) from None

    folder = cache.get_or_fetch(key, uri, download)
    if exact:
        return os.path.join(folder, os.path.basename(prefix))
    return folder


def name_from_uri(uri: str) -> str:
    """A model name for a URI served without settings: ``models:/digits/1`` -> ``digits``."""
    m = re.match(r"^models:/+([^/@]+)", uri)
    if m:
        base = m.group(1)
    else:
        parts = [p for p in re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/*", "", uri.split("?", 1)[0]).split("/") if p]
        base = parts[-1] if parts else "model"
        base = re.sub(r"(\.tar\.gz|\.tgz|\.zip|\.tar)$", "", base)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-") or "model"


def is_remote(uri: Optional[str]) -> bool:
    return bool(uri) and scheme_of(uri or "") not in (None, "file")


def fetch(
    uri: str,
    cache_root: str,
    environ: Optional[Mapping[str, str]] = None,
    only: Optional[Collection[str]] = None,
) -> str:
    """A local folder (or file) holding the artifacts of ``uri``; with ``only``, just the files of those
    names at its top level (``MLmodel`` and the environment files, say), where the scheme lists files
    (S3, MLflow's artifact proxy, ``models:/`` and ``runs:/`` stored there); an archive over HTTP is
    fetched whole."""
    scheme = scheme_of(uri)
    if scheme is None or scheme == "file":
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        if not os.path.exists(path):
            raise StorageError("model URI %s does not exist" % redact(uri))
        return path
    target = SCHEMES.get(scheme)
    if scheme == "https" and re.match(r"^https://[a-z0-9]+\.blob\.core\.windows\.net/", uri):
        target = SCHEMES["wasbs"]  # Azure Blob Storage's own URLs: listed and fetched as blobs
    if target is None:
        raise StorageError(
            "model URI %s: unsupported scheme %r (supported: local paths, %s)"
            % (redact(uri), scheme, ", ".join(sorted(SCHEMES)))
        )
    module_name, _, func_name = target.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except ImportError as exc:
        raise StorageError("model URI %s needs %s: %s" % (redact(uri), module_name, exc)) from None
    args = (uri, DownloadCache(cache_root), secret_environment(environ), cache_root)
    whole = target.endswith(":fetch_http")  # an archive over HTTP is fetched whole
    result: Any = func(*args) if only is None or whole else func(*args, only=only)
    return str(result)
