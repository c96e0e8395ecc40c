"""HuggingFace transformers pipelines (``huggingface``, and MLServer's
``mlserver_huggingface.HuggingFaceRuntime``), answering as MLServer 1.7's runtime answers.

Settings, in ``parameters.extra`` (and, as MLServer reads them, ``MLSERVER_MODEL_HUGGINGFACE_<NAME>``
variables and Seldon Core v1's ``PREDICTIVE_UNIT_PARAMETERS``; the model's settings win):

- ``task`` (required; ``translation`` takes ``task_suffix``, e.g. ``_en_to_fr``), ``pretrained_model``
  (default: the model's folder or ``parameters.uri``: a local folder saved with ``save_pretrained``),
  ``pretrained_tokenizer`` (default: ``pretrained_model``), ``model_kwargs``, ``framework`` (``pt``),
  ``device`` (default CPU), ``inter_op_threads`` / ``intra_op_threads`` (torch's thread counts).
  ``optimum_model`` (ONNX Runtime through optimum) is refused with the reason: not built in.
- The pipeline is built with ``batch_size`` = the model's ``max_batch_size`` (1 when unset).

A request's inputs become the pipeline's arguments by name, each decoded by its content type (the
request's content type is the default, then ``str``): ``str`` (a list of strings), ``hg_json`` (one JSON
document), ``hg_jsonlist`` (a JSON document per element), ``raw`` (the first element as it is),
``base64``, ``np``. The input ``args`` is the positional arguments, ``array_inputs`` one positional list
before them; the rest are keyword arguments. The answer is MLServer's: one output ``output``, BYTES,
content type ``hg_jsonlist``, one JSON document per item of what the pipeline returned (shape
``[n, 1]``; arrays as lists).

Worker import closure: standard library and numpy; transformers (and torch) when a model loads.
Python 3.6+.
"""

import json
import os
from typing import Any, Dict, Optional

import numpy as np

from ..errors import InvalidRequest, ModelLoadError
from ..protocol.v2 import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput
from .base import Runtime, user_code_error

__all__ = ["HuggingFaceRuntime", "huggingface_settings"]

MLSERVER_NAME = "mlserver_huggingface.HuggingFaceRuntime"
_ENV_PREFIX = "MLSERVER_MODEL_HUGGINGFACE_"
_FIELDS = {
    "task": str,
    "task_suffix": str,
    "pretrained_model": str,
    "pretrained_tokenizer": str,
    "model_kwargs": dict,
    "framework": str,
    "device": None,  # an int (a GPU ordinal) or a string ("cpu", "cuda:1")
    "optimum_model": bool,
    "inter_op_threads": int,
    "intra_op_threads": int,
}
_SELDON_TYPES = {"INT": int, "FLOAT": float, "DOUBLE": float, "STRING": str}
_TRUE = ("1", "true", "yes", "on", "y", "t")


