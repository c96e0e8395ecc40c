"""The container contracts of the operators that start model servers, read from the environment.

An operator starts the image with no arguments and says everything in variables (sources and values:
docs/deploy.md). :func:`detect` names the contract and turns its variables into server settings, which
rank below ``ENVSERVE_*`` variables and flags and above ``settings.json``:

- **Seldon Core v1, ``protocol: seldon``** -- ``PREDICTIVE_UNIT_ID`` or ``PREDICTIVE_UNIT_PARAMETERS`` and no
  ``MLSERVER_MODEL_IMPLEMENTATION``: ports from ``PREDICTIVE_UNIT_{HTTP,GRPC,METRICS}_SERVICE_PORT``
  (9000, 9500, 6000), metrics at ``PREDICTIVE_UNIT_METRICS_ENDPOINT``, the model at ``model_uri`` (a unit
  parameter, else ``MLSERVER_MODEL_URI``, else ``/mnt/models``) named ``PREDICTIVE_UNIT_ID``; the prepackaged
  servers' parameters: ``method`` (SKLEARN_SERVER: predict_proba by default) and ``xtype`` (MLFLOW_SERVER);
- **MLServer's variables** (Seldon Core v1 ``protocol: v2``, KServe's ``kserve-mlserver``, Seldon Core 2,
  MLServer's own image): ``MLSERVER_{HOST,HTTP_PORT,GRPC_PORT,METRICS_PORT,METRICS_ENDPOINT,MODELS_DIR,
  PARALLEL_WORKERS,LOAD_MODELS_AT_STARTUP}`` and the default model ``MLSERVER_MODEL_{NAME,URI,IMPLEMENTATION,
  VERSION,EXTRA}``, read as MLServer reads them;
- otherwise envserve's own defaults.

A malformed variable is a :class:`~envserve.errors.SettingsError` naming it: the pod's log then says why it
is in CrashLoopBackOff. Standard library only.
"""

import json
import os
from typing import Any, Dict, Mapping, NamedTuple, Optional

from ..errors import SettingsError

__all__ = ["SELDON_METHODS", "SELDON_XTYPES", "Contract", "detect", "parse_unit_parameters"]

#: SKLEARN_SERVER's ``method`` values, and MLFLOW_SERVER's ``xtype`` values
SELDON_METHODS = ("predict_proba", "predict", "decision_function")
SELDON_XTYPES = ("ndarray", "DataFrame")
#: The words a boolean setting may be, as Seldon's wrapper (strtobool) and MLServer (pydantic) read them.
BOOL_WORDS = {"y": True, "yes": True, "t": True, "true": True, "on": True, "1": True}
BOOL_WORDS.update({"n": False, "no": False, "f": False, "false": False, "off": False, "0": False})
_SKLEARN_FILES = ("model.joblib", "model.pkl", "model.pickle")


class Contract(NamedTuple):
    name: str  # "seldon-v1", "mlserver" or "envserve"
    description: str
    settings: Dict[str, Any]


