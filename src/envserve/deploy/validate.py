"""Offline validation of manifests, with errors that point at the field.

Core kinds (Deployment, Service, HorizontalPodAutoscaler, ServiceAccount, ConfigMap, ...) are checked
against the Kubernetes OpenAPI schemas of the ``kubernetes-validate`` package (strict: unknown fields are
errors). Custom resources are checked against the schemas shipped in ``schemas/``: KServe's
InferenceService and ServingRuntime CRDs, and envserve's own schema of the SeldonDeployment fields it
emits.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Tuple

from ..errors import SettingsError

__all__ = ["KUBERNETES_VERSION", "validate_documents", "validate_files"]

#: The Kubernetes API version core kinds are validated against.
KUBERNETES_VERSION = "1.30.0"

_SCHEMAS = os.path.join(os.path.dirname(__file__), "schemas")
_CRDS: Dict[Tuple[str, str], str] = {
    ("machinelearning.seldon.io/v1", "SeldonDeployment"): "seldondeployment-v1.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "kserve-inferenceservice-v1beta1.json",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "kserve-servingruntime-v1alpha1.json",
    # the cluster-scoped kind has the same spec (KServe's CRDs share one schema for both)
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "kserve-servingruntime-v1alpha1.json",
    # envserve's own schemas of the fields it emits (Seldon Core 2's CRDs are BSL 1.1)
    ("mlops.seldon.io/v1alpha1", "Server"): "seldon-core2-server-v1alpha1.json",
    ("mlops.seldon.io/v1alpha1", "Model"): "seldon-core2-model-v1alpha1.json",
}
_loaded: Dict[str, Any] = {}


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += "[%d]" % p if isinstance(p, int) else ("." if out else "") + str(p)
    return out or "(document)"


def _crd_errors(doc: Dict[str, Any], schema_file: str) -> List[str]:
    import jsonschema

    schema = _loaded.get(schema_file)
    if schema is None:
        with open(os.path.join(_SCHEMAS, schema_file), encoding="utf-8") as f:
            schema = _loaded[schema_file] = json.load(f)
    validator = jsonschema.Draft7Validator(schema)
    return [
        "%s: %s" % (_path(e.absolute_path), e.message)
        for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def _core_errors(doc: Dict[str, Any]) -> List[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        inner = getattr(exc, "caught_exc", None) or exc
        path = _path(getattr(inner, "absolute_path", getattr(inner, "path", [])))
        return ["%s: %s" % (path, getattr(inner, "message", str(inner)))]
    except kubernetes_validate.SchemaNotFoundError:
        return [
            "(document): no Kubernetes %s schema for %s %s"
            % (KUBERNETES_VERSION, doc.get("apiVersion"), doc.get("kind"))
        ]
    return []


def validate_documents(docs: Iterable[Any], source: str = "manifest") -> List[str]:
    """Error messages for ``docs`` (empty when all are valid), each naming document and field."""
    try:
        import jsonschema  # noqa: F401
        import kubernetes_validate  # noqa: F401
    except ImportError:
        raise SettingsError(
            "validating manifests needs envserve's deploy extra: pip install 'envserve[deploy]'"
        ) from None
    errors = []
    for index, doc in enumerate(docs):
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            errors.append(
                "%s: document %d is not a Kubernetes object (no apiVersion/kind)" % (source, index + 1)
            )
            continue
        label = "%s: document %d (%s %s)" % (
            source,
            index + 1,
            doc["kind"],
            (doc.get("metadata") or {}).get("name", "?"),
        )
        schema_file = _CRDS.get((doc["apiVersion"], doc["kind"]))
        found = _crd_errors(doc, schema_file) if schema_file else _core_errors(doc)
        errors.extend("%s: %s" % (label, e) for e in found)
    return errors


def validate_files(paths: Iterable[str]) -> List[str]:
    import yaml

    errors: List[str] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                docs = [d for d in yaml.safe_load_all(f) if d is not None]
        except OSError as exc:
            errors.append("%s: cannot read: %s" % (path, exc.strerror))
            continue
        except yaml.YAMLError as exc:
            errors.append("%s: not valid YAML: %s" % (path, exc))
            continue
        errors.extend(validate_documents(docs, path))
    return errors
