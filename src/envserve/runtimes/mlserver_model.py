"""MLServer custom runtimes, unchanged: a class deriving from ``mlserver.MLModel`` driven as MLServer
drives it -- constructed with MLServer's ``ModelSettings``, ``await load()``, ``await predict(request)``.

The ``mlserver`` the class imports is the environment's own when it has one (MLServer 1.1-1.7: the user's
class is then driven through the real classes of that version), else envserve's compatibility package
(:mod:`envserve.compat.mlserver`), which :mod:`envserve.runtimes` appends to ``sys.path`` before a custom
module is imported. Requests and responses cross as MLServer's types: numeric tensors flat, BYTES as
``str`` when they are UTF-8 text (as MLServer's REST edge hands them over) and ``bytes`` otherwise, with
the request's and each input's ``parameters``.

Worker import closure: standard library and numpy, Python 3.6+.
"""

import asyncio
import importlib
import inspect
import json
import os
import threading
from typing import Any, Dict, Generator, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import InferenceError, InvalidRequest, ModelLoadError
from ..protocol.datatypes import dtype_of
from ..protocol.v2 import InferenceRequest, InferenceResponse, ResponseOutput, shaped
from ..settings.model import ModelSettings
from .base import Runtime, _First, _json_default, user_code_error

__all__ = ["MLServerModelRuntime", "is_mlserver_class"]


def is_mlserver_class(cls: Any) -> bool:
    """A class deriving from ``mlserver.MLModel`` (the real one or envserve's stand-in)."""
    return isinstance(cls, type) and any(
        base.__name__ == "MLModel" and base.__module__.split(".")[0] == "mlserver" for base in cls.__mro__[1:]
    )


