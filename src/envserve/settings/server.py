"""Server settings and where they come from.

Precedence, highest first (documented in docs/settings.md):

1. CLI flags (``envserve serve --http-port 9000``), passed here as ``overrides``;
2. environment variables ``ENVSERVE_<FIELD>`` (e.g. ``ENVSERVE_HTTP_PORT=9000``);
3. MLServer's variables for the same setting (``MLSERVER_ENV_TARBALL``);
4. the container contract the environment describes (:mod:`.contracts`);
5. ``settings.json`` in the model repository (MLServer's file; its keys are accepted);
6. ``ENVSERVE_DEFAULTS``, a JSON object of settings: an image's own defaults (``envserve image build``
   sets the address, ports and model folder there), so that any operator's contract wins over them;
7. the defaults below.

The model repository: a flag, ``ENVSERVE_MODEL_REPOSITORY``, the command's argument, the contract's, then
``ENVSERVE_DEFAULTS``'s, else the current directory.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import SettingsError
from .contracts import BOOL_WORDS
from .contracts import detect as detect_contract

__all__ = ["ENV_PREFIX", "SERVER_SETTINGS_FILE", "ServerSettings"]

ENV_PREFIX = "ENVSERVE_"
SERVER_SETTINGS_FILE = "settings.json"

logger = logging.getLogger("envserve.settings")

# Variables of other servers' containers that mean one of our settings (ENVSERVE_* wins over them).
_OTHER_VARIABLES = {
    "MLSERVER_ENV_TARBALL": "env_tarball",
    "PREDICTIVE_UNIT_ID": "predictive_unit_id",
    "PREDICTIVE_UNIT_IMAGE": "predictive_unit_image",
}
#: MLServer 1.7's server settings: every key its settings.json takes (also read as ``MLSERVER_<KEY>``,
#: below envserve's own variables). Each means the envserve setting of the same name, the one in
#: :data:`_MLSERVER_ALIASES`, or is in :data:`_MLSERVER_IGNORED` with the reason.
MLSERVER_SETTINGS = (
    "cache_enabled",
    "cache_size",
    "cors_settings",
    "debug",
    "environments_dir",
    "extensions",
    "grpc_max_message_length",
    "grpc_port",
    "gzip_enabled",
    "host",
    "http_port",
    "kafka_enabled",
    "kafka_servers",
    "kafka_topic_input",
    "kafka_topic_output",
    "load_models_at_startup",
    "logging_settings",
    "metrics_dir",
    "metrics_endpoint",
    "metrics_port",
    "metrics_rest_server_prefix",
    "model_repository_implementation",
    "model_repository_implementation_args",
    "model_repository_root",
    "parallel_workers",
    "parallel_workers_timeout",
    "root_path",
    "server_name",
    "server_version",
    "tracing_server",
    "use_structured_logging",
)
# MLServer's names for our settings.
_MLSERVER_ALIASES = {
    "model_repository_root": "model_repository",
    "use_structured_logging": "log_format",  # true: json
    "debug": "access_log",  # what MLServer's debug turns on: a line per REST request and gRPC call
    "cors_settings": "cors_origins",  # its allow_origins
}
# MLServer's settings envserve does not act on, accepted so MLServer repositories load unchanged; the log
# says so, with the reason, when one is set to something other than off/empty.
_MLSERVER_IGNORED = {
    "metrics_dir": "envserve's metrics live in its own process; there are no metric files to keep",
    "parallel_workers_timeout": "workers are stopped within graceful_timeout",
    "root_path": "envserve serves at the root; put it behind a proxy that strips the prefix",
    "extensions": "GET /v2 lists the extensions envserve implements",
    "tracing_server": "envserve exports traces over OTLP/HTTP: set tracing_endpoint to the collector's URL",
    "kafka_enabled": "envserve does not consume inference requests from Kafka",
    "kafka_servers": "envserve does not consume inference requests from Kafka",
    "kafka_topic_input": "envserve does not consume inference requests from Kafka",
    "kafka_topic_output": "envserve does not consume inference requests from Kafka",
    "model_repository_implementation": "envserve reads model folders, URIs and registries itself",
    "model_repository_implementation_args": "envserve reads model folders, URIs and registries itself",
    "gzip_enabled": "envserve does not compress answers",
    "cache_enabled": "envserve does not cache answers",
    "cache_size": "envserve does not cache answers",
}

#: Ignored settings whose absence changes nothing a client sees: said at info level, whatever their value.
_HARMLESS = frozenset(("metrics_dir", "parallel_workers_timeout", "extensions"))


@dataclass
class ServerSettings:
    """Everything the server process needs to know; every field is also ``ENVSERVE_<NAME>``."""

    model_repository: str = "."
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081
    server_name: str = "envserve"
    #: Largest request body accepted, in bytes; larger bodies get 413.
    max_request_size: int = 100 * 1024 * 1024
    #: Seconds in-flight requests get to finish after SIGTERM/SIGINT before the server exits anyway.
    graceful_timeout: float = 30.0
    #: Default number of worker processes for models that run in their own environment (at least one
    #: each). 0, MLServer's "in its main process", is accepted: models in the server's environment run in
    #: process either way.
    parallel_workers: int = 1
    #: Resident memory (MiB) above which a worker is recycled once idle; 0 = no limit. A model's
    #: parameters.worker_memory_limit overrides it.
    worker_memory_limit: int = 0
    #: Seconds a model may take to answer one request (enforced for models in worker processes).
    inference_timeout: float = 60.0
    #: Requests one model may hold waiting for it (its parameters.max_queue_size overrides); beyond it a
    #: request is answered 503 with Retry-After (gRPC UNAVAILABLE) at once. 0 = no bound.
    max_queue_size: int = 256
    #: REST requests in flight, and gRPC connections, each edge serves at once; beyond it REST answers 503
    #: with Retry-After and gRPC refuses the connection (GOAWAY). 0 = no bound.
    max_connections: int = 1024
    #: Largest gRPC message accepted, in bytes (0 = max_request_size), as MLServer's setting of that name.
    grpc_max_message_length: int = 0
    #: Seconds a gRPC connection without calls is kept open (0 = until the client closes it).
    grpc_idle_timeout: float = 300.0
    #: gRPC server reflection (grpc.reflection.v1 and v1alpha): clients such as grpcurl list and describe
    #: the services without the .proto file.
    grpc_reflection: bool = True
    #: Rows one merged call of adaptive batching may hold.
    max_batch_rows: int = 1024
    #: An environment tarball for every model that names none (MLServer's MLSERVER_ENV_TARBALL is read too).
    env_tarball: str = ""
    #: Seldon Core v1: this unit's name and image, for ``meta.requestPath`` of Seldon answers (the operator
    #: sets PREDICTIVE_UNIT_ID and PREDICTIVE_UNIT_IMAGE, read too).
    predictive_unit_id: str = ""
    predictive_unit_image: str = ""
    log_level: str = "info"
    #: Log lines as ``text`` or ``json`` (one object per line; MLServer's use_structured_logging: true).
    log_format: str = "text"
    #: One log line per request (logger envserve.access): method, path, model, status, latency, request id.
    access_log: bool = False
    #: A logging configuration applied over envserve's, as MLServer applies its ``logging_settings``: a
    #: ``.json`` or YAML file (dictConfig), an INI file (fileConfig), or an inline JSON object.
    logging_settings: str = ""
    #: OpenTelemetry traces of inference requests, exported over OTLP/HTTP to this collector URL (e.g.
    #: http://otel-collector:4318); empty = off. Needs envserve[tracing].
    tracing_endpoint: str = ""
    #: Where model environments are extracted/built and cached ("" = ENVSERVE_ENV_CACHE or
    #: ~/.cache/envserve/environments).
    environments_dir: str = ""
    #: Token for the repository's load/unload calls (REST ``Authorization: Bearer``, gRPC metadata
    #: ``authorization``); empty = not required. Inference is never behind it.
    admin_token: str = ""
    #: Comma-separated origins allowed to call from a browser (CORS); empty = none, "*" = any.
    #: Seconds a request's line and headers may take to arrive from its first byte (and a new connection
    #: to begin one): 408 and closed beyond (slow-header attacks).
    head_timeout: float = 30.0
    #: Seconds a request body may pause while the server reads it: 408 and closed beyond.
    body_timeout: float = 60.0
    #: Bytes a request's line and headers may hold: 431 and closed beyond.
    max_head_bytes: int = 65536
    #: Requests one keep-alive connection may carry before the answer says Connection: close.
    max_requests_per_connection: int = 10000
    cors_origins: str = ""
    #: Without ``admin_token``, the calls that change the server (load, unload, the console's changes)
    #: answer only clients on this machine; True opens them to every client (as MLServer's API is open).
    admin_open: bool = False
    #: Host names (comma-separated) browsers may reach this server by for state-changing calls (load,
    #: unload, the console's changes), beside loopback names and ``host`` itself: a page served under any
    #: other name (DNS rebinding) is refused. Origins in ``cors_origins`` are allowed as listed.
    allowed_hosts: str = ""
    #: Serve the web console at /console/ (off by default; beyond loopback it needs admin_token).
    console: bool = False
    #: Colon-separated directories that local model paths, URIs and environments must stay inside
    #: (symlinks resolved); empty = no restriction.
    allowed_roots: str = ""
    #: Unpickle model files with the restricted loader, which builds only allowed classes (False: a pickle
    #: may name and call anything, as pickle itself allows; see docs/security.md).
    pickle_scan: bool = True
    #: Comma-separated classes ("module.Class") or packages ("package.*", their classes) every model's
    #: pickles may build beside the defaults; a model's own ``parameters.pickle_allow`` may only narrow it.
    pickle_allow: str = ""
    #: Run a model's own Python code: runtime classes (custom, Seldon's, MLServer's), MLflow models with
    #: their own code (PythonModel, loader modules). False: such models are UNAVAILABLE saying so. The
    #: ``mlserver start``, ``mlflow serve`` and Seldon Core v1 entry points default it to true, as those
    #: servers run model code by design (docs/security.md).
    trust_model_code: bool = False
    #: A separate port serving only /metrics (0: /metrics is on the HTTP port only).
    metrics_port: int = 0
    #: A model to serve without settings files (models:/..., runs:/..., s3://..., https://..., a path).
    model_uri: str = ""
    #: Its name (default: from the URI, e.g. models:/digits/1 -> digits).
    model_name: str = ""
    #: Its runtime, version and ``parameters.extra`` (a JSON object), as MLServer's MLSERVER_MODEL_* say.
    model_implementation: str = ""
    model_version: str = ""
    model_extra: str = ""
    #: Load the repository's models at start (False: only when the repository API asks, as Seldon Core 2).
    load_models_at_startup: bool = True
    #: The path /metrics is also served at on ``metrics_port`` (Seldon Core v1: /prometheus).
    metrics_endpoint: str = "/metrics"
    #: Serve MLServer's metric families (model_infer_request_*, rest_server_*, grpc_server_*, its queues)
    #: beside envserve's, so dashboards written for MLServer keep working (docs/metrics.md).
    mlserver_metrics: bool = True
    #: The prefix of MLServer's REST metric names (MLServer's setting of that name).
    metrics_rest_server_prefix: str = "rest_server"
    #: The version GET /v2 reports ("" = envserve's own), as MLServer's setting of that name.
    server_version: str = ""
    #: The container contract found in the environment (settings/contracts.py), for the first log line.
    contract: str = ""

    @classmethod
    def from_sources(
        cls,
        model_repository: Optional[str] = None,
        overrides: Optional[Mapping[str, Any]] = None,
        environ: Optional[Mapping[str, str]] = None,
    ) -> ServerSettings:
        """Merge settings.json, ``ENVSERVE_*`` variables and explicit overrides (in rising precedence)."""
        environ = os.environ if environ is None else environ
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        notices: List[Tuple[int, str]] = []  # what reading them noticed, logged after the first line
        contract = detect_contract(environ)
        defaults = _image_defaults(environ)
        repo = (
            overrides.get("model_repository")
            or environ.get(ENV_PREFIX + "MODEL_REPOSITORY")
            or model_repository
        )
        if repo is None:
            repo = contract.settings.get("model_repository", defaults.get("model_repository", "."))
        values: Dict[str, Any] = {k: v for k, v in defaults.items() if k != "model_repository"}
        values["model_repository"] = repo
        if repo:
            values.update(_read_file(os.path.join(repo, SERVER_SETTINGS_FILE), notices))
        values.update({k: v for k, v in contract.settings.items() if k != "model_repository"})
        values["contract"] = contract.description
        known_fields = {f.name: f for f in fields(cls)}
        for variable, name in _OTHER_VARIABLES.items():  # below envserve's own variables
            raw = environ.get(variable)
            if raw is not None:
                values[name] = _mlserver_value(name, raw, known_fields[name].type, variable)
        for key in MLSERVER_SETTINGS:
            variable = "MLSERVER_" + key.upper()
            raw = environ.get(variable)
            if raw is None:
                continue
            if key in _MLSERVER_IGNORED:
                _ignored(variable, key, raw, notices)
                continue
            name = _MLSERVER_ALIASES.get(key, key)
            values[name] = _mlserver_value(name, raw, known_fields[name].type, variable)
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f.name, raw, f.type, ENV_PREFIX + f.name.upper())
        for key, value in overrides.items():
            values[key] = value
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise SettingsError("unknown server settings: %s" % ", ".join(sorted(unknown)))
        settings = cls(**values)
        settings.validate()
        # what reading them noticed, (logging level, message): not a setting, announce() logs it
        setattr(settings, "_notices", notices)  # noqa: B010
        return settings

    def browser_hosts(self) -> List[str]:
        """``allowed_hosts``, and ``host`` when it is one address (not a wildcard)."""
        hosts = [h.strip() for h in self.allowed_hosts.split(",") if h.strip()]
        if self.host not in ("", "0.0.0.0", "::"):
            hosts.append("[%s]" % self.host if ":" in self.host else self.host)
        return hosts

    def validate(self) -> None:
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self, name)
            if not isinstance(port, int) or not (0 <= port <= 65535 or (name == "grpc_port" and port == -1)):
                raise SettingsError("%s must be a port number (0-65535), got %r" % (name, port))
        if self.max_request_size <= 0:
            raise SettingsError("max_request_size must be a positive number of bytes")
        if self.head_timeout <= 0 or self.body_timeout <= 0:
            raise SettingsError("head_timeout and body_timeout must be positive numbers of seconds")
        if self.max_head_bytes < 1024 or self.max_requests_per_connection < 1:
            raise SettingsError(
                "max_head_bytes must be at least 1024 and max_requests_per_connection at least 1"
            )
        if self.parallel_workers < 0:
            raise SettingsError("parallel_workers must be 0 or more, got %d" % self.parallel_workers)
        if self.graceful_timeout < 0 or self.inference_timeout <= 0:
            raise SettingsError("graceful_timeout must be >= 0 and inference_timeout > 0")
        if self.model_extra:
            try:
                extra = json.loads(self.model_extra)
            except ValueError:
                extra = None
            if not isinstance(extra, dict):
                raise SettingsError("model_extra must be a JSON object, got %r" % self.model_extra[:200])
        if not self.metrics_endpoint.startswith("/"):
            raise SettingsError(
                "metrics_endpoint must be a path starting with '/', got %r" % self.metrics_endpoint
            )
        if self.log_format not in ("text", "json"):
            raise SettingsError("log_format must be text or json, got %r" % self.log_format)
        for name in ("max_queue_size", "max_connections", "grpc_idle_timeout", "grpc_max_message_length"):
            if getattr(self, name) < 0:
                raise SettingsError("%s must be >= 0 (0 = no bound)" % name)

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _image_defaults(environ: Mapping[str, str]) -> Dict[str, Any]:
    raw = environ.get(ENV_PREFIX + "DEFAULTS")
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise SettingsError("%sDEFAULTS is not valid JSON (%s): %r" % (ENV_PREFIX, exc, raw[:200])) from None
    if not isinstance(doc, dict):
        raise SettingsError("%sDEFAULTS must be a JSON object of settings, got %r" % (ENV_PREFIX, raw[:200]))
    known = {f.name for f in fields(ServerSettings)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise SettingsError("%sDEFAULTS names unknown settings: %s" % (ENV_PREFIX, ", ".join(unknown)))
    return doc


#: What a model may run: only the operator says (variables, flags), never the repository's settings.json.
OPERATOR_ONLY = frozenset(("trust_model_code", "pickle_scan", "pickle_allow"))


def _read_file(path: str, notices: List[Tuple[int, str]]) -> Dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SettingsError("%s is not valid JSON: %s" % (path, exc)) from None
    if not isinstance(doc, dict):
        raise SettingsError("%s must hold a JSON object" % path)
    known = {f.name: f for f in fields(ServerSettings)}
    values: Dict[str, Any] = {}
    for key, value in doc.items():
        target = _MLSERVER_ALIASES.get(key, key)
        if key in _MLSERVER_IGNORED:
            _ignored(path, key, value, notices)
            continue
        if target not in known:
            raise SettingsError(
                "%s: unknown setting %r; known settings are %s" % (path, key, ", ".join(sorted(known)))
            )
        if target in OPERATOR_ONLY:
            notices.append(
                (
                    logging.WARNING,
                    "%s: %s is ignored there: the repository's files come from where its models come from, "
                    "so they cannot say what models may run; set %s%s"
                    % (path, key, ENV_PREFIX, target.upper()),
                )
            )
            continue
        if target == "model_repository":
            value = os.path.normpath(os.path.join(os.path.dirname(path), value))
        values[target] = _mlserver_value(target, value, known[target].type, "%s: %s" % (path, key))
    return values


def _ignored(where: str, key: str, value: Any, notices: List[Tuple[int, str]]) -> None:
    off = value in (None, False, "", [], {}, 0) or str(value).strip().lower() in (
        "false",
        "0",
        "no",
        "off",
        "null",
    )
    off = off or key in _HARMLESS
    level = logging.INFO if off else logging.WARNING
    notices.append((level, "%s: ignoring MLServer's %s (%s)" % (where, key, _MLSERVER_IGNORED[key])))


def _mlserver_value(name: str, raw: Any, annotation: Any, where: str) -> Any:
    """A value from MLServer's settings or variables: its ``use_structured_logging`` flag is our
    ``log_format``, its inline ``logging_settings`` dict our JSON text, its ``cors_settings`` our
    ``cors_origins`` (its ``allow_origins``); the rest as ours."""
    flags = ("1", "true", "yes", "on", "0", "false", "no", "off")
    if name == "log_format" and (isinstance(raw, bool) or str(raw).strip().lower() in flags):
        return "json" if _coerce(name, raw, "bool", where) else "text"
    if name == "logging_settings" and isinstance(raw, dict):
        return json.dumps(raw)
    if name == "cors_origins" and (isinstance(raw, dict) or str(raw).lstrip().startswith("{")):
        try:
            doc = raw if isinstance(raw, dict) else json.loads(raw)
        except ValueError as exc:
            raise SettingsError("%s must be a JSON object (%s)" % (where, exc)) from None
        origins = doc.get("allow_origins") or []
        if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
            raise SettingsError("%s: allow_origins must be a list of origins" % where)
        return ",".join(origins)
    return _coerce(name, raw, annotation, where)


def _coerce(name: str, raw: Any, annotation: Any, where: str) -> Any:
    kind = {"int": int, "float": float, "str": str, "bool": bool}.get(
        str(annotation).replace("typing.", ""), str
    )
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in BOOL_WORDS or not text:
            return BOOL_WORDS.get(text, False)  # an empty variable is false
        raise SettingsError("%s must be true or false, got %r" % (where, raw))
    if isinstance(raw, kind) and not isinstance(raw, bool):
        return raw
    try:
        if kind is int:
            return int(str(raw), 10)
        if kind is float:
            return float(raw)
    except ValueError:
        raise SettingsError("%s must be a %s, got %r" % (where, kind.__name__, raw)) from None
    return str(raw)