def parse_unit_parameters(value: Any, where: str) -> Dict[str, Any]:
    """Seldon's typed parameters (``[{"name", "value", "type"}]``, values as strings; types INT, FLOAT,
    DOUBLE, STRING, BOOL, JSON) as a dict; a plain object is taken as it is."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    if not isinstance(value, list):
        raise SettingsError("%s must be a list of {name, value, type}" % where)
    parsed: Dict[str, Any] = {}
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise SettingsError("%s: every parameter needs a 'name' (got %r)" % (where, item))
        name, raw, kind = item["name"], item.get("value"), str(item.get("type", "STRING")).upper()
        try:
            if kind == "INT":
                parsed[name] = int(raw)  # type: ignore[arg-type]
            elif kind in ("FLOAT", "DOUBLE"):
                parsed[name] = float(raw)  # type: ignore[arg-type]
            elif kind == "BOOL":
                parsed[name] = raw if isinstance(raw, bool) else BOOL_WORDS[str(raw).strip().lower()]
            elif kind == "JSON":
                parsed[name] = json.loads(raw) if isinstance(raw, str) else raw
            elif kind == "STRING":
                parsed[name] = "" if raw is None else str(raw)
            else:
                raise SettingsError(
                    "%s: parameter %r has type %r; valid types are INT, FLOAT, DOUBLE, STRING, BOOL, JSON"
                    % (where, name, kind)
                )
        except (ValueError, TypeError, KeyError):
            raise SettingsError(
                "%s: parameter %r with value %r cannot be read as %s" % (where, name, raw, kind)
            ) from None
    return parsed


def _port(environ: Mapping[str, str], variable: str, default: int) -> int:
    raw = environ.get(variable)
    if raw is None or raw == "":
        return default
    try:
        port = int(raw.strip(), 10)
    except ValueError:
        raise SettingsError("%s must be a port number, got %r" % (variable, raw)) from None
    if not 0 <= port <= 65535:
        raise SettingsError("%s must be a port number (0-65535), got %r" % (variable, raw))
    return port


def _seldon_v1(environ: Mapping[str, str]) -> Contract:
    raw = environ.get("PREDICTIVE_UNIT_PARAMETERS", "")
    try:
        doc: Any = json.loads(raw) if raw.strip() else []
    except ValueError as exc:
        raise SettingsError(
            "PREDICTIVE_UNIT_PARAMETERS is not valid JSON (%s): %r" % (exc, raw[:200])
        ) from None
    parameters = parse_unit_parameters(doc, "PREDICTIVE_UNIT_PARAMETERS")
    uri = str(parameters.pop("model_uri", "") or environ.get("MLSERVER_MODEL_URI") or "/mnt/models")
    extra: Dict[str, Any] = {}
    method = parameters.pop("method", None)
    if method is not None and method not in SELDON_METHODS:
        raise SettingsError(
            "PREDICTIVE_UNIT_PARAMETERS: method %r is not one of %s" % (method, ", ".join(SELDON_METHODS))
        )
    if method is None and _has_sklearn_artifact(uri):
        method = "predict_proba"  # SKLEARN_SERVER's default
    if method is not None:
        extra["method"] = method
    xtype = parameters.pop("xtype", None)
    if xtype is not None:
        if xtype not in SELDON_XTYPES:
            raise SettingsError(
                "PREDICTIVE_UNIT_PARAMETERS: xtype %r is not one of %s" % (xtype, ", ".join(SELDON_XTYPES))
            )
        extra["xtype"] = xtype
    extra.update(parameters)  # the rest reach the model's parameters.extra
    name = environ.get("PREDICTIVE_UNIT_ID") or "model"
    settings: Dict[str, Any] = {
        "host": "0.0.0.0",
        "http_port": _port(environ, "PREDICTIVE_UNIT_HTTP_SERVICE_PORT", 9000),
        "grpc_port": _port(environ, "PREDICTIVE_UNIT_GRPC_SERVICE_PORT", 9500),
        "metrics_port": _port(environ, "PREDICTIVE_UNIT_METRICS_SERVICE_PORT", 6000),
        "metrics_endpoint": environ.get("PREDICTIVE_UNIT_METRICS_ENDPOINT") or "/metrics",
        "model_repository": "",
        "model_uri": uri,
        "model_name": name,
        "model_extra": json.dumps(extra),
        "trust_model_code": True,  # the unit's image is the user's code, as Seldon's wrapper runs it
    }
    return Contract(
        "seldon-v1",
        "Seldon Core v1, protocol seldon (unit %s, model %s, HTTP %d)" % (name, uri, settings["http_port"]),
        settings,
    )


def _has_sklearn_artifact(uri: str) -> bool:
    if not os.path.isdir(uri) or os.path.isfile(os.path.join(uri, "MLmodel")):
        return os.path.basename(uri) in _SKLEARN_FILES
    return any(os.path.isfile(os.path.join(uri, f)) for f in _SKLEARN_FILES)


_MLSERVER_MARKERS = (
    "MLSERVER_HTTP_PORT",
    "MLSERVER_GRPC_PORT",
    "MLSERVER_MODELS_DIR",
    "MLSERVER_MODEL_NAME",
    "MLSERVER_MODEL_URI",
    "MLSERVER_MODEL_IMPLEMENTATION",
    "MLSERVER_LOAD_MODELS_AT_STARTUP",
)


def _mlserver(environ: Mapping[str, str]) -> Contract:
    settings: Dict[str, Any] = {
        "host": environ.get("MLSERVER_HOST") or "0.0.0.0",
        "http_port": _port(environ, "MLSERVER_HTTP_PORT", 8080),
        "grpc_port": _port(environ, "MLSERVER_GRPC_PORT", 8081),
        "metrics_port": _port(environ, "MLSERVER_METRICS_PORT", 8082),
        "metrics_endpoint": environ.get("MLSERVER_METRICS_ENDPOINT") or "/metrics",
        "trust_model_code": True,  # MLServer runs a model folder's runtime classes by design
        "admin_open": True,  # MLServer's repository API is open (Seldon Core 2's agent calls it)
    }
    models_dir = environ.get("MLSERVER_MODELS_DIR")
    default_model = {
        "MLSERVER_MODEL_NAME": "model_name",
        "MLSERVER_MODEL_URI": "model_uri",
        "MLSERVER_MODEL_IMPLEMENTATION": "model_implementation",
        "MLSERVER_MODEL_VERSION": "model_version",
        "MLSERVER_MODEL_EXTRA": "model_extra",
    }
    for variable, name in default_model.items():
        if environ.get(variable):
            settings[name] = environ[variable]
    if "model_extra" in settings:
        try:
            if not isinstance(json.loads(settings["model_extra"]), dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise SettingsError("MLSERVER_MODEL_EXTRA must be a JSON object (%s)" % exc) from None
    if models_dir:
        settings["model_repository"] = models_dir
    elif "model_uri" in settings or "model_implementation" in settings:
        settings["model_repository"] = ""  # the default model only, as KServe and Seldon's v2 start it
    workers = environ.get("MLSERVER_PARALLEL_WORKERS")
    if workers:
        try:
            settings["parallel_workers"] = int(workers, 10)  # MLServer's 0: in its main process
        except ValueError:
            raise SettingsError("MLSERVER_PARALLEL_WORKERS must be a number, got %r" % workers) from None
    load = environ.get("MLSERVER_LOAD_MODELS_AT_STARTUP")
    if load:
        if load.strip().lower() not in BOOL_WORDS:
            raise SettingsError("MLSERVER_LOAD_MODELS_AT_STARTUP must be true or false, got %r" % load)
        settings["load_models_at_startup"] = BOOL_WORDS[load.strip().lower()]
    what = "Seldon Core 2" if not settings.get("load_models_at_startup", True) and models_dir else "MLServer"
    if environ.get("K_SERVICE") or environ.get("KSERVE_CONTAINER"):
        what = "KServe (kserve-mlserver)"
    elif environ.get("PREDICTIVE_UNIT_ID"):
        what = "Seldon Core v1, protocol v2"
    return Contract("mlserver", "%s variables (HTTP %d)" % (what, settings["http_port"]), settings)


def detect(environ: Optional[Mapping[str, str]] = None) -> Contract:
    """The contract the environment describes (see the module's docstring)."""
    environ = os.environ if environ is None else environ
    seldon = environ.get("PREDICTIVE_UNIT_ID") or environ.get("PREDICTIVE_UNIT_PARAMETERS")
    if seldon and not environ.get("MLSERVER_MODEL_IMPLEMENTATION"):
        return _seldon_v1(environ)
    if any(environ.get(v) for v in _MLSERVER_MARKERS):
        return _mlserver(environ)
    return Contract("envserve", "envserve's own settings", {})