class MLServerModelRuntime(Runtime):
    #: ``predict`` runs on the runtime's own event loop, which cannot run inside the server's.
    inline_safe = False
    #: MLServer hands the HTTP headers to ``predict`` as ``request.parameters.headers``.
    wants_headers = True

    def __init__(self, settings: ModelSettings, user_class: Any) -> None:
        super().__init__(settings)
        self.user_class = user_class
        self.label = getattr(user_class, "__name__", str(user_class))
        self.model: Any = None
        self.real = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._context: Any = None  # the module holding MLServer's model context variables

    # -- lifecycle ----------------------------------------------------------------------------------------

    def _mlserver_settings(self) -> Any:
        settings_module = importlib.import_module("mlserver.settings")
        s = self.settings
        folder = s.folder or os.getcwd()
        parameters: Dict[str, Any] = {
            "uri": s.uri or folder,
            "version": s.version,
            "extra": dict(s.extra),
        }
        if s.content_type:
            parameters["content_type"] = s.content_type
        doc: Dict[str, Any] = {
            "name": s.name,
            "implementation": self.user_class,
            "parameters": settings_module.ModelParameters(**parameters),
            "platform": s.platform or "",
            "versions": [s.version] if s.version else [],
            "inputs": [t.to_dict() for t in s.inputs],
            "outputs": [t.to_dict() for t in s.outputs],
        }
        ms = settings_module.ModelSettings(**doc)
        source = os.path.join(folder, "model-settings.json")
        try:
            ms._source = source
        except (AttributeError, ValueError, TypeError):  # pydantic 1 models without the private attribute
            object.__setattr__(ms, "_source", source)
        return ms

    def load(self) -> None:
        self.real = not getattr(importlib.import_module("mlserver"), "__envserve_compat__", False)
        self._context = _record_logged_metrics()
        self._loop = asyncio.new_event_loop()
        try:
            settings = self._mlserver_settings()
        except Exception as exc:
            raise ModelLoadError(
                "model %r: MLServer's ModelSettings refused the settings: %s: %s"
                % (self.settings.name, type(exc).__name__, exc)
            ) from exc
        # what the runtime unpickles while it loads goes through envserve's restricted loader
        with self.unpickling_restricted():
            try:
                self.model = self.user_class(settings)
            except Exception as exc:
                raise ModelLoadError(
                    "model %r: %s(settings) raised %s: %s"
                    % (self.settings.name, self.label, type(exc).__name__, exc)
                ) from exc
            try:
                ready = self._until(self.model.load())
            except Exception as exc:
                raise ModelLoadError(
                    "model %r: %s.load() raised %s: %s"
                    % (self.settings.name, self.label, type(exc).__name__, exc)
                ) from exc
        if ready is False:
            raise ModelLoadError("model %r: %s.load() returned False" % (self.settings.name, self.label))
        self.model.ready = True

    def unload(self) -> None:
        if self.model is not None and self._loop is not None:
            try:
                self._until(self.model.unload())
            finally:
                self._loop.close()
                self._loop = None
                self.model = None

    # -- calls --------------------------------------------------------------------------------------------

    def _until(self, awaitable: Any) -> Any:
        """Run ``awaitable`` on the runtime's loop inside MLServer's model context (the labels of what
        ``mlserver.log`` records meanwhile)."""
        assert self._loop is not None, "the model is not loaded"
        module = self._context
        if module is None:
            return self._loop.run_until_complete(awaitable)
        name = module.model_name_var.set(self.settings.name)
        version = module.model_version_var.set(self.settings.version or "")
        try:
            return self._loop.run_until_complete(awaitable)
        finally:
            module.model_name_var.reset(name)
            module.model_version_var.reset(version)

    def _run(self, method: str, *args: Any) -> Any:
        try:
            return self._until(getattr(self.model, method)(*args))
        except Exception as exc:  # MLServer's errors carry their status
            raise user_code_error(self.settings, self.label, method, exc) from exc

    def predict(self, request: InferenceRequest) -> Any:
        types = importlib.import_module("mlserver.types")
        payload = types.InferenceRequest(**self._request_doc(request))
        response = self._run("predict", payload)
        if not hasattr(response, "outputs"):
            raise InferenceError(
                "model %r: %s.predict returned %s; MLServer runtimes return an InferenceResponse"
                % (self.settings.name, self.label, type(response).__name__)
            )
        return self._response(response)

    def custom_metrics(self) -> List[Dict[str, Any]]:
        """What the model logged with ``mlserver.log`` during the call, as histogram observations."""
        return _drain_logged(self.settings.name, self.settings.version or "")

    def streams(self) -> bool:
        """MLServer's models all stream: its MLModel answers a stream with predict's one response unless
        the class has a predict_stream of its own."""
        return self.model is not None and callable(getattr(self.model, "predict_stream", None))

    def infer_stream(self, requests: Iterator[InferenceRequest]) -> Generator[InferenceResponse, None, None]:
        """Drive the class's ``predict_stream`` as MLServer does: an async iterator of MLServer's requests in,
        its responses out, one chunk at a time on the runtime's own event loop."""
        types = importlib.import_module("mlserver.types")
        seen = _First(requests)

        async def payloads() -> Any:
            for request in seen:
                yield types.InferenceRequest(**self._request_doc(request))

        loop = self._loop
        assert loop is not None and self.model is not None, "the model is not loaded"
        chunks = self.model.predict_stream(payloads())
        try:
            while True:
                try:
                    response = self._until(chunks.__anext__())
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    raise user_code_error(self.settings, self.label, "predict_stream", exc) from exc
                if not hasattr(response, "outputs"):
                    raise InferenceError(
                        "model %r: %s.predict_stream yielded %s; MLServer runtimes yield InferenceResponses"
                        % (self.settings.name, self.label, type(response).__name__)
                    )
                answer = self._respond(self._response(response), seen.first or InferenceRequest([]))
                self.report_metrics(answer)
                yield answer
        finally:
            if not loop.is_closed():
                self._until(chunks.aclose())

    def metadata(self) -> Dict[str, Any]:
        doc = super().metadata()
        if self.model is not None:  # the model may set inputs/outputs in load()
            inputs, outputs = (
                _dump(getattr(self.model, "inputs", None)),
                _dump(getattr(self.model, "outputs", None)),
            )
            if inputs:
                doc["inputs"] = inputs
            if outputs:
                doc["outputs"] = outputs
        return doc

    # -- custom handlers (``@custom_handler`` REST routes) -----------------------------------------------

    def _handler_methods(self) -> Dict[str, Any]:
        found: Dict[str, Any] = {}
        if self.model is None:
            return found
        for name, member in inspect.getmembers(self.model):
            marker = getattr(member, "__custom_handler__", None)
            if marker is not None and callable(member):
                found[name] = (member, marker)
        return found

    def custom_handlers(self) -> List[Dict[str, str]]:
        routes = []
        for name, (_, marker) in sorted(self._handler_methods().items()):
            path = str(getattr(marker, "rest_path", ""))
            routes.append(
                {
                    "name": name,
                    "method": str(getattr(marker, "rest_method", "POST")).upper(),
                    "path": path if path.startswith("/") else "/" + path,
                }
            )
        return routes

    def call_handler(self, name: str, body: bytes, call: Dict[str, Any]) -> Tuple[int, Dict[str, str], bytes]:
        """Call the handler as MLServer's FastAPI route would: a parameter annotated ``Request`` gets the
        request, one body parameter (a dict, list or model, or any parameter whose default is FastAPI's
        ``Body``) the JSON body, scalar parameters the query string; the return value answers as JSON
        (a Response object as itself). An exception with a ``status_code`` answers with that status."""
        member = self._handler_methods().get(name)
        if member is None:
            raise InvalidRequest("model %r has no REST route %r" % (self.settings.name, name))
        method = member[0]
        try:
            kwargs = _handler_kwargs(method, body, call)
        except _Unprocessable as exc:
            return 422, {"content-type": "application/json"}, _json({"detail": str(exc)})
        assert self._loop is not None, "the model is not loaded"
        try:
            result = method(**kwargs)
            if inspect.isawaitable(result):
                result = self._until(result)
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            if isinstance(status, int) and 400 <= status < 600:
                detail = getattr(exc, "detail", None)
                doc = {"detail": detail} if detail is not None else {"error": str(exc)}
                return status, {"content-type": "application/json"}, _json(doc)
            raise user_code_error(self.settings, self.label, name, exc) from exc
        return _handler_answer(result)

    # -- conversions --------------------------------------------------------------------------------------

    def _request_doc(self, request: InferenceRequest) -> Dict[str, Any]:
        inputs = []
        for inp in request.inputs:
            inputs.append(
                {
                    "name": inp.name,
                    "shape": list(inp.shape),
                    "datatype": inp.datatype,
                    "data": self._data(inp.data, inp.datatype),
                    "parameters": dict(inp.parameters) if inp.parameters else None,
                }
            )
        doc: Dict[str, Any] = {"inputs": inputs}
        if request.id is not None:
            doc["id"] = request.id
        if request.parameters:
            doc["parameters"] = dict(request.parameters)
        if request.outputs:
            doc["outputs"] = [{"name": o.name, "parameters": o.parameters or None} for o in request.outputs]
        return doc

    def _data(self, array: np.ndarray, datatype: str) -> Any:
        if datatype == "BYTES":
            return [_text(v) for v in array.ravel().tolist()]
        if self.real:
            return array.ravel().tolist()
        return array  # the stand-in keeps the array beside the list (TensorData.of_array)

    def _response(self, response: Any) -> InferenceResponse:
        s = self.settings
        outputs: List[ResponseOutput] = []
        for out in response.outputs:
            datatype = str(getattr(out.datatype, "value", out.datatype))
            shape = [int(d) for d in out.shape]
            data = out.data
            array = getattr(data, "_array", None)
            if array is None:
                values = getattr(data, "root", None)
                if values is None:
                    values = getattr(data, "__root__", data)
                values = values.tolist() if hasattr(values, "tolist") else list(values)
                if datatype == "BYTES":
                    array = np.empty(len(values), dtype=object)
                    array[:] = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
                else:
                    array = np.asarray(values, dtype=dtype_of(datatype))
            try:  # strings whatever the shape counts, as MLServer answers them (shaped)
                array = shaped(array, shape) if datatype == "BYTES" else array.reshape(shape)
            except ValueError:
                raise InferenceError(
                    "model %r: %s.predict answered output %r with shape %s but %d values"
                    % (s.name, self.label, out.name, shape, array.size)
                ) from None
            params = _dump(out.parameters) or {}
            outputs.append(
                ResponseOutput(
                    out.name, shape, datatype, array, {k: v for k, v in params.items() if v is not None}
                )
            )
        params = _dump(getattr(response, "parameters", None)) or {}
        result = InferenceResponse(s.name, outputs, s.version, getattr(response, "id", None))
        result.parameters = {k: v for k, v in params.items() if v is not None}
        return result


