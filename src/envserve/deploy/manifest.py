"""Rendering deployment manifests: SeldonDeployment, KServe InferenceService, plain Kubernetes.

A :class:`DeploymentSpec` is what the flags and the wizard collect. :func:`choose_image` applies the
image precedence — explicit override > model-level setting > platform default > built-in default — and
says which one won; the rendered manifest records both in annotations. Templates are files in
``templates/`` (Jinja2 producing YAML, every value JSON-encoded).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..errors import SettingsError
from .platform import ENVSERVE_SERVER, PROTOCOLS, PlatformConfig, builtin_image, split_image

__all__ = [
    "SERVER_TYPES",
    "TARGETS",
    "DeploymentSpec",
    "ImageChoice",
    "choose_image",
    "dump_yaml",
    "render",
    "validate_spec",
]

TARGETS = ("seldon", "kserve", "seldon2", "k8s")
SERVER_TYPES = (
    "MLFLOW_SERVER",
    "SKLEARN_SERVER",
    "XGBOOST_SERVER",
    "TRITON_SERVER",
    "TENSORFLOW_SERVER",
    ENVSERVE_SERVER,
)
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
_KSERVE_FORMATS = {
    "MLFLOW_SERVER": "mlflow",
    "SKLEARN_SERVER": "sklearn",
    "XGBOOST_SERVER": "xgboost",
    "TRITON_SERVER": "triton",
    "TENSORFLOW_SERVER": "tensorflow",
    ENVSERVE_SERVER: "sklearn",
}
ANNOTATION_PREFIX = "envserve.io/"


@dataclass
class DeploymentSpec:
    name: str
    target: str = "seldon"
    namespace: str = "default"
    server_type: str = "MLFLOW_SERVER"
    protocol: str = "seldon"
    model_uri: str = ""
    secret: Optional[str] = None
    replicas: int = 1
    max_replicas: Optional[int] = None
    target_cpu: int = 80
    cpu: Optional[str] = None
    memory: Optional[str] = None
    image: Optional[str] = None  # explicit override (flag or wizard)
    model_image: Optional[str] = None  # model-level setting
    custom_server: bool = False  # serve with envserve's image even for a prepackaged server type
    extra_labels: Dict[str, str] = field(default_factory=dict)

    @property
    def uses_envserve(self) -> bool:
        # Seldon Core 2 runs the image in MLServer's place: it is envserve whatever the model's format
        return self.target in ("k8s", "seldon2") or self.custom_server or self.server_type == ENVSERVE_SERVER


@dataclass
class ImageChoice:
    image: str
    source: str  # "override" | "model" | "platform" | "builtin"
    platform_default: Optional[str]  # what the platform alone would give (for Seldon's override rule)

    @property
    def reason(self) -> str:
        return {
            "override": "explicit override (flag or wizard)",
            "model": "model-level setting",
            "platform": "platform default",
            "builtin": "built-in default",
        }[self.source]


def validate_name(value: str, what: str = "name") -> str:
    if not value or len(value) > 63 or not _DNS1123_LABEL.match(value):
        raise SettingsError(
            "%s %r is not a DNS-1123 label: lower-case letters, digits and '-', starting and ending with a "
            "letter or digit, at most 63 characters" % (what, value)
        )
    return value


def validate_quantity(value: Optional[str], what: str) -> Optional[str]:
    if value in (None, ""):
        return None
    if not _QUANTITY.match(str(value)):
        raise SettingsError("%s %r is not a Kubernetes quantity (e.g. 500m, 2, 512Mi, 1Gi)" % (what, value))
    return str(value)


def validate_spec(spec: DeploymentSpec) -> DeploymentSpec:
    """Raise SettingsError naming the first invalid field."""
    if spec.target not in TARGETS:
        raise SettingsError("target %r is not one of %s" % (spec.target, ", ".join(TARGETS)))
    validate_name(spec.name)
    validate_name(spec.namespace, "namespace")
    if spec.protocol not in PROTOCOLS:
        raise SettingsError("protocol %r is not one of %s" % (spec.protocol, ", ".join(PROTOCOLS)))
    if not isinstance(spec.replicas, int) or spec.replicas < 0:
        raise SettingsError("replicas must be a whole number >= 0, got %r" % (spec.replicas,))
    if spec.max_replicas is not None and spec.max_replicas < max(spec.replicas, 1):
        raise SettingsError(
            "max replicas (%d) must be at least replicas (%d)" % (spec.max_replicas, spec.replicas)
        )
    validate_quantity(spec.cpu, "cpu")
    validate_quantity(spec.memory, "memory")
    if spec.secret:
        validate_name(spec.secret, "secret name")
    for ref in (spec.image, spec.model_image):
        if ref:
            split_image(ref)
    if spec.target == "seldon2":
        spec.protocol = "v2"  # the only protocol Seldon Core 2 speaks
        if not spec.model_uri or spec.model_uri.startswith(("models:/", "runs:/", "/")):
            raise SettingsError(
                "Seldon Core 2 needs --model-uri with the artifacts' storage location (s3://, gs://, ...: "
                "its agent downloads them with rclone), got %r; for an MLflow model, the wizard resolves "
                "models:/name/version to it" % spec.model_uri
            )
    if spec.target == "k8s" and spec.server_type not in (ENVSERVE_SERVER,) and not spec.custom_server:
        spec.custom_server = True  # plain Kubernetes always runs envserve itself
    return spec


def choose_image(spec: DeploymentSpec, platform: PlatformConfig) -> ImageChoice:
    server = ENVSERVE_SERVER if spec.uses_envserve else spec.server_type
    protocol = spec.protocol
    platform_default = platform.image_for(server, protocol) or builtin_image(server, protocol)
    if spec.image:
        return ImageChoice(spec.image, "override", platform_default)
    if spec.model_image:
        return ImageChoice(spec.model_image, "model", platform_default)
    from_platform = platform.image_for(server, protocol)
    if from_platform:
        return ImageChoice(from_platform, "platform", platform_default)
    builtin = builtin_image(server, protocol)
    if builtin:
        return ImageChoice(builtin, "builtin", platform_default)
    raise SettingsError(
        "no image for server type %s with protocol %s: set one with 'envserve platform set-image %s "
        "--protocol %s IMAGE:TAG' or pass --image" % (server, protocol, server, protocol)
    )


def _resources(spec: DeploymentSpec) -> Dict[str, Any]:
    values = {k: v for k, v in (("cpu", spec.cpu), ("memory", spec.memory)) if v}
    return {"requests": values, "limits": dict(values)} if values else {}


def admin_secret(name: str) -> str:
    """The Secret whose key ``token`` a deployment's server takes as its admin token."""
    return ("%s-admin-token" % name[:50]).strip("-")


