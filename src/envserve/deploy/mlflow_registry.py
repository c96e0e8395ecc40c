"""A small client of the MLflow model registry's REST API (no mlflow package needed).

Used by the deployment wizard to browse registered models, their versions and aliases, and to find
where a version's artifacts live (the ``modelUri`` a Seldon or KServe server downloads).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..errors import SettingsError

__all__ = ["MlflowRegistry", "ModelVersion"]


@dataclass
class ModelVersion:
    name: str
    version: str
    stage: str
    status: str
    run_id: str
    source: str


class MlflowRegistry:
    def __init__(self, tracking_uri: str, timeout: float = 10.0) -> None:
        if not tracking_uri.startswith(("http://", "https://")):
            raise SettingsError(
                "MLFLOW_TRACKING_URI must be an http(s) URL of a tracking server, got %r" % tracking_uri
            )
        self.base = tracking_uri.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, **params: Any) -> Dict[str, Any]:
        url = "%s/api/2.0/mlflow/%s?%s" % (self.base, path, urllib.parse.urlencode(params))
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as r:
                doc: Dict[str, Any] = json.loads(r.read().decode("utf-8"))
                return doc
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read().decode("utf-8")).get("message", "")
            except ValueError:
                message = ""
            raise SettingsError(
                "MLflow at %s answered %d for %s: %s" % (self.base, exc.code, path, message)
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SettingsError(
                "cannot reach the MLflow tracking server at %s: %s" % (self.base, reason)
            ) from None

    def models(self) -> List[str]:
        names: List[str] = []
        token = None
        while True:
            params: Dict[str, Any] = {"max_results": 1000}
            if token:
                params["page_token"] = token
            doc = self._get("registered-models/search", **params)
            names += [m["name"] for m in doc.get("registered_models", [])]
            token = doc.get("next_page_token")
            if not token:
                return sorted(names)

    def versions(self, name: str) -> List[ModelVersion]:
        doc = self._get("model-versions/search", filter="name='%s'" % name.replace("'", "\\'"))
        versions = [
            ModelVersion(
                v["name"],
                str(v["version"]),
                v.get("current_stage", ""),
                v.get("status", ""),
                v.get("run_id", ""),
                v.get("source", ""),
            )
            for v in doc.get("model_versions", [])
        ]
        return sorted(versions, key=lambda v: int(v.version) if v.version.isdigit() else 0)

    def model(self, name: str) -> Dict[str, Any]:
        return dict(self._get("registered-models/get", name=name).get("registered_model", {}))

    def aliases(self, name: str) -> Dict[str, str]:
        return {a["alias"]: str(a["version"]) for a in self.model(name).get("aliases", [])}

    def tags(self, name: str) -> Dict[str, str]:
        return {t["key"]: t["value"] for t in self.model(name).get("tags", [])}

    def download_uri(self, name: str, version: str) -> str:
        """Where the version's artifacts are stored (e.g. ``s3://bucket/1/<run>/artifacts/model``)."""
        uri = self._get("model-versions/get-download-uri", name=name, version=version).get("artifact_uri")
        if not uri:
            raise SettingsError("MLflow has no artifact location for %s version %s" % (name, version))
        return str(uri)

    def resolve(self, name: str, ref: str) -> Optional[str]:
        """A version number for ``ref`` (a version, an alias, or 'latest'), None when unknown."""
        versions = [v.version for v in self.versions(name)]
        if ref in versions:
            return ref
        if ref == "latest" and versions:
            return versions[-1]
        return self.aliases(name).get(ref)
