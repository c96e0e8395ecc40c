"""MLflow's deployment plugin for envserve (entry point ``mlflow.deployments: envserve``), so MLflow users
call envserve from MLflow now that ``--enable-mlserver`` is gone:

- ``mlflow deployments run-local -t envserve --name NAME -m MODEL_URI [-C port=5000] [-C host=...]
  [-C workers=N] [-C grpc_port=N]``: serve the model in the foreground (what ``mlflow models serve
  --enable-mlserver`` did; V2 REST at ``/v2/models/NAME/infer``, MLflow's ``/invocations`` too);
- target ``envserve:/<model repository>``: the deployments are the repository's model folders, each a
  model-settings.json naming the model URI (fetched by the server, with its own credentials, when it
  loads the model). ``create``/``update`` write the folder and ask the server at ``-C url=...`` (default
  ``http://127.0.0.1:8080``, or ``ENVSERVE_URL``) to load it; ``delete`` unloads and removes it; ``list``
  and ``get`` read the folders and the server's state; ``predict`` sends a DataFrame (or anything MLflow's
  scoring protocol takes) to the server's ``/invocations?model=NAME`` and returns what MLflow's client
  returns. ``-C token=...`` is the server's admin token (``ENVSERVE_ADMIN_TOKEN``).

This module runs in MLflow's environment, beside envserve; it is imported only by MLflow.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional

from mlflow.deployments import BaseDeploymentClient, PredictionsResponse
from mlflow.exceptions import MlflowException

from .mlflow_rest import open_url

__all__ = ["EnvserveDeploymentClient", "run_local", "target_help"]

_SETTINGS = "model-settings.json"


def run_local(name: str, model_uri: str, flavor: Optional[str] = None, config: Any = None) -> None:
    """Serve ``model_uri`` as ``name`` here, in the foreground (MLflow's ``run-local``; MLflow calls it
    without the target, whatever its base module's documentation says)."""
    from .cli.mlflow import serve_uri

    _check_flavor(flavor)
    config = dict(config or {})
    port = int(config.pop("port", 5000))
    host = str(config.pop("host", "127.0.0.1"))
    workers = int(config.pop("workers")) if "workers" in config else None
    grpc_port = int(config.pop("grpc_port", -1))
    config.pop("url", None)
    config.pop("token", None)
    serve_uri(model_uri, port, host, workers, grpc_port, name, _parameters(config))


def target_help() -> str:
    return (
        "envserve serves MLflow models over the Open Inference Protocol (V2 REST and gRPC) and MLflow's own "
        "scoring protocol, each model in its own Python environment.\n\n"
        "run-local: mlflow deployments run-local -t envserve --name NAME -m MODEL_URI "
        "[-C port=5000] [-C host=127.0.0.1] [-C workers=N] [-C grpc_port=N]\n\n"
        "Target URI: envserve:/<model repository folder> -- each deployment is a folder there holding a "
        "model-settings.json that names its model URI; a server serving that repository is asked to load "
        "and unload it. Config: url (the server, default http://127.0.0.1:8080 or ENVSERVE_URL), token "
        "(its admin token, or ENVSERVE_ADMIN_TOKEN), implementation and any model parameter "
        "(environment, environment_python, version, ...) for the model-settings.json."
    )


def _check_flavor(flavor: Optional[str]) -> None:
    if flavor not in (None, "python_function"):
        raise MlflowException(
            "envserve serves MLflow models through their python_function flavor; got flavor %r" % flavor
        )


class EnvserveDeploymentClient(BaseDeploymentClient):
    """Deployments as model folders of a repository an envserve server serves."""

    def __init__(self, target_uri: str) -> None:
        super().__init__(target_uri)  # type: ignore[no-untyped-call]
        _, _, path = target_uri.partition(":")
        path = path[1:] if path.startswith("/") and path[1:2] == "/" else path
        if not path or path == "/":
            raise MlflowException(
                "target %r names no model repository: use envserve:/<folder> (run-local needs none)"
                % target_uri
            )
        self.repository = os.path.abspath(os.path.expanduser(path))

    # -- the server ---------------------------------------------------------------------------------------

    def _server(self, config: Optional[Dict[str, Any]] = None) -> str:
        config = config or {}
        return str(config.get("url") or os.environ.get("ENVSERVE_URL") or "http://127.0.0.1:8080").rstrip("/")

    def _call(
        self,
        method: str,
        url: str,
        body: Optional[bytes],
        config: Optional[Dict[str, Any]] = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Content-Type": content_type}
        token = (config or {}).get("token") or os.environ.get("ENVSERVE_ADMIN_TOKEN")
        if token:
            headers["Authorization"] = "Bearer %s" % token
        request = urllib.request.Request(url, body, headers, method=method)
        try:
            with open_url(request, timeout=600) as answer:
                data = answer.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            raise MlflowException("envserve at %s answered %d: %s" % (url, exc.code, text[:2000])) from None
        except OSError as exc:
            raise MlflowException("cannot reach envserve at %s: %s" % (url, exc)) from None
        return json.loads(data) if data else None

    def _load(self, name: str, config: Optional[Dict[str, Any]]) -> None:
        url = "%s/v2/repository/models/%s/load" % (self._server(config), urllib.parse.quote(name, safe=""))
        self._call("POST", url, b"", config)

    # -- deployments --------------------------------------------------------------------------------------

    def _folder(self, name: str) -> str:
        return os.path.join(self.repository, self._name(name))

    @staticmethod
    def _name(name: str) -> str:
        if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
            raise MlflowException(
                "%r is not a deployment name (a folder name: letters, digits, - _ .)" % name
            )
        return name

    def _write(self, name: str, model_uri: str, config: Optional[Dict[str, Any]]) -> None:
        from .cli.mlflow import absolute_uri, write_settings

        parameters = {k: v for k, v in (config or {}).items() if k not in ("url", "token")}
        write_settings(self.repository, self._name(name), absolute_uri(model_uri), _parameters(parameters))

    def create_deployment(
        self,
        name: str,
        model_uri: str,
        flavor: Optional[str] = None,
        config: Optional[Dict[str, Any]] = None,
        endpoint: Optional[str] = None,
    ) -> Dict[str, Any]:
        _check_flavor(flavor)
        if os.path.exists(os.path.join(self._folder(name), _SETTINGS)):
            raise MlflowException("deployment %r exists in %s; use update" % (name, self.repository))
        self._write(name, model_uri, config)
        try:
            self._load(name, config)
        except MlflowException:
            shutil.rmtree(self._folder(name), ignore_errors=True)
            raise
        return {"name": name, "flavor": "python_function"}

    def update_deployment(
        self,
        name: str,
        model_uri: Optional[str] = None,
        flavor: Optional[str] = None,
        config: Optional[Dict[str, Any]] = None,
        endpoint: Optional[str] = None,
    ) -> Dict[str, Any]:
        _check_flavor(flavor)
        current = self.get_deployment(name)
        self._write(name, model_uri or current["model_uri"], config)
        self._load(name, config)
        return {"name": name, "flavor": "python_function"}

    def delete_deployment(
        self, name: str, config: Optional[Dict[str, Any]] = None, endpoint: Optional[str] = None
    ) -> None:
        folder = self._folder(name)
        if not os.path.isdir(folder):
            return  # MLflow's contract: deleting what does not exist is not an error
        url = "%s/v2/repository/models/%s/unload" % (self._server(config), urllib.parse.quote(name, safe=""))
        try:
            self._call("POST", url, b"", config)
        except MlflowException as exc:
            if "answered 404" not in str(exc):
                raise
        shutil.rmtree(folder)

    def list_deployments(self, endpoint: Optional[str] = None) -> List[Dict[str, Any]]:
        if not os.path.isdir(self.repository):
            return []
        return [
            self.get_deployment(entry)
            for entry in sorted(os.listdir(self.repository))
            if os.path.isfile(os.path.join(self.repository, entry, _SETTINGS))
        ]

    def get_deployment(self, name: str, endpoint: Optional[str] = None) -> Dict[str, Any]:
        path = os.path.join(self._folder(name), _SETTINGS)
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            raise MlflowException("no deployment %r in %s" % (name, self.repository)) from None
        parameters = doc.get("parameters") or {}
        found = {"name": name, "model_uri": parameters.get("uri", ""), "flavor": "python_function"}
        try:
            ready = self._call(
                "GET", "%s/v2/models/%s/ready" % (self._server(), urllib.parse.quote(name, safe="")), None
            )
            found["state"] = "READY" if ready is None or ready.get("ready", True) else "UNAVAILABLE"
        except MlflowException:
            found["state"] = "UNAVAILABLE"
        return found

    def predict(
        self, deployment_name: Optional[str] = None, inputs: Any = None, endpoint: Optional[str] = None
    ) -> PredictionsResponse:
        if not deployment_name:
            raise MlflowException("predict needs --name: the deployment to ask")
        body = _scoring_body(inputs)
        url = "%s/invocations?model=%s" % (self._server(), urllib.parse.quote(deployment_name, safe=""))
        answer = self._call("POST", url, body)
        text = json.dumps(answer)
        response: PredictionsResponse = PredictionsResponse.from_json(text)  # type: ignore[no-untyped-call]
        return response


def _scoring_body(inputs: Any) -> bytes:
    """What MLflow's own scoring client sends for ``inputs`` (a DataFrame as dataframe_split)."""
    try:
        import pandas as pd

        if isinstance(inputs, pd.DataFrame):
            return json.dumps({"dataframe_split": json.loads(inputs.to_json(orient="split"))}).encode()
    except ImportError:
        pass
    if isinstance(inputs, dict) and any(
        k in inputs for k in ("dataframe_split", "dataframe_records", "instances", "inputs")
    ):
        return json.dumps(inputs).encode()
    return json.dumps({"inputs": _jsonable(inputs)}).encode()


def _jsonable(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _parameters(config: Dict[str, Any]) -> Dict[str, Any]:
    """``-C key=value`` pairs as model parameters; MLflow's ``env_manager=local`` is envserve's
    ``environment: server`` (the others build the model's own environment, envserve's default)."""
    parameters = dict(config)
    manager = parameters.pop("env_manager", None)
    if manager == "local":
        parameters.setdefault("environment", "server")
    elif manager not in (None, "virtualenv", "uv", "conda"):
        raise MlflowException("env_manager must be local, virtualenv, uv or conda; got %r" % manager)
    return parameters