def _envserve_container(
    spec: DeploymentSpec, port: int, grpc_port: int
) -> Tuple[List[str], List[Dict[str, Any]]]:
    remote = bool(spec.model_uri) and not spec.model_uri.startswith("/")
    if spec.target == "k8s" and remote:
        args = ["serve", "--model-uri", spec.model_uri]
    else:
        args = ["serve", "/mnt/models"]
    env: List[Dict[str, Any]] = [
        {"name": "ENVSERVE_HOST", "value": "0.0.0.0"},
        {"name": "ENVSERVE_HTTP_PORT", "value": str(port)},
        {"name": "ENVSERVE_GRPC_PORT", "value": str(grpc_port)},
        {"name": "ENVSERVE_ENV_CACHE", "value": "/home/envserve/.cache/envserve/environments"},
        # load/unload from beyond the pod need this token; without the Secret they answer the pod only
        {
            "name": "ENVSERVE_ADMIN_TOKEN",
            "valueFrom": {
                "secretKeyRef": {"name": admin_secret(spec.name), "key": "token", "optional": True}
            },
        },
    ]
    return args, env


def _probes(port: int) -> Dict[str, Any]:
    def probe(path: str, period: int) -> Dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": port},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        }

    return {
        "live": dict(probe("/v2/health/live", 10), initialDelaySeconds=5),
        "ready": dict(probe("/v2/health/ready", 5), initialDelaySeconds=2),
    }


_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 8888,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def render(spec: DeploymentSpec, platform: PlatformConfig) -> List[Dict[str, Any]]:
    """The manifest documents for ``spec`` (validated first)."""
    import jinja2
    import yaml

    validate_spec(spec)
    choice = choose_image(spec, platform)
    labels = {
        "app.kubernetes.io/name": spec.name,
        "app.kubernetes.io/managed-by": "envserve",
        **spec.extra_labels,
    }
    annotations = {
        ANNOTATION_PREFIX + "image": choice.image,
        ANNOTATION_PREFIX + "image-source": choice.reason,
    }
    if spec.model_uri:
        annotations[ANNOTATION_PREFIX + "model-uri"] = spec.model_uri
    custom = spec.uses_envserve
    if spec.target == "seldon":
        port, grpc_port = 9000, 9500  # Seldon Core v1's ports for custom model servers
    else:
        port, grpc_port = 8080, 8081
    args, env = _envserve_container(spec, port, grpc_port)
    # Seldon: a container is declared to override the image, to run envserve itself, or for resources.
    image_overridden = choice.image != choice.platform_default
    container = custom or image_overridden or bool(_resources(spec))
    if spec.target == "kserve" and not custom and choice.source not in ("override", "model"):
        # KServe picks the image of its own runtime for the model format; nothing of ours applies.
        annotations[ANNOTATION_PREFIX + "image"] = "kserve runtime for modelFormat %s" % _KSERVE_FORMATS.get(
            spec.server_type, "sklearn"
        )
        annotations[ANNOTATION_PREFIX + "image-source"] = "KServe ClusterServingRuntime"
    context = {
        "d": spec,
        "image": choice.image,
        "labels": labels,
        "selector": {"app.kubernetes.io/name": spec.name},
        "annotations": annotations,
        "custom": custom,
        "container": container,
        "custom_args": args,
        "custom_env": env,
        "resources": _resources(spec),
        "probes": _probes(port),
        # read-only root only where envserve's writable paths are mounted (the plain Kubernetes target)
        "security_context": _SECURITY
        if spec.target == "k8s"
        else dict(_SECURITY, readOnlyRootFilesystem=False),
        "runtime_name": "envserve-%s" % spec.name if len(spec.name) <= 54 else "envserve",
        "formats": ["sklearn", "xgboost", "lightgbm", "mlflow"],
        # KServe's modelFormat, and what a Seldon Core 2 Model requires of its Server (the same names)
        "model_format": _KSERVE_FORMATS.get(spec.server_type, "sklearn"),
        "server_name": ("envserve-%s" % spec.name)[:63].rstrip("-"),
        "kserve_protocol": "v2" if spec.protocol == "v2" or custom else "v1",
        "service_account": "%s-sa" % spec.name[:60],
        "image_overridden": image_overridden
        if spec.target == "seldon"
        else choice.source in ("override", "model"),
    }
    env_ = jinja2.Environment(
        loader=jinja2.PackageLoader("envserve.deploy", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    text = env_.get_template("%s.yaml.j2" % spec.target).render(**context)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def dump_yaml(docs: List[Dict[str, Any]]) -> str:
    import yaml

    return "---\n".join(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False) for doc in docs)
