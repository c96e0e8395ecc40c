"""The MLflow model registry as the deployment wizard and console browse it (no mlflow package needed).

Used by the deployment wizard to browse registered models, their versions and aliases, and to find
where a version's artifacts live (the ``modelUri`` a Seldon or KServe server downloads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..errors import SettingsError
from ..mlflow_rest import MlflowClient

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
    """The registry's models, versions and aliases, through :class:`~envserve.mlflow_rest.MlflowClient`."""

    def __init__(self, tracking_uri: str, timeout: float = 10.0) -> None:
        self.client = MlflowClient(tracking_uri, error=SettingsError, timeout=timeout)
        self.base = self.client.base

    def _get(self, path: str, **params: Any) -> Dict[str, Any]:
        return self.client.call(path, params)

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
