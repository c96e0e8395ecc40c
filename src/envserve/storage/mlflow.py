"""``models:/`` and ``runs:/`` URIs through the MLflow tracking server's REST API (no mlflow package).

The registry tells where a version's artifacts live (``get-download-uri``); that location is fetched by
its own scheme (S3, a local path, or the tracking server's artifact proxy ``mlflow-artifacts:/``).
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Mapping, Optional

from . import DownloadCache, StorageError, fetch, redact

__all__ = ["fetch_mlflow", "fetch_mlflow_artifacts", "resolve_mlflow_uri"]


def _tracking(env: Mapping[str, str], uri: str) -> str:
    tracking = env.get("MLFLOW_TRACKING_URI", "")
    if not tracking.startswith(("http://", "https://")):
        raise StorageError(
            "model URI %s needs MLFLOW_TRACKING_URI set to the tracking server's http(s) URL" % redact(uri)
        )
    return tracking.rstrip("/")


def _get(tracking: str, path: str, uri: str, env: Mapping[str, str], **params: Any) -> Dict[str, Any]:
    url = "%s/api/2.0/mlflow/%s?%s" % (tracking, path, urllib.parse.urlencode(params))
    request = urllib.request.Request(url)
    token = env.get("MLFLOW_TRACKING_TOKEN")
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            doc: Dict[str, Any] = json.loads(r.read().decode("utf-8"))
            return doc
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read().decode("utf-8")).get("message", "")
        except ValueError:
            message = ""
        raise StorageError(
            "model URI %s: MLflow answered %d: %s" % (redact(uri), exc.code, message)
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise StorageError(
            "model URI %s: cannot reach the MLflow tracking server at %s: %s"
            % (redact(uri), redact(tracking), getattr(exc, "reason", exc))
        ) from None


def _logged_model(
    tracking: str, uri: str, env: Mapping[str, str], experiment: Any, run_id: str, path: str
) -> Optional[str]:
    """MLflow 3 keeps models logged in a run as "logged models" with their own artifact location;
    ``runs:/<run>/<name>`` names one of them. None when there is none (or the server predates them)."""
    if not path or experiment is None:
        return None
    name, _, rest = path.partition("/")
    body = json.dumps(
        {"experiment_ids": [str(experiment)], "filter": "source_run_id = '%s'" % run_id, "max_results": 100}
    ).encode("utf-8")
    request = urllib.request.Request(
        "%s/api/2.0/mlflow/logged-models/search" % tracking,
        data=body,
        headers={"Content-Type": "application/json"},
    )
    token = env.get("MLFLOW_TRACKING_TOKEN")
    if token:
        request.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            models = json.loads(r.read().decode("utf-8")).get("models", [])
    except (urllib.error.URLError, OSError, ValueError):
        return None
    for model in models:
        info = model.get("info", {})
        if info.get("name") == name and info.get("artifact_uri"):
            return str(info["artifact_uri"]).rstrip("/") + ("/" + rest if rest else "")
    return None


def resolve_mlflow_uri(uri: str, env: Mapping[str, str]) -> str:
    """The artifact location of a ``models:/`` or ``runs:/`` URI."""
    tracking = _tracking(env, uri)
    if uri.startswith("runs:/"):
        m = re.match(r"^runs:/+([^/]+)/?(.*)$", uri)
        if not m:
            raise StorageError("model URI %s is not runs:/<run id>/<path>" % redact(uri))
        run_id, path = m.group(1), m.group(2).strip("/")
        run = _get(tracking, "runs/get", uri, env, run_id=run_id)["run"]
        logged = _logged_model(tracking, uri, env, run["info"].get("experiment_id"), run_id, path)
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
            _get(tracking, "registered-models/alias", uri, env, name=name, alias=alias)["model_version"][
                "version"
            ]
        )
    elif version == "latest" or not version.isdigit():
        versions: List[Dict[str, Any]] = _get(
            tracking, "model-versions/search", uri, env, filter="name='%s'" % name
        ).get("model_versions", [])
        if version != "latest":  # a stage name (Production, Staging) as older MLflow URIs use
            versions = [v for v in versions if v.get("current_stage", "").lower() == version.lower()]
        if not versions:
            raise StorageError("model URI %s: no version found" % redact(uri))
        version = str(max(int(v["version"]) for v in versions))
    return str(
        _get(tracking, "model-versions/get-download-uri", uri, env, name=name, version=version)[
            "artifact_uri"
        ]
    )


def fetch_mlflow(uri: str, cache: DownloadCache, env: Mapping[str, str], cache_root: str) -> str:
    location = resolve_mlflow_uri(uri, env)
    return fetch(location, cache_root, env)


def fetch_mlflow_artifacts(uri: str, cache: DownloadCache, env: Mapping[str, str], cache_root: str) -> str:
    """``mlflow-artifacts:/path``: files served by the tracking server's artifact proxy."""
    tracking = _tracking(env, uri)
    root = re.sub(r"^mlflow-artifacts:(//[^/]*)?/*", "", uri).rstrip("/")
    base = "%s/api/2.0/mlflow-artifacts/artifacts" % tracking

    def listing(path: str) -> List[Dict[str, Any]]:
        try:
            with urllib.request.urlopen(
                "%s?%s" % (base, urllib.parse.urlencode({"path": path})), timeout=30
            ) as r:
                return list(json.loads(r.read().decode("utf-8")).get("files", []))
        except (urllib.error.URLError, OSError) as exc:
            raise StorageError("model URI %s: %s" % (redact(uri), getattr(exc, "reason", exc))) from None

    files: List[Dict[str, Any]] = []

    def walk(path: str) -> None:
        for item in listing(path):
            child = path + "/" + item["path"].rsplit("/", 1)[-1]
            if item.get("is_dir"):
                walk(child)
            else:
                files.append({"path": child, "size": item.get("file_size")})

    walk(root)
    if not files:
        raise StorageError("model URI %s: no artifacts there" % redact(uri))
    key = "mlflow-artifacts|%s|%s" % (tracking, json.dumps(sorted((f["path"], f["size"]) for f in files)))

    def download(target: str) -> None:
        for f in files:
            rel = os.path.relpath(f["path"], root)
            path = os.path.join(target, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            url = "%s/%s" % (base, urllib.parse.quote(f["path"]))
            with urllib.request.urlopen(url, timeout=60) as r, open(path, "wb") as out:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    out.write(chunk)

    return cache.get_or_fetch(key, uri, download)
