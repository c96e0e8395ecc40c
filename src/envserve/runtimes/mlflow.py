"""MLflow models (MLServer's ``mlserver_mlflow.MLflowRuntime``): a folder with an ``MLmodel`` file.

Loading: the ``sklearn`` flavor is loaded natively (no mlflow import) when scikit-learn is importable:
skops files (MLflow 3's default) through skops, which builds only trusted types; pickle, cloudpickle and
joblib files after the pickle scan. Otherwise the ``python_function`` flavor through ``mlflow.pyfunc``.

The MLflow signature becomes the V2 metadata. Requests are decoded by it: a column-based signature turns
the inputs into a DataFrame whose columns have the declared types (one input per column, or a single
``[N, k]`` input whose k columns are taken in signature order); a tensor-based signature turns them into
arrays of the declared dtype. Without a signature the request is decoded by content type as usual.

Worker import closure: standard library, numpy, PyYAML (MLflow's dependency), pandas and mlflow or
scikit-learn when a model is loaded; Python 3.6+.
"""

import json
import os
from typing import Any, Dict, List, Optional

from ..codecs import encode_outputs
from ..codecs.mlflow import Signature, enforce_schema, from_v2, parse_invocation, predictions
from ..errors import InvalidRequest, ModelLoadError
from ..protocol.v2 import InferenceRequest, InferenceResponse, MetadataTensor
from .base import Runtime

__all__ = ["MLflowRuntime", "read_mlmodel"]

# MLflow column types -> (V2 datatype, pandas dtype)
_COLUMN_TYPES = {
    "double": ("FP64", "float64"),
    "float": ("FP32", "float32"),
    "long": ("INT64", "int64"),
    "integer": ("INT32", "int32"),
    "boolean": ("BOOL", "bool"),
    "string": ("BYTES", "object"),
    "binary": ("BYTES", "object"),
    "datetime": ("BYTES", "datetime64[ns]"),
}
_TENSOR_TYPES = {
    "float64": "FP64",
    "float32": "FP32",
    "float16": "FP16",
    "int64": "INT64",
    "int32": "INT32",
    "int16": "INT16",
    "int8": "INT8",
    "uint64": "UINT64",
    "uint32": "UINT32",
    "uint16": "UINT16",
    "uint8": "UINT8",
    "bool": "BOOL",
    "object": "BYTES",
    "str": "BYTES",
}


def read_mlmodel(folder: str) -> Dict[str, Any]:
    path = os.path.join(folder, "MLmodel")
    try:
        import yaml
    except ImportError:
        raise ModelLoadError("reading %s needs PyYAML in the model's environment" % path) from None
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as exc:
        raise ModelLoadError("cannot read %s: %s" % (path, exc.strerror)) from None
    except yaml.YAMLError as exc:
        raise ModelLoadError("%s is not valid YAML: %s" % (path, exc)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("flavors"), dict):
        raise ModelLoadError("%s has no 'flavors' section; is this an MLflow model?" % path)
    return doc


def _signature_part(doc: Dict[str, Any], key: str) -> Optional[List[Dict[str, Any]]]:
    raw = (doc.get("signature") or {}).get(key)
    if not raw:
        return None
    parsed = json.loads(raw) if isinstance(raw, str) else raw
    return parsed if isinstance(parsed, list) else None


def _tensors(spec: Optional[List[Dict[str, Any]]], default_name: str) -> List[MetadataTensor]:
    result = []
    for i, item in enumerate(spec or []):
        if item.get("type") == "tensor":
            tensor = item.get("tensor-spec", {})
            datatype = _TENSOR_TYPES.get(str(tensor.get("dtype")), "BYTES")
            name = item.get("name") or (default_name if len(spec or []) == 1 else "%s-%d" % (default_name, i))
            result.append(MetadataTensor(name, datatype, list(tensor.get("shape", [-1]))))
        else:
            datatype = _COLUMN_TYPES.get(str(item.get("type")), ("BYTES", "object"))[0]
            params = {"content_type": "str"} if item.get("type") == "string" else {}
            result.append(MetadataTensor(item.get("name") or "column-%d" % i, datatype, [-1], params))
    return result


