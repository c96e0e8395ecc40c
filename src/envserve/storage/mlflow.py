"""``models:/`` and ``runs:/`` URIs through the MLflow tracking server's REST API (no mlflow package).

The registry tells where a version's artifacts live (``get-download-uri``); that location is fetched by
its own scheme (S3, a local path, or the tracking server's artifact proxy ``mlflow-artifacts:/``).
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from typing import Any, Collection, Dict, List, Mapping, Optional

from ..mlflow_rest import MlflowClient
from . import DownloadCache, StorageError, fetch, redact

__all__ = ["fetch_mlflow", "fetch_mlflow_artifacts", "resolve_mlflow_uri"]


def _client(env: Mapping[str, str], uri: str) -> MlflowClient:
    tracking = env.get("MLFLOW_TRACKING_URI", "")
    if not tracking.startswith(("http://", "https://")):
        raise StorageError(
            "model URI %s needs MLFLOW_TRACKING_URI set to the tracking server's http(s) URL" % redact(uri)
        )
    return MlflowClient(tracking, env, StorageError, "model URI %s" % redact(uri))


def _logged_model(client: MlflowClient, experiment: Any, run_id: str, path: str) -> Optional[str]:
    """MLflow 3 keeps models logged in a run as "logged models" with their own artifact location;
    ``runs:/<run>/<name>`` names one of them. None when there is none (or the server predates them)."""
    if not path or experiment is None:
        return None
    name, _, rest = path.partition("/")
    query = {
        "experiment_ids": [str(experiment)],
        "filter": "source_run_id = '%s'" % run_id,
        "max_results": 100,
    }
    try:
        models = client.call("logged-models/search", body=query).get("models", [])
    except StorageError:
        return None
    for model in models:
        info = model.get("info", {})
        if info.get("name") == name and info.get("artifact_uri"):
            return str(info["artifact_uri"]).rstrip("/") + ("/" + rest if rest else "")
    return None


def resolve_mlflow_uri(uri: str, env: Mapping[str, str]) -> str:
    """The artifact location of a ``models:/`` or ``runs:/`` URI."""
    client = _client(env, uri)
    if uri.startswith("runs:/"):
        m = re.match(r"^runs:/+([^/]+)/?(.*)$", uri)
        if not m:
            raise StorageError("model URI %s is not runs:/<run id>/<path>" % redact(uri))
        run_id, path = m.group(1), m.group(2).strip("/")
        run = client.call("runs/get", {"run_id": run_id})["run"]
        logged = _logged_model(client, run["info"].get("experiment_id"), run_id, path)
        if logged is not None:
            return logged
        return str(run["info"]["artifact_uri"]).rstrip("/") + ("/" + path if path else "")
    m = re.match(r"^models:/+([^/@]+)(?:@([^/]+)|/([^/]+))?/?$", uri)
    if not m:
        raise StorageError(
            "model URI %s is not models:/<name>/<version>, models:/<name>@<alias> or "
            "models:/<name>/latest" % redact(uri)
        )
    name, alias, version = m.group(1), m.group(2), m.group(3) or "latest"
    if alias:
        version = str(
            client.call("registered-models/alias", {"name": name, "alias": alias})["model_version"]["version"]
        )
    elif version == "latest" or not version.isdigit():
        versions: List[Dict[str, Any]] = client.call(
            "model-versions/search", {"filter": "name='%s'" % name}
        ).get("model_versions", [])
        if version != "latest":  # a stage name (Production, Staging) as older MLflow URIs use
            versions = [v for v in versions if v.get("current_stage", "").lower() == version.lower()]
        if not versions:
            raise StorageError("model URI %s: no version found" % redact(uri))
        version = str(max(int(v["version"]) for v in versions))
    return str(
        client.call("model-versions/get-download-uri", {"name": name, "version": version})["artifact_uri"]
    )


def fetch_mlflow(
    uri: str,
    cache: DownloadCache,
    env: Mapping[str, str],
    cache_root: str,
    only: Optional[Collection[str]] = None,
) -> str:
    location = resolve_mlflow_uri(uri, env)
    return fetch(location, cache_root, env, only=only)


def fetch_mlflow_artifacts(
    uri: str,
    cache: DownloadCache,
    env: Mapping[str, str],
    cache_root: str,
    only: Optional[Collection[str]] = None,
) -> str:
    """``mlflow-artifacts:/path``: files served by the tracking server's artifact proxy."""
    client = _client(env, uri)
    root = re.sub(r"^mlflow-artifacts:(//[^/]*)?/*", "", uri).rstrip("/")
    base = "api/2.0/mlflow-artifacts/artifacts"

    def listing(path: str) -> List[Dict[str, Any]]:
        with client.open(base, {"path": path}) as r:
            try:
                return list(json.loads(r.read().decode("utf-8")).get("files", []))
            except ValueError:
                raise StorageError("model URI %s: the artifact listing is not JSON" % redact(uri)) from None

    files: List[Dict[str, Any]] = []

    def walk(path: str) -> None:
        for item in listing(path):
            child = path + "/" + item["path"].rsplit("/", 1)[-1]
            if item.get("is_dir"):
                walk(child)
            else:
                files.append({"path": child, "size": item.get("file_size")})

    walk(root)
    if only is not None:
        files = [f for f in files if os.path.relpath(f["path"], root) in only]
    if not files:
        raise StorageError(
            "model URI %s: no artifacts there%s"
            % (redact(uri), " named %s" % ", ".join(sorted(only)) if only is not None else "")
        )
    key = "mlflow-artifacts|%s|%s" % (client.base, json.dumps(sorted((f["path"], f["size"]) for f in files)))

    def download(target: str) -> None:
        for f in files:
            rel = os.path.relpath(f["path"], root)
            path = os.path.join(target, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with client.open("%s/%s" % (base, urllib.parse.quote(f["path"]))) as r, open(path, "wb") as out:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    out.write(chunk)

    return cache.get_or_fetch(key, uri, download)
