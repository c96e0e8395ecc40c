"""The web console (``envserve serve --console``): static pages shipped in the package and the small JSON
API they use. Off by default.

Pages: ``/console/`` (models with live state, try-it, environments, deploy wizard, platform images).
API, all under ``/envserve/``:

- ``GET models`` (status incl. requests served and mean latency), ``GET environments``,
  ``POST environments/prune``;
- ``POST deploy/render`` (a manifest from the wizard's fields, validated), ``GET registry/models`` (the
  MLflow registry at ``MLFLOW_TRACKING_URI``), ``GET platform``, ``POST platform/image``.

Security: when the server listens beyond loopback an ``admin_token`` is required for the console to start;
with a token, every console API call needs ``Authorization: Bearer``. State-changing calls are POST only
and refuse a browser ``Origin`` that is neither this server, called by a name it is known by
(``allowed_hosts``), nor listed in ``cors_origins`` (CSRF, DNS rebinding). Nothing shown
includes a secret: environment sources are paths, URIs are redacted.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
from typing import Any, Dict, List, Optional, Tuple

from ..environments import EnvironmentCache
from ..errors import EnvserveError, InvalidRequest, SettingsError
from ..storage import redact
from .dataplane import DataPlane
from .metrics import Metrics

__all__ = ["STATIC_DIR", "ConsoleAPI", "check_console_settings"]

STATIC_DIR = os.path.join(os.path.dirname(__file__), "console_static")
_LOOPBACK = ("127.", "::1", "localhost")


def check_console_settings(host: str, admin_token: str) -> None:
    if not host.startswith(_LOOPBACK) and not admin_token:
        raise SettingsError(
            "the console was asked for on %s, beyond loopback, without an admin token: set "
            "ENVSERVE_ADMIN_TOKEN (or --host 127.0.0.1)" % host
        )


def static_file(path: str) -> Optional[Tuple[bytes, str]]:
    """The console's static file for a URL path under /console/, or None."""
    rel = path[len("/console") :].lstrip("/") or "index.html"
    if ".." in rel.split("/"):
        return None
    full = os.path.join(STATIC_DIR, rel)
    if not os.path.isfile(full):
        return None
    with open(full, "rb") as f:
        data = f.read()
    ctype = mimetypes.guess_type(full)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype in ("application/javascript",):
        ctype += "; charset=utf-8"
    return data, ctype


class ConsoleAPI:
    def __init__(
        self, dataplane: DataPlane, metrics: Optional[Metrics], environments: EnvironmentCache
    ) -> None:
        self.dp = dataplane
        self.metrics = metrics
        self.environment_cache = environments

    # -- reads ---------------------------------------------------------------------------------------------

    def models(self) -> List[Dict[str, Any]]:
        rows: List[Dict[str, Any]] = self.dp.model_status()
        served = self._served()
        for row in rows:
            count, total = served.get((row["name"], row.get("version") or ""), (0.0, 0.0))
            row["requests"] = int(count)
            row["mean_latency_ms"] = round(1000 * total / count, 3) if count else None
            env = row.get("environment")
            if env and env.get("source"):
                env["source"] = redact(env["source"])
        return rows

    def _served(self) -> Dict[Tuple[str, str], Tuple[float, float]]:
        result: Dict[Tuple[str, str], Tuple[float, float]] = {}
        if self.metrics is None:
            return result
        for family in self.metrics.registry.collect():
            if family.name != "envserve_request_duration_seconds":
                continue
            for sample in family.samples:
                key = (sample.labels.get("model", ""), sample.labels.get("version", ""))
                count, total = result.get(key, (0.0, 0.0))
                if sample.name.endswith("_count"):
                    count += sample.value
                elif sample.name.endswith("_sum"):
                    total += sample.value
                result[key] = (count, total)
        return result

    def environments(self) -> List[Dict[str, Any]]:
        rows = self.environment_cache.list()
        for row in rows:
            row["source"] = redact(str(row.get("source", "")))
        return list(rows)

    def registry_models(self) -> Dict[str, Any]:
        from ..deploy.mlflow_registry import MlflowRegistry

        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if not uri:
            return {"tracking_uri": None, "models": []}
        registry = MlflowRegistry(uri)
        models = []
        for name in registry.models():
            models.append(
                {
                    "name": name,
                    "versions": [v.version for v in registry.versions(name)],
                    "aliases": registry.aliases(name),
                }
            )
        return {"tracking_uri": redact(uri), "models": models}

    def platform(self) -> Dict[str, Any]:
        from ..deploy.platform import PlatformConfig

        config = PlatformConfig.load()
        rows = []
        for server, entry in sorted(config.merged().items()):
            for protocol, image in sorted(entry["protocols"].items()):
                rows.append(
                    {
                        "server": server,
                        "protocol": protocol,
                        "image": "%s:%s" % (image["image"], image["defaultImageVersion"]),
                        "source": "platform" if config.image_for(server, protocol) else "built-in",
                    }
                )
        return {"path": config.path, "images": rows}

    # -- writes --------------------------------------------------------------------------------------------

    async def prune(self) -> Dict[str, Any]:
        loop = asyncio.get_running_loop()
        removed = await loop.run_in_executor(None, lambda: self.environment_cache.prune(everything=True))
        return {"removed": [r["hash"] for r in removed]}

    def set_image(self, doc: Any) -> Dict[str, Any]:
        from ..deploy.platform import PlatformConfig

        if not isinstance(doc, dict) or not all(
            isinstance(doc.get(k), str) and doc.get(k) for k in ("server", "protocol", "image")
        ):
            raise InvalidRequest('send {"server", "protocol", "image"} as strings')
        config = PlatformConfig.load()
        config.set_image(doc["server"], doc["protocol"], doc["image"])
        config.save()
        return self.platform()

    def render(self, doc: Any) -> Dict[str, Any]:
        """The wizard's preview: a manifest and its validation errors (an invalid field is an error too)."""
        from ..deploy.manifest import DeploymentSpec, choose_image, dump_yaml, render
        from ..deploy.platform import PlatformConfig
        from ..deploy.validate import validate_documents

        if not isinstance(doc, dict):
            raise InvalidRequest("send the wizard's fields as a JSON object")
        fields: Dict[str, Any] = {}
        for key in (
            "name",
            "target",
            "namespace",
            "server_type",
            "protocol",
            "model_uri",
            "secret",
            "cpu",
            "memory",
            "image",
        ):
            value = doc.get(key)
            if isinstance(value, str) and value.strip():
                fields[key] = value.strip()
        try:
            replicas = int(str(doc.get("replicas", "1")).strip() or "1")
        except ValueError:
            return {
                "manifest": "",
                "errors": ["replicas %r is not a whole number" % doc.get("replicas")],
                "image": None,
            }
        fields["replicas"] = replicas
        try:
            spec = DeploymentSpec(**fields)
            platform = PlatformConfig.load()
            docs = render(spec, platform)
            choice = choose_image(spec, platform)
        except TypeError:
            return {"manifest": "", "errors": ["a name is required"], "image": None}
        except EnvserveError as exc:
            return {"manifest": "", "errors": [str(exc)], "image": None}
        errors = validate_documents(docs, "manifest")
        return {
            "manifest": dump_yaml(docs),
            "errors": errors,
            "image": {
                "image": choice.image,
                "reason": choice.reason,
                "platform_default": choice.platform_default,
            },
        }