class MLflowRuntime(Runtime):
    default_output = "predict"

    def load(self) -> None:
        folder = self.settings.model_path
        if folder is None or not os.path.isfile(os.path.join(folder, "MLmodel")):
            raise ModelLoadError("model %r: no MLmodel file in %s" % (self.settings.name, folder))
        self._folder = folder
        self._mlmodel = read_mlmodel(folder)
        self._inputs = _signature_part(self._mlmodel, "inputs")
        self._outputs = _signature_part(self._mlmodel, "outputs")
        self._columns = bool(self._inputs) and all(i.get("type") != "tensor" for i in self._inputs or [])
        self._signature = Signature.from_mlmodel(self._mlmodel)
        self._pyfunc = False
        self._model = self._load_native() or self._load_pyfunc()

    def _load_native(self) -> Any:
        flavor = self._mlmodel["flavors"].get("sklearn")
        if flavor and flavor.get("serialization_format") == "skops":
            return self._load_skops(flavor)
        if not flavor or flavor.get("serialization_format", "cloudpickle") not in (
            "pickle",
            "cloudpickle",
            "joblib",
        ):
            return None
        try:
            import sklearn  # noqa: F401
        except ImportError:
            return None
        path = os.path.join(self._folder, flavor.get("pickled_model", "model.pkl"))
        # pickle, cloudpickle or joblib alike, through the restricted loader: the MLmodel file comes from
        # the same place as the pickle, so what it declares (cloudpickle) widens nothing by itself; a
        # cloudpickle flavor may carry code by value (a FunctionTransformer's lambda), which loads only
        # when the operator trusts model code
        if flavor.get("serialization_format", "cloudpickle") == "cloudpickle" and self._trusts_code():
            from .pickles import Policy, load_pickle

            try:
                return load_pickle(path, Policy.for_model(_frameworks(flavor), code=True))
            except ModelLoadError as exc:
                raise type(exc)(
                    "model %r: %s" % (self.settings.name, exc), model=self.settings.name
                ) from None
        return self.load_pickle(path, _frameworks(flavor))

    def _trusts_code(self) -> bool:
        return self.settings.parameters.get("model_code") is True

    def _load_skops(self, flavor: Dict[str, Any]) -> Any:
        """MLflow 3's default scikit-learn format: skops builds only the types it trusts (scikit-learn's,
        numpy's, and those the MLmodel lists in ``skops_trusted_types``), as mlflow.sklearn loads it;
        no pickle is run, and mlflow is not needed."""
        try:
            import skops.io
        except ImportError:
            return None  # mlflow's loader, or the error that says what to install
        path = os.path.join(self._folder, flavor.get("pickled_model", "model.skops"))
        # the MLmodel's skops_trusted_types come from the same place as the file: a type skops does not
        # trust by itself is trusted only when the operator's pickle policy allows it too
        listed = set(flavor.get("skops_trusted_types") or ())
        policy = self.pickle_policy(_frameworks(flavor))
        try:
            untrusted = skops.io.get_untrusted_types(file=path)
            refused = sorted(t for t in untrusted if t not in listed or not policy.allows_name(t))
            if refused:
                raise ModelLoadError(
                    "model %r: %s holds types skops does not trust: %s; they load when the MLmodel lists "
                    "them in skops_trusted_types and the operator allows them in the server's pickle_allow"
                    % (self.settings.name, path, ", ".join(refused)),
                    model=self.settings.name,
                )
            return skops.io.load(path, trusted=sorted(untrusted) or None)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                "model %r: loading %s with skops failed: %s: %s"
                % (self.settings.name, path, type(exc).__name__, exc),
                model=self.settings.name,
            ) from exc

    def _load_pyfunc(self) -> Any:
        if "python_function" not in self._mlmodel["flavors"]:
            raise ModelLoadError(
                "model %r has no python_function flavor (flavors: %s)"
                % (self.settings.name, ", ".join(self._mlmodel["flavors"]))
            )
        try:
            import mlflow.pyfunc
        except ImportError:
            raise ModelLoadError(
                "model %r needs mlflow in its environment to load its python_function flavor; let envserve "
                "build the model's own environment (remove parameters.environment: server) or install mlflow"
                % self.settings.name
            ) from None
        # whatever the flavor's loader unpickles goes through the restricted loader, allowed the flavors'
        # packages; a PythonModel is code pickled by value, loaded only when the operator trusts model code
        frameworks = ["mlflow" if f == "python_function" else f for f in self._mlmodel["flavors"]]
        for flavor in self._mlmodel["flavors"].values():
            frameworks += [f for f in _frameworks(flavor or {}) if f not in frameworks]
        pyfunc = self._mlmodel["flavors"]["python_function"] or {}
        code = bool(pyfunc.get("python_model") or pyfunc.get("cloudpickle_version") or pyfunc.get("code"))
        if code and self.settings.parameters.get("model_code") is False:
            raise ModelLoadError(
                "model %r is code (an MLflow python_function model with its own Python: %s), and this server "
                "does not run model code (trust_model_code=false); the operator allows it server-wide"
                % (self.settings.name, pyfunc.get("python_model") or pyfunc.get("loader_module")),
                model=self.settings.name,
            )
        policy = self.pickle_policy(frameworks)
        if code:
            from .pickles import Policy

            policy = Policy.for_model(frameworks, code=True)
        from .pickles import restricted_loaders

        try:
            with restricted_loaders(policy):
                model = mlflow.pyfunc.load_model(self._folder)
            self._pyfunc = True
            return model
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                "model %r: mlflow.pyfunc.load_model failed: %s: %s"
                % (self.settings.name, type(exc).__name__, exc)
            ) from exc

    def platform(self) -> str:
        return "mlflow"

    def metadata_inputs(self) -> List[MetadataTensor]:
        return list(self.settings.inputs) or _tensors(self._inputs, "input")

    def metadata_outputs(self) -> List[MetadataTensor]:
        return list(self.settings.outputs) or _tensors(self._outputs, self.default_output)

    # -- decoding by signature ---------------------------------------------------------------------------

    def decode_mlflow(self, request: InferenceRequest) -> Any:
        if self._signature is None:
            return self.decode_request(request)
        return from_v2(
            request, self._signature, lambda inp: self.decode_input(inp, request), self.settings.name
        )

    def score_mlflow(self, body: bytes, mime: str) -> bytes:
        """As ``mlflow models serve`` answers: parsed and enforced by the signature, MLflow's JSON back."""
        data, params = parse_invocation(body, mime, self._signature)
        if self._pyfunc:  # mlflow's own pyfunc enforces the schema itself (and knows params)
            try:
                raw = self._model.predict(data, params=params) if params else self._model.predict(data)
            except Exception as exc:
                raise _input_error(exc) from None
        else:
            data = enforce_schema(data, self._signature)
            try:
                raw = self._model.predict(data)
            except Exception as exc:
                raise _input_error(exc) from None
        return predictions(raw)

    def score_seldon(
        self, message: Dict[str, Any], call: str, request_path: Dict[str, str]
    ) -> Dict[str, Any]:
        """With Seldon's MLFLOW_SERVER parameter ``xtype`` (``PREDICTIVE_UNIT_PARAMETERS``), a ``data``
        message reaches the model as that server hands it over: the array itself (``ndarray``, its default)
        or a DataFrame whose columns are ``data.names`` (``DataFrame``). Without ``xtype``, the message is
        decoded by the model's signature like any other request."""
        xtype = self.settings.extra.get("xtype")
        if call != "predict" or xtype not in ("ndarray", "DataFrame") or "data" not in message:
            return super().score_seldon(message, call, request_path)
        from ..protocol import seldon

        arr, kind, names = seldon.data_array(message)
        data: Any = arr
        if xtype == "DataFrame":
            import pandas as pd

            data = pd.DataFrame(data=arr, columns=names or None)
        s = self.settings
        response = InferenceResponse(
            s.name, encode_outputs(self._predict(data), self.default_output), s.version
        )
        return seldon.to_seldon_response(
            response, kind, seldon.response_meta(message.get("meta"), request_path)
        )

    def predict(self, request: InferenceRequest) -> Any:
        data = self.decode_mlflow(request)
        if not self._pyfunc:  # mlflow's pyfunc enforces the schema itself
            data = enforce_schema(data, self._signature)
        return self._predict(data, _inference_params(request.parameters))

    def _predict(self, data: Any, params: Optional[Dict[str, Any]] = None) -> Any:
        """``params``: the request's own parameters (MLflow's inference params, as MLServer passes them),
        for a pyfunc model; a model loaded natively has none to take."""
        try:
            if params and self._pyfunc:
                result = self._model.predict(data, params=params)
            else:
                result = self._model.predict(data)
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidRequest("model %r refused the input: %s" % (self.settings.name, exc)) from None
        except Exception as exc:
            if type(exc).__name__ == "MlflowException":  # mlflow's schema enforcement
                raise InvalidRequest(
                    "model %r: %s" % (self.settings.name, getattr(exc, "message", exc))
                ) from None
            raise
        if hasattr(result, "to_numpy") and getattr(result, "ndim", 2) == 1:  # a pandas Series
            result = result.to_numpy()
        return result


