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
import os
from typing import Any, Dict, List, Optional

import numpy as np

from ..errors import InferenceError, ModelLoadError
from ..protocol.datatypes import dtype_of
from ..protocol.v2 import InferenceRequest, InferenceResponse, ResponseOutput
from ..settings.model import ModelSettings
from .base import Runtime, user_code_error

__all__ = ["MLServerModelRuntime", "is_mlserver_class"]


def is_mlserver_class(cls: Any) -> bool:
    """A class deriving from ``mlserver.MLModel`` (the real one or envserve's stand-in)."""
    return isinstance(cls, type) and any(
        base.__name__ == "MLModel" and base.__module__.split(".")[0] == "mlserver" for base in cls.__mro__[1:]
    )


class MLServerModelRuntime(Runtime):
    #: ``predict`` runs on the runtime's own event loop, which cannot run inside the server's.
    inline_safe = False

    def __init__(self, settings: ModelSettings, user_class: Any) -> None:
        super().__init__(settings)
        self.user_class = user_class
        self.label = getattr(user_class, "__name__", str(user_class))
        self.model: Any = None
        self.real = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None

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
        self._loop = asyncio.new_event_loop()
        try:
            settings = self._mlserver_settings()
        except Exception as exc:
            raise ModelLoadError(
                "model %r: MLServer's ModelSettings refused the settings: %s: %s"
                % (self.settings.name, type(exc).__name__, exc)
            ) from exc
        try:
            self.model = self.user_class(settings)
        except Exception as exc:
            raise ModelLoadError(
                "model %r: %s(settings) raised %s: %s"
                % (self.settings.name, self.label, type(exc).__name__, exc)
            ) from exc
        try:
            ready = self._loop.run_until_complete(self.model.load())
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
                self._loop.run_until_complete(self.model.unload())
            finally:
                self._loop.close()
                self._loop = None
                self.model = None

    # -- calls --------------------------------------------------------------------------------------------

    def _run(self, method: str, *args: Any) -> Any:
        assert self._loop is not None, "the model is not loaded"
        try:
            return self._loop.run_until_complete(getattr(self.model, method)(*args))
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
            doc["parameters"] = {k: v for k, v in request.parameters.items() if not k.startswith("envserve_")}
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
            try:
                array = array.reshape(shape)
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