class _Unprocessable(Exception):
    """A handler's arguments cannot be made from the request (FastAPI answers 422)."""


_SCALARS = (int, float, str, bool)


class HandlerRequest:
    """What a handler parameter annotated ``Request`` receives: the parts of Starlette's ``Request`` that
    handlers use (``method``, ``url.path``, ``headers``, ``query_params``, ``path_params``,
    ``await body()``, ``await json()``)."""

    class _URL:
        def __init__(self, path: str, query: str) -> None:
            self.path = path
            self.query = query

        def __str__(self) -> str:
            return self.path + ("?" + self.query if self.query else "")

    def __init__(self, body: bytes, call: Dict[str, Any]) -> None:
        self._body = body
        self.method = str(call.get("method", "POST"))
        query = call.get("query") or {}
        self.query_params: Dict[str, str] = dict(query)
        self.url = self._URL(str(call.get("path", "")), str(call.get("query_string", "")))
        self.headers: Dict[str, str] = {
            str(k).lower(): str(v) for k, v in (call.get("headers") or {}).items()
        }
        self.path_params: Dict[str, str] = {}

    async def body(self) -> bytes:
        return self._body

    async def json(self) -> Any:
        return json.loads(self._body.decode("utf-8"))


def _annotation_name(annotation: Any) -> str:
    if isinstance(annotation, str):  # postponed annotations
        return annotation.rsplit(".", 1)[-1]
    return str(getattr(annotation, "__name__", "") or getattr(annotation, "_name", "") or "")


