"""Platform configuration: the default image of each server type and protocol.

Kept in exactly the shape of the ``predictor_servers`` key of Seldon Core's ``seldon-config`` ConfigMap
(namespace ``seldon-system``), so it can be imported from and exported back to a live platform::

    {"MLFLOW_SERVER": {"protocols": {"seldon": {"image": "seldonio/mlflowserver",
                                                "defaultImageVersion": "1.17.1"},
                                     "v2": {"image": "seldonio/mlserver",
                                            "defaultImageVersion": "1.3.5-mlflow"}}},
     "SKLEARN_SERVER": ...}

The file lives at ``ENVSERVE_PLATFORM`` (default ``~/.config/envserve/platform.json``). Server types and
protocols not in the file fall back to :data:`BUILTIN_SERVERS`.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .. import __version__
from ..errors import SettingsError
from ..settings.paths import default_platform_path

__all__ = [
    "BUILTIN_SERVERS",
    "ENVSERVE_SERVER",
    "PROTOCOLS",
    "PlatformConfig",
    "default_platform_path",
    "split_image",
]

PROTOCOLS = ("seldon", "v2")
#: envserve itself, as a custom server type.
ENVSERVE_SERVER = "ENVSERVE"

#: Built-in defaults: Seldon Core 1.18's prepackaged servers, and envserve's own image.
BUILTIN_SERVERS: Dict[str, Dict[str, Any]] = {
    "MLFLOW_SERVER": {
        "protocols": {
            "seldon": {"image": "seldonio/mlflowserver", "defaultImageVersion": "1.18.2"},
            "v2": {"image": "seldonio/mlserver", "defaultImageVersion": "1.3.5-mlflow"},
        }
    },
    "SKLEARN_SERVER": {
        "protocols": {
            "seldon": {"image": "seldonio/sklearnserver", "defaultImageVersion": "1.18.2"},
            "v2": {"image": "seldonio/mlserver", "defaultImageVersion": "1.3.5-sklearn"},
        }
    },
    "XGBOOST_SERVER": {
        "protocols": {
            "seldon": {"image": "seldonio/xgboostserver", "defaultImageVersion": "1.18.2"},
            "v2": {"image": "seldonio/mlserver", "defaultImageVersion": "1.3.5-xgboost"},
        }
    },
    "TRITON_SERVER": {
        "protocols": {
            "v2": {"image": "nvcr.io/nvidia/tritonserver", "defaultImageVersion": "21.08-py3"},
        }
    },
    "TENSORFLOW_SERVER": {
        "protocols": {
            "seldon": {"image": "seldonio/tfserving-proxy", "defaultImageVersion": "1.18.2"},
            "tensorflow": {"image": "tensorflow/serving", "defaultImageVersion": "2.1.0"},
        }
    },
    ENVSERVE_SERVER: {
        "protocols": {
            "seldon": {"image": "docker.io/envserve/envserve", "defaultImageVersion": __version__},
            "v2": {"image": "docker.io/envserve/envserve", "defaultImageVersion": __version__},
        }
    },
}


def split_image(ref: str) -> Tuple[str, str]:
    """``repo/name:tag`` -> (``repo/name``, ``tag``); a registry port is not a tag."""
    if "@" in ref:
        name, digest = ref.split("@", 1)
        return name, "@" + digest
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        return ref[:colon], ref[colon + 1 :]
    raise SettingsError("image %r has no tag; write it as NAME:TAG (e.g. seldonio/mlflowserver:1.17.1)" % ref)


def _check_shape(doc: Any, where: str) -> Dict[str, Any]:
    if not isinstance(doc, dict):
        raise SettingsError("%s: predictor_servers must be an object of server types" % where)
    for server, entry in doc.items():
        protocols = entry.get("protocols") if isinstance(entry, dict) else None
        if not isinstance(protocols, dict):
            raise SettingsError("%s: %s must have a 'protocols' object" % (where, server))
        for protocol, image in protocols.items():
            if not (
                isinstance(image, dict)
                and isinstance(image.get("image"), str)
                and isinstance(image.get("defaultImageVersion"), str)
            ):
                raise SettingsError(
                    "%s: %s.protocols.%s needs string 'image' and 'defaultImageVersion'"
                    % (where, server, protocol)
                )
    return doc


@dataclass
class PlatformConfig:
    predictor_servers: Dict[str, Any] = field(default_factory=dict)
    path: Optional[str] = None

    # -- files -------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Optional[str] = None) -> PlatformConfig:
        path = path or default_platform_path()
        if not os.path.exists(path):
            return cls({}, path)
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except ValueError as exc:
            raise SettingsError("%s is not valid JSON: %s" % (path, exc)) from None
        servers = doc.get("predictor_servers", doc) if isinstance(doc, dict) else doc
        return cls(_check_shape(servers, path), path)

    def save(self, path: Optional[str] = None) -> str:
        path = path or self.path or default_platform_path()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"predictor_servers": self.predictor_servers}, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
        self.path = path
        return path

    # -- seldon-config ConfigMap -------------------------------------------------------------------------

    @classmethod
    def from_configmap(cls, text: str, source: str = "ConfigMap") -> PlatformConfig:
        import yaml

        try:
            docs = [d for d in yaml.safe_load_all(text) if d]
        except yaml.YAMLError as exc:
            raise SettingsError("%s is not valid YAML: %s" % (source, exc)) from None
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
                raw = (doc.get("data") or {}).get("predictor_servers")
                if raw is None:
                    raise SettingsError("%s: the ConfigMap has no data.predictor_servers" % source)
                try:
                    servers = json.loads(raw)
                except ValueError as exc:
                    raise SettingsError(
                        "%s: data.predictor_servers is not valid JSON: %s" % (source, exc)
                    ) from None
                return cls(_check_shape(servers, source))
        raise SettingsError(
            "%s holds no ConfigMap (expected seldon-config from namespace seldon-system)" % source
        )

    def to_configmap(self, name: str = "seldon-config", namespace: str = "seldon-system") -> Dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"predictor_servers": json.dumps(self.predictor_servers, indent=2, sort_keys=True)},
        }

    # -- images ------------------------------------------------------------------------------------------

    def set_image(self, server: str, protocol: str, ref: str) -> None:
        image, tag = split_image(ref)
        entry = self.predictor_servers.setdefault(server, {"protocols": {}})
        entry.setdefault("protocols", {})[protocol] = {"image": image, "defaultImageVersion": tag}

    def image_for(self, server: str, protocol: str) -> Optional[str]:
        return _image(self.predictor_servers, server, protocol)

    def merged(self) -> Dict[str, Any]:
        """Built-in defaults overlaid with this platform's entries."""
        result = copy.deepcopy(BUILTIN_SERVERS)
        for server, entry in self.predictor_servers.items():
            result.setdefault(server, {"protocols": {}})["protocols"].update(
                copy.deepcopy(entry["protocols"])
            )
        return result

    def server_types(self) -> List[str]:
        return sorted(self.merged())


def _image(servers: Dict[str, Any], server: str, protocol: str) -> Optional[str]:
    entry = (servers.get(server) or {}).get("protocols", {}).get(protocol)
    if not entry:
        return None
    return "%s:%s" % (entry["image"], entry["defaultImageVersion"])


def builtin_image(server: str, protocol: str) -> Optional[str]:
    return _image(BUILTIN_SERVERS, server, protocol)
