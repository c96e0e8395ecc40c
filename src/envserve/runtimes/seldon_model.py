"""Seldon Core v1 Python models, unchanged: a user's class with ``predict(self, X, features_names=None,
meta=None)`` served the way Seldon's Python wrapper serves it, without ``seldon-core`` in the environment.

What the wrapper does, and so what this runtime does:

- the class is constructed with the unit's parameters (``PREDICTIVE_UNIT_PARAMETERS``: a list of
  ``{"name", "value", "type"}`` with types INT, FLOAT, DOUBLE, STRING, BOOL, JSON), then ``load()`` is
  called when the class has one; both run in the model's folder (users' classes open ``model.joblib`` by a
  relative path);
- a Seldon call: ``predict_raw(message)`` when the class has it (its answer goes back as it is), else the
  features are taken from the message (``data.ndarray`` and ``data.tensor`` as numpy arrays, ``strData``
  as ``str``, ``jsonData`` as the object, ``binData`` as ``bytes``), ``predict(X, names, meta=meta)`` is
  called (``predict(X, names)`` when it takes no ``meta``), and the answer is built as the wrapper builds it:
  a dict answers ``jsonData``, ``bytes`` ``binData``, ``str`` ``strData``; an array or list answers the
  request's kind (``tensor`` or ``ndarray``; ``ndarray`` for non-numbers) with ``names`` from
  ``class_names`` (``t:0``, ``t:1``, ... when the class has none); ``meta`` carries ``puid``, the request's
  tags with ``tags()`` added, and ``requestPath``;
- ``metrics()`` after each call goes to the server's ``/metrics`` (COUNTER, GAUGE, TIMER), not into the
  answer; ``send_feedback(features, feature_names, reward, truth, routing=None)`` answers feedback;
  ``init_metadata()`` adds to the metadata;
- over V2, the single input (or the columns, with content type ``pd``) is ``X`` and the input's name or
  the columns are the names; the answer becomes outputs as any runtime's.

Worker import closure: standard library and numpy, Python 3.6+.
"""

import base64
import contextlib
import inspect
import json
import os
import re
import threading
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

from ..errors import InferenceError, InvalidRequest, ModelLoadError, SettingsError
from ..protocol.v2 import InferenceRequest
from ..settings.contracts import parse_unit_parameters
from ..settings.model import ModelSettings
from .base import Runtime, user_code_error

__all__ = ["SeldonModelRuntime", "is_seldon_class", "parse_parameters"]

_METRIC_TYPES = ("COUNTER", "GAUGE", "TIMER")
_METRIC_KEY = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_cwd_lock = threading.Lock()


def is_seldon_class(cls: Any) -> bool:
    """A Seldon model class rather than an envserve runtime: it is not a :class:`Runtime`, and its
    ``predict`` takes the features and their names (Seldon calls ``predict(X, names)``), or it has
    ``predict_raw``."""
    if not isinstance(cls, type) or issubclass(cls, Runtime):
        return False
    if callable(getattr(cls, "predict_raw", None)):
        return True
    predict = getattr(cls, "predict", None)
    if not callable(predict):
        return False
    try:
        params = list(inspect.signature(predict).parameters.values())[1:]  # after self
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


def parse_parameters(value: Any, where: str) -> Dict[str, Any]:
    """Constructor arguments from Seldon's typed parameter list (or a plain object)."""
    try:
        return parse_unit_parameters(value, where)
    except SettingsError as exc:
        raise ModelLoadError(exc.message) from None


@contextlib.contextmanager
def _in_folder(folder: Optional[str]) -> Iterator[None]:
    """Run in the model's folder (Seldon's wrapper runs in the model's directory, so users' classes open
    their files by relative paths). Serialised: the working directory belongs to the whole process."""
    if not folder or not os.path.isdir(folder):
        yield
        return
    with _cwd_lock:
        previous = os.getcwd()
        os.chdir(folder)
        try:
            yield
        finally:
            os.chdir(previous)