def _handler_kwargs(method: Any, body: bytes, call: Dict[str, Any]) -> Dict[str, Any]:
    kwargs: Dict[str, Any] = {}
    body_params = []
    query = call.get("query") or {}
    for param in inspect.signature(method).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = param.annotation
        if _annotation_name(annotation) == "Request":
            kwargs[param.name] = HandlerRequest(body, call)
        elif type(param.default).__name__ == "Body" or (
            annotation is not param.empty
            and annotation not in _SCALARS
            and _annotation_name(annotation) not in ("int", "float", "str", "bool", "Optional")
        ):
            body_params.append(param)
        elif param.name in query:
            kwargs[param.name] = _scalar(param, query[param.name])
        elif param.default is param.empty:
            raise _Unprocessable("query parameter %r is required" % param.name)
    if body_params:
        if not body.strip():
            doc: Any = None
        else:
            try:
                doc = json.loads(body.decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise _Unprocessable("the body is not valid JSON: %s" % exc) from None
        embed = len(body_params) > 1 or getattr(body_params[0].default, "embed", False)
        for param in body_params:
            value = doc.get(param.name) if embed and isinstance(doc, dict) else (None if embed else doc)
            if value is None:
                default = param.default
                if default is param.empty or type(default).__name__ == "Body":
                    default = getattr(default, "default", param.empty)
                    if default is param.empty or type(default).__name__ in (
                        "ellipsis",
                        "PydanticUndefinedType",
                    ):
                        raise _Unprocessable("the body must hold %r" % param.name)
                kwargs[param.name] = default
            else:
                kwargs[param.name] = _model_of(param.annotation, value)
    return kwargs


def _scalar(param: Any, value: str) -> Any:
    kind = param.annotation if param.annotation in _SCALARS else None
    if kind is bool:
        return value.lower() in ("1", "true", "yes", "on")
    if kind is not None:
        try:
            return kind(value)
        except ValueError:
            raise _Unprocessable("query parameter %r must be %s" % (param.name, kind.__name__)) from None
    return value


def _model_of(annotation: Any, value: Any) -> Any:
    for method in ("model_validate", "parse_obj"):
        fn = getattr(annotation, method, None)
        if callable(fn):
            try:
                return fn(value)
            except Exception as exc:
                raise _Unprocessable(
                    "the body is not a valid %s: %s" % (_annotation_name(annotation), exc)
                ) from None
    return value


def _json(doc: Any) -> bytes:
    return json.dumps(doc, default=_json_value).encode("utf-8")


def _json_value(value: Any) -> Any:
    """MLServer's (pydantic or stand-in) models as their fields, then what base's default takes."""
    dumped = _dump(value)
    if dumped is not value:
        return dumped
    return _json_default(value)


def _handler_answer(result: Any) -> Tuple[int, Dict[str, str], bytes]:
    """A handler's return value as an HTTP answer: a Response object (Starlette's) as itself, else JSON."""
    if hasattr(result, "status_code") and hasattr(result, "body"):
        headers: Dict[str, str] = {}
        for key, value in getattr(result, "raw_headers", None) or []:
            name = key.decode("latin-1") if isinstance(key, bytes) else str(key)
            if name.lower() != "content-length":
                headers[name] = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        media = getattr(result, "media_type", None)
        if media and not any(k.lower() == "content-type" for k in headers):
            headers["content-type"] = str(media)
        body = result.body
        return (
            int(result.status_code),
            headers,
            body if isinstance(body, bytes) else str(body).encode("utf-8"),
        )
    return 200, {"content-type": "application/json"}, _json(result)


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def _dump(value: Any) -> Any:
    """A pydantic (1 or 2) or stand-in model, or a list of them, as plain data."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_dump(v) for v in value]
    for method in ("model_dump", "dict"):
        fn = getattr(value, method, None)
        if callable(fn):
            try:
                return fn(exclude_none=True)
            except TypeError:
                return fn()
    return value


# -- custom metrics (``mlserver.register`` / ``mlserver.log``) ----------------------------------------------

#: What models logged and the server has not been told yet: (model, version, metric, value).
_LOGGED: List[Tuple[str, str, str, float]] = []
_LOGGED_LOCK = threading.Lock()
#: Observations one model may leave between two answers; beyond it the oldest are dropped.
_LOGGED_MAX = 10000


class _LoggedChild:
    def __init__(self, name: str, labels: Dict[str, str]) -> None:
        self.name = name
        self.labels = labels

    def observe(self, amount: float, exemplar: Any = None) -> None:
        entry = (self.labels.get("model_name", ""), self.labels.get("model_version", ""), self.name, amount)
        with _LOGGED_LOCK:
            if len(_LOGGED) >= _LOGGED_MAX:
                del _LOGGED[: _LOGGED_MAX // 10]
            _LOGGED.append(entry)


class _LoggedMetric:
    """What ``mlserver.register`` returns once envserve drives the package: a histogram whose
    observations go to the server with the answer."""

    def __init__(self, name: str, description: str) -> None:
        self.name = name
        self.description = description
        self.labelnames = ("model_name", "model_version")

    def labels(self, *values: Any, **named: Any) -> _LoggedChild:
        labels = dict(zip(self.labelnames, (str(v) for v in values)))
        labels.update((k, str(v)) for k, v in named.items())
        return _LoggedChild(self.name, labels)


def _record_logged_metrics() -> Any:
    """Make the environment's ``mlserver`` (real, 1.3 on, or the stand-in) record what ``log`` is given for
    the server; return the module holding its model context variables (None for an MLServer without
    custom metrics). ``log`` finds ``register`` in its own module's globals, so replacing it there reaches
    every way a runtime imported ``log``."""
    try:
        module = importlib.import_module("mlserver.metrics.context")
    except ImportError:
        return None
    if not hasattr(module, "model_name_var") or not callable(getattr(module, "register", None)):
        return None
    if not getattr(module, "__envserve_recording__", False):
        known: Dict[str, _LoggedMetric] = {}

        def register(name: str, description: str) -> _LoggedMetric:
            found = known.get(name)
            if found is None:
                found = known[name] = _LoggedMetric(str(name), str(description))
            return found

        setattr(module, "register", register)  # noqa: B010 (a module of the model's environment)
        setattr(module, "__envserve_recording__", True)  # noqa: B010
        for holder in ("mlserver.metrics", "mlserver"):
            package = importlib.import_module(holder)
            if callable(getattr(package, "register", None)):
                setattr(package, "register", register)  # noqa: B010
    return module


def _drain_logged(model: str, version: str) -> List[Dict[str, Any]]:
    if not _LOGGED:
        return []
    with _LOGGED_LOCK:
        mine = [e for e in _LOGGED if e[0] == model and e[1] == version]
        if not mine:
            return []
        _LOGGED[:] = [e for e in _LOGGED if not (e[0] == model and e[1] == version)]
    items = []
    for _, _, name, value in mine:
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        items.append({"type": "HISTOGRAM", "key": name, "value": number})
    return items