#: A V2 request's parameters that are the protocol's, not the model's inference params.
_PROTOCOL_PARAMETERS = ("content_type", "headers")


def _inference_params(parameters: Dict[str, Any]) -> Dict[str, Any]:
    """What MLServer's MLflow runtime passes as ``params``: the request's parameters but the protocol's
    (and envserve's own ``envserve_*``, which never reach a model)."""
    return {
        k: v for k, v in parameters.items() if k not in _PROTOCOL_PARAMETERS and not k.startswith("envserve_")
    }


def _frameworks(flavor: Dict[str, Any]) -> List[str]:
    """The packages a flavor's pickles may import: scikit-learn's, and cloudpickle's reconstructors when
    the flavor says its file is a cloudpickle (MLflow's default: functions in a pipeline, a PythonModel's
    class, travel by value in it). That file is the model's code: the scan still refuses every other
    global, but code pickled by value does what its author wrote (docs/security.md)."""
    frameworks = ["sklearn"]
    if flavor.get("serialization_format", "cloudpickle") == "cloudpickle" or flavor.get("python_model"):
        frameworks.append("cloudpickle")
    return frameworks


def _input_error(exc: Exception) -> InvalidRequest:
    """MLflow's scoring server answers 400 for any error the model raises on an input."""
    message = getattr(exc, "message", None) or str(exc)
    return InvalidRequest(
        "Encountered an unexpected error while evaluating the model. Verify that the serialized input "
        "Dataframe is compatible with the model for inference. %s: %s" % (type(exc).__name__, message)
    )