def huggingface_settings(extra: Dict[str, Any], environ: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """The runtime's settings: Seldon's PREDICTIVE_UNIT_PARAMETERS, then MLSERVER_MODEL_HUGGINGFACE_*, then
    the model's ``parameters.extra`` (each wins over the one before, as in MLServer)."""
    environ = dict(os.environ) if environ is None else environ
    found: Dict[str, Any] = {}
    raw = environ.get("PREDICTIVE_UNIT_PARAMETERS")
    if raw:
        try:
            items = json.loads(raw)
        except ValueError as exc:
            raise ModelLoadError("PREDICTIVE_UNIT_PARAMETERS is not JSON: %s" % exc) from None
        for item in items if isinstance(items, list) else []:
            name, value, kind = item.get("name"), item.get("value"), item.get("type")
            if kind == "BOOL":
                found[name] = str(value).strip().lower() in _TRUE
            elif kind in _SELDON_TYPES:
                try:
                    found[name] = _SELDON_TYPES[kind](value)
                except (TypeError, ValueError):
                    raise ModelLoadError("parameter %r: %r is not a %s" % (name, value, kind)) from None
    for name in _FIELDS:
        value = environ.get(_ENV_PREFIX + name.upper())
        if value is not None:
            found[name] = _coerce(name, value)
    found.update({k: v for k, v in extra.items() if k in _FIELDS})
    return found


def _coerce(name: str, value: str) -> Any:
    kind = _FIELDS[name]
    if kind is bool:
        return value.strip().lower() in _TRUE
    if kind is int:
        try:
            return int(value)
        except ValueError:
            raise ModelLoadError(
                "%s%s must be a number, got %r" % (_ENV_PREFIX, name.upper(), value)
            ) from None
    if kind is dict:
        try:
            return json.loads(value)
        except ValueError:
            raise ModelLoadError("%s%s must be a JSON object" % (_ENV_PREFIX, name.upper())) from None
    if name == "device":
        return int(value) if value.strip().lstrip("-").isdigit() else value
    return value


class HuggingFaceRuntime(Runtime):
    #: the pipeline is torch's: it runs on its own threads, not the server's event loop
    inline_safe = False
    answers_requested_outputs = False

    def load(self) -> None:
        s = self.settings
        hf = huggingface_settings(dict(s.extra))
        task = str(hf.get("task") or "")
        if not task:
            raise ModelLoadError(
                "model %r: a HuggingFace model needs parameters.extra.task (e.g. text-classification)"
                % s.name,
                model=s.name,
            )
        if hf.get("optimum_model"):
            raise ModelLoadError(
                "model %r: optimum_model (ONNX Runtime through optimum) is not built into envserve; set "
                "optimum_model to false to serve the transformers pipeline" % s.name,
                model=s.name,
            )
        task_name = task + str(hf.get("task_suffix") or "") if task == "translation" else task
        try:
            import transformers
        except ImportError as exc:
            raise ModelLoadError(
                "model %r needs transformers (and torch) in its environment: %s" % (s.name, exc), model=s.name
            ) from exc
        supported = getattr(getattr(transformers, "pipelines", None), "SUPPORTED_TASKS", None)
        if supported is not None and task not in supported:
            raise ModelLoadError(
                "model %r: %r is not a transformers task; this transformers (%s) has %s"
                % (s.name, task, transformers.__version__, ", ".join(sorted(supported))),
                model=s.name,
            )
        model = hf.get("pretrained_model") or s.model_path or s.folder
        tokenizer = hf.get("pretrained_tokenizer") or hf.get("pretrained_model")
        framework = hf.get("framework")
        if framework == "tf":
            raise ModelLoadError(
                "model %r: framework 'tf' is not supported (TensorFlow pipelines): use 'pt'" % s.name,
                model=s.name,
            )
        try:
            import torch

            if hf.get("inter_op_threads") is not None:
                torch.set_num_interop_threads(int(hf["inter_op_threads"]))
            if hf.get("intra_op_threads") is not None:
                torch.set_num_threads(int(hf["intra_op_threads"]))
        except ImportError:
            pass
        except RuntimeError:  # inter-op threads can only be set once per process
            pass
        kwargs: Dict[str, Any] = {
            "model": model,
            "tokenizer": tokenizer,
            "batch_size": s.max_batch_size or 1,
        }
        for name in ("model_kwargs", "device", "framework"):
            if hf.get(name) is not None:
                kwargs[name] = hf[name]
        try:
            self._pipeline = transformers.pipeline(task_name, **kwargs)
        except Exception as exc:
            raise ModelLoadError(
                "model %r: transformers could not build the %r pipeline from %s: %s: %s"
                % (s.name, task_name, model, type(exc).__name__, exc),
                model=s.name,
            ) from exc
        self._task = task_name
        self._pad_for_batches(s.max_batch_size)

    def _pad_for_batches(self, max_batch_size: int) -> None:
        """Batches of texts need a pad token (MLServer's rule: the EOS token, else one at a time)."""
        tokenizer = getattr(self._pipeline, "tokenizer", None)
        if max_batch_size <= 1 or tokenizer is None or tokenizer.pad_token_id is not None:
            return
        eos = getattr(getattr(self._pipeline.model, "config", None), "eos_token_id", None)
        if eos is not None:
            tokenizer.pad_token_id = eos
        else:
            self._pipeline._batch_size = 1

    def platform(self) -> str:
        return "huggingface"

    def metadata(self) -> Dict[str, Any]:
        doc = super().metadata()
        doc.setdefault("parameters", {})["task"] = getattr(self, "_task", "")
        return doc

    def infer(self, request: InferenceRequest) -> InferenceResponse:
        if request.passthrough is not None:
            return super().infer(request)
        kwargs = {inp.name: _decode(inp, request) for inp in request.inputs}
        args = kwargs.pop("args", [])
        if not isinstance(args, list):
            args = [args]
        array_inputs = kwargs.pop("array_inputs", [])
        if len(array_inputs):
            args = [list(array_inputs)] + args
        try:
            prediction = self._pipeline(*args, **kwargs)
        except Exception as exc:
            if not _refusal(exc):
                raise user_code_error(self.settings, "transformers pipeline", "__call__", exc) from exc
            raise InvalidRequest(
                "model %r (transformers %s pipeline) refused the input: %s: %s"
                % (self.settings.name, self._task, type(exc).__name__, exc)
            ) from None
        items = prediction if isinstance(prediction, list) else [prediction]
        data = np.empty(len(items), dtype=object)
        data[:] = [json.dumps(item, default=_json_default).encode("utf-8") for item in items]
        output = ResponseOutput("output", [len(items), 1], "BYTES", data.reshape(len(items), 1))
        output.parameters = {"content_type": "hg_jsonlist"}
        s = self.settings
        response = InferenceResponse(s.name, [output], s.version)
        if request.id is not None:
            response.id = request.id
        return response


def _refusal(exc: BaseException) -> bool:
    """Whether the pipeline refused its arguments (the client's mistake, 400) rather than failed: its own
    PipelineException (no [MASK] in a fill-mask input, ...) and the argument errors it raises."""
    return type(exc).__name__ == "PipelineException" or isinstance(exc, (ValueError, TypeError, KeyError))


def _decode(inp: RequestInput, request: InferenceRequest) -> Any:
    """One input, by its content type (the request's, then ``str``), as MLServer's HuggingFace codec."""
    codec = inp.parameters.get("content_type") or request.parameters.get("content_type") or "str"
    flat = inp.data.ravel().tolist()
    if inp.datatype == "BYTES":
        texts = [_text(inp, item) for item in flat]
        if codec in ("str", "hf"):
            return texts
        if codec == "hg_json":
            return _json(inp, texts[0] if texts else "")
        if codec == "hg_jsonlist":
            return [_json(inp, text) for text in texts]
        if codec == "raw":
            return texts[0] if texts else None
        if codec == "base64":
            import base64

            return [base64.b64decode(text) for text in texts]
        if codec == "pillow_image":
            raise InvalidRequest("input %r: image inputs (pillow_image) are not supported yet" % inp.name)
        return texts
    if codec == "raw":
        return flat[0] if flat else None
    return inp.data  # np, nplist: the array


def _text(inp: RequestInput, item: Any) -> str:
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest("input %r is not UTF-8 text" % inp.name) from None
    return str(item)


def _json(inp: RequestInput, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidRequest("input %r is not the JSON its content type says: %s" % (inp.name, exc)) from None


def _json_default(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars, torch tensors
    if callable(tolist):
        return tolist()
    raise TypeError("%s is not JSON serialisable" % type(value).__name__)