class SeldonModelRuntime(Runtime):
    """Serves a Seldon model class (``user_class``) with Seldon's wrapper's behaviour."""

    def __init__(self, settings: ModelSettings, user_class: Any) -> None:
        super().__init__(settings)
        self.user_class = user_class
        self.label = getattr(user_class, "__name__", str(user_class))
        self.model: Any = None
        self._raw_metrics: List[Dict[str, Any]] = []  # reported by predict_raw / a SeldonResponse

    # -- lifecycle ----------------------------------------------------------------------------------------

    def load(self) -> None:
        kwargs = parse_parameters(
            self.settings.extra.get("parameters"),
            "model %r: parameters.extra.parameters" % self.settings.name,
        )
        # what the class unpickles while it loads goes through envserve's restricted loader
        with _in_folder(self.settings.folder), self.unpickling_restricted():
            try:
                self.model = self.user_class(**kwargs)
            except Exception as exc:
                raise ModelLoadError(
                    "model %r: %s(%s) raised %s: %s"
                    % (self.settings.name, self.label, ", ".join(sorted(kwargs)), type(exc).__name__, exc)
                ) from exc
            load = getattr(self.model, "load", None)
            if callable(load):
                try:
                    load()
                except Exception as exc:
                    raise ModelLoadError(
                        "model %r: %s.load() raised %s: %s"
                        % (self.settings.name, self.label, type(exc).__name__, exc)
                    ) from exc

    def unload(self) -> None:
        self.model = None

    # -- calls into the user's class -------------------------------------------------------------------------

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``self.model.<method>(...)``; what it raises becomes an InferenceError naming the class and method
        (a Seldon ``SeldonMicroserviceException``-like error keeps its status code when it is a 4xx)."""
        try:
            return getattr(self.model, method)(*args, **kwargs)
        except Exception as exc:
            raise user_code_error(self.settings, self.label, method, exc) from exc

    def _predict(self, features: Any, names: List[str], meta: Dict[str, Any]) -> Any:
        if self._takes_meta():
            return self._call("predict", features, names, meta=meta)
        return self._call("predict", features, names)

    def _takes_meta(self) -> bool:
        try:
            params = inspect.signature(self.model.predict).parameters
        except (TypeError, ValueError):
            return False
        return "meta" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())

    def custom_metrics(self) -> List[Dict[str, Any]]:
        if self.model is None or not callable(getattr(self.model, "metrics", None)):
            return []
        metrics = self._call("metrics")
        return _checked_metrics(metrics, "model %r: %s.metrics()" % (self.settings.name, self.label))

    def _tags(self) -> Dict[str, Any]:
        if self.model is None or not callable(getattr(self.model, "tags", None)):
            return {}
        tags = self._call("tags")
        if not isinstance(tags, dict):
            raise InferenceError(
                "model %r: %s.tags() must return a dict, not %s"
                % (self.settings.name, self.label, type(tags).__name__)
            )
        return tags

    def _class_names(self, result: np.ndarray) -> List[str]:
        if result.ndim < 2:
            return []
        names = getattr(self.model, "class_names", None)
        if callable(names):
            return [str(n) for n in self._call("class_names")]
        if names is not None:
            return [str(n) for n in names]
        return ["t:%d" % i for i in range(result.shape[1])]

    # -- the Seldon protocol ------------------------------------------------------------------------------

    def score_seldon(
        self, message: Dict[str, Any], call: str, request_path: Dict[str, str]
    ) -> Dict[str, Any]:
        if not isinstance(message, dict):
            raise InvalidRequest("the Seldon request must be a JSON object")
        if call == "metadata":
            return self._seldon_metadata()
        if call == "feedback":
            return self._feedback(message, request_path)
        raw = getattr(self.model, "predict_raw", None)
        if callable(raw):
            answer = self._call("predict_raw", message)
            if isinstance(answer, dict):
                meta = answer.get("meta")
                if isinstance(meta, dict) and "metrics" in meta:  # to /metrics, as the wrapper does
                    meta = dict(meta)
                    self._raw_metrics = _checked_metrics(meta.pop("metrics"), "%s.predict_raw()" % self.label)
                    answer = dict(answer, meta=meta)
                return dict(answer)
            raise InferenceError(
                "model %r: %s.predict_raw must return a SeldonMessage dict, not %s"
                % (self.settings.name, self.label, type(answer).__name__)
            )
        features, kind = _features(message)
        data = message.get("data")
        names = data.get("names") if isinstance(data, dict) else None
        given = message.get("meta")
        meta_in: Dict[str, Any] = given if isinstance(given, dict) else {}
        result = self._predict(features, list(names) if isinstance(names, list) else [], dict(meta_in))
        return self._answer(message, kind, result, meta_in, request_path)

    def _answer(
        self,
        message: Dict[str, Any],
        kind: str,
        result: Any,
        meta_in: Dict[str, Any],
        request_path: Dict[str, str],
    ) -> Dict[str, Any]:
        runtime_tags: Dict[str, Any] = {}
        runtime_metrics: List[Any] = []
        if all(hasattr(result, a) for a in ("data", "tags", "metrics")) and not isinstance(
            result, np.ndarray
        ):
            runtime_tags = dict(result.tags or {})  # a SeldonResponse
            runtime_metrics = list(result.metrics or [])
            result = result.data
        if runtime_metrics:
            self._raw_metrics = _checked_metrics(runtime_metrics, "%s.predict() SeldonResponse" % self.label)
        answer: Dict[str, Any] = {}
        if isinstance(result, dict):
            answer["jsonData"] = result
        elif isinstance(result, (bytes, bytearray)):
            answer["binData"] = base64.b64encode(bytes(result)).decode("ascii")
        elif isinstance(result, str):
            answer["strData"] = result
        elif isinstance(result, (np.ndarray, list)):
            array = np.asarray(result) if isinstance(result, list) else result
            listed = result if isinstance(result, list) else result.tolist()
            numeric = np.issubdtype(array.dtype, np.number)
            if numeric and (kind == "tensor" or kind not in ("tensor", "ndarray")):
                body: Any = {"values": array.ravel().tolist(), "shape": list(array.shape)}
                data_kind = "tensor"
            else:
                body, data_kind = listed, "ndarray"
            answer["data"] = {data_kind: body, "names": self._class_names(array)}
        else:
            raise InferenceError(
                "model %r: %s.predict returned %s; Seldon models answer a numpy array, a list, a dict, str "
                "or bytes" % (self.settings.name, self.label, type(result).__name__)
            )
        tags = dict(meta_in.get("tags") or {}) if isinstance(meta_in.get("tags"), dict) else {}
        tags.update(self._tags())
        tags.update(runtime_tags)
        meta: Dict[str, Any] = {}
        if tags:
            meta["tags"] = tags
        metrics_in = meta_in.get("metrics")
        if isinstance(metrics_in, list) and metrics_in:
            meta["metrics"] = metrics_in
        puid = meta_in.get("puid")
        if puid:
            meta["puid"] = puid
        path = dict(request_path)
        if isinstance(meta_in.get("requestPath"), dict):
            path.update(meta_in["requestPath"])
        if path:
            meta["requestPath"] = path
        answer["meta"] = meta
        return answer

    def _feedback(self, message: Dict[str, Any], request_path: Dict[str, str]) -> Dict[str, Any]:
        given = message.get("request")
        request: Dict[str, Any] = given if isinstance(given, dict) else {}
        if callable(getattr(self.model, "send_feedback", None)):
            features: Any = np.array([])
            names: List[str] = []
            if request:
                features, _ = _features(request)
                data = request.get("data")
                names = list(data.get("names") or []) if isinstance(data, dict) else []
            truth = message.get("truth") if isinstance(message.get("truth"), dict) else {}
            truth_features = _features(truth)[0] if truth else None
            reward = message.get("reward", 0.0)
            routes = ((message.get("response") or {}).get("meta") or {}).get("routing") or {}
            unit = next(iter(request_path), None)
            routing = routes.get(unit) if isinstance(routes, dict) else None
            result = self._call("send_feedback", features, names, reward, truth_features, routing=routing)
            if result is not None:  # built as the wrapper's protobuf path builds it: empty names left out
                answer = self._answer(request, "ndarray", result, {}, request_path)
                if isinstance(answer.get("data"), dict) and not answer["data"].get("names"):
                    answer["data"].pop("names", None)
                return answer
        return {"data": {"names": [], "ndarray": []}, "meta": {"requestPath": dict(request_path)}}

    def _seldon_metadata(self) -> Dict[str, Any]:
        doc = self.metadata()
        return {k: doc.get(k, []) for k in ("name", "versions", "platform", "inputs", "outputs")}

    def metadata(self) -> Dict[str, Any]:
        doc = super().metadata()
        init = getattr(self.model, "init_metadata", None)
        if callable(init):
            extra = self._call("init_metadata")
            if isinstance(extra, dict):
                for key in ("versions", "platform", "inputs", "outputs", "custom"):
                    if key in extra:
                        doc[key] = extra[key]
        return doc

    def report_metrics(self, response: Any) -> None:
        metrics = self._raw_metrics + self.custom_metrics()
        self._raw_metrics = []
        if metrics:
            response.report.metrics = metrics

    # -- V2 -----------------------------------------------------------------------------------------------

    def predict(self, request: InferenceRequest) -> Any:
        features = self.decode_request(request)
        columns = getattr(features, "columns", None)
        names = [str(c) for c in columns] if columns is not None else []
        result = self._predict(features, names, {})
        if all(hasattr(result, a) for a in ("data", "tags", "metrics")) and not isinstance(
            result, np.ndarray
        ):
            result = result.data
        if isinstance(result, dict):
            return {"output": np.asarray([json.dumps(result)], dtype=object)}
        if isinstance(result, (bytes, bytearray)):
            return {self.default_output: np.asarray([bytes(result)], dtype=object)}
        if isinstance(result, str):
            return {self.default_output: np.asarray([result], dtype=object)}
        return result


def _features(message: Dict[str, Any]) -> Any:
    """(features, kind) of a SeldonMessage, as the wrapper takes them apart."""
    if "data" in message:
        data = message["data"]
        if not isinstance(data, dict):
            raise InvalidRequest("'data' must be an object with 'ndarray' or 'tensor'")
        if "tensor" in data:
            tensor = data["tensor"]
            if not isinstance(tensor, dict) or "values" not in tensor or "shape" not in tensor:
                raise InvalidRequest("data.tensor needs 'shape' and 'values'")
            values = np.array(tensor["values"])
            try:
                return values.reshape(tensor["shape"]), "tensor"
            except (ValueError, TypeError):
                raise InvalidRequest(
                    "data.tensor.shape %r does not fit its %d values" % (tensor["shape"], values.size)
                ) from None
        if "ndarray" in data:
            try:
                return np.array(data["ndarray"]), "ndarray"
            except ValueError:
                raise InvalidRequest("data.ndarray is ragged: every row must have the same length") from None
        return np.array([]), "ndarray"
    if "jsonData" in message:
        return message["jsonData"], "jsonData"
    if "strData" in message:
        return message["strData"], "strData"
    if "binData" in message:
        try:
            return base64.b64decode(str(message["binData"]), validate=True), "binData"
        except ValueError:
            raise InvalidRequest("binData is not valid base64") from None
    raise InvalidRequest("the Seldon request needs one of 'data', 'strData', 'jsonData', 'binData'")


def _checked_metrics(metrics: Any, where: str) -> List[Dict[str, Any]]:
    """Seldon's rule for custom metrics (a bad one is the model's fault: 500 naming it)."""
    if not isinstance(metrics, list):
        raise InferenceError("%s must return a list of metrics, not %s" % (where, type(metrics).__name__))
    for metric in metrics:
        ok = (
            isinstance(metric, dict)
            and metric.get("type", "COUNTER") in _METRIC_TYPES
            and isinstance(metric.get("key"), str)
            and _METRIC_KEY.match(metric["key"]) is not None
            and isinstance(metric.get("value"), (int, float))
            and not isinstance(metric.get("value"), bool)
        )
        if not ok:
            raise InferenceError(
                "%s returned a bad metric %r: each needs a 'key' (a Prometheus name), a numeric 'value' and "
                "a 'type' of COUNTER, GAUGE or TIMER" % (where, metric)
            )
    return metrics
