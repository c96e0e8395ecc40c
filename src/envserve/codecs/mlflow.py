"""MLflow's scoring protocol as ``mlflow models serve`` applies it, without the mlflow package.

- :func:`parse_invocation`: a ``/invocations`` body (JSON ``dataframe_split``, ``dataframe_records``,
  ``instances``, ``inputs``, with ``params``; CSV; Parquet arrives as JSON, decoded by the server) -> the
  model input and the params, typed by the
  model's signature when there is one (CSV columns read with the signature's types, binary columns base64-
  decoded, datetime columns parsed);
- :func:`enforce_schema`: the input checked and converted as MLflow's pyfunc does before ``predict``:
  required columns present, safe type conversions only (int -> long or double, float -> double, ...),
  tensors of the declared rank, fixed dimensions and dtype; a violation is an
  :class:`~envserve.errors.InvalidRequest` naming the column or dimension;
- :func:`predictions`: what ``predict`` returned, as MLflow's JSON (DataFrames as records).

The rules follow MLflow 2.x/3.x (``mlflow.pyfunc.scoring_server``, ``mlflow.models.utils``); the
differential tests (tests/integration/test_reference_mlflow.py) compare envserve with the real server.
Worker import closure: standard library, numpy, pandas (imported when used); Python 3.6+.
"""

import base64
import contextlib
import io
import json
from typing import Any, Callable, Dict, List, Optional, Tuple, cast

import numpy as np

from ..errors import InvalidRequest

__all__ = ["Signature", "enforce_schema", "from_v2", "parse_invocation", "predictions"]

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
REQUIRED_INPUT_FORMAT = (
    "The input must be a JSON dictionary with exactly one of the input fields "
    "{'dataframe_split', 'dataframe_records', 'instances', 'inputs'}"
)

# MLflow column types -> numpy dtypes (pandas' for datetime)
_NUMPY = {
    "boolean": np.dtype("bool"),
    "integer": np.dtype("int32"),
    "long": np.dtype("int64"),
    "float": np.dtype("float32"),
    "double": np.dtype("float64"),
    "string": np.dtype("object"),
    "binary": np.dtype("object"),
    "datetime": np.dtype("datetime64[ns]"),
}
# what pandas.read_csv is told for each column type
_CSV_DTYPES = {
    "boolean": "bool",
    "integer": "int32",
    "long": "int64",
    "float": "float32",
    "double": "float64",
    "string": "object",
    "binary": "object",
}


class Spec:
    """One input (or param) of a signature: a column (``type``) or a tensor (``dtype`` and ``shape``)."""

    __slots__ = ("dtype", "name", "required", "shape", "type")

    def __init__(self, doc: Dict[str, Any]) -> None:
        self.name: Optional[str] = doc.get("name")
        self.required = bool(doc.get("required", True))
        if doc.get("type") == "tensor":
            tensor = doc.get("tensor-spec") or {}
            self.type = "tensor"
            self.dtype: Optional[np.dtype] = np.dtype(str(tensor.get("dtype", "float64")))
            self.shape: Tuple[int, ...] = tuple(int(d) for d in tensor.get("shape", [-1]))
        else:
            self.type = str(doc.get("type"))
            self.dtype = None
            self.shape = ()


class Signature:
    """The ``signature`` of an MLmodel file: inputs (all columns, or all tensors) and params."""

    def __init__(self, inputs: List[Spec], params: Optional[List[Dict[str, Any]]] = None) -> None:
        self.inputs = inputs
        self.params = params or []

    @classmethod
    def from_mlmodel(cls, doc: Dict[str, Any]) -> "Optional[Signature]":
        signature = doc.get("signature") or {}
        raw = signature.get("inputs")
        if not raw:
            return None
        specs = json.loads(raw) if isinstance(raw, str) else raw
        params = signature.get("params")
        params = json.loads(params) if isinstance(params, str) else params
        return cls([Spec(s) for s in specs or []], params if isinstance(params, list) else None)

    @property
    def is_tensor(self) -> bool:
        return bool(self.inputs) and all(s.type == "tensor" for s in self.inputs)

    @property
    def has_names(self) -> bool:
        return bool(self.inputs) and all(s.name for s in self.inputs)

    def names(self) -> List[str]:
        return [str(s.name) for s in self.inputs]

    def required_names(self) -> List[str]:
        return [str(s.name) for s in self.inputs if s.required]


# -- parsing the body ----------------------------------------------------------------------------------------


def parse_invocation(
    body: bytes, mime: str, signature: Optional[Signature]
) -> Tuple[Any, Optional[Dict[str, Any]]]:
    """(model input, params) of an ``/invocations`` body of type ``mime`` (already known to be one of
    application/json, text/csv, application/vnd.apache.parquet)."""
    if mime == "text/csv":
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(
                "Ensure that input is a valid UTF-8 encoded string. Error: %s" % exc
            ) from None
        return _parse_csv(text, signature), None
    if mime == "application/vnd.apache.parquet":  # the server decodes Parquet and sends its JSON
        raise InvalidRequest("Parquet bodies are decoded by the server, not in the model's environment")
    try:
        doc = json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest("Ensure that input is a valid JSON formatted string. Error: %s" % exc) from None
    if isinstance(doc, list):
        raise InvalidRequest("%s. Received a list." % REQUIRED_INPUT_FORMAT)
    if not isinstance(doc, dict):
        raise InvalidRequest(
            "%s. Received unexpected input type %r." % (REQUIRED_INPUT_FORMAT, type(doc).__name__)
        )
    params = doc.get("params")
    if params is not None and not isinstance(params, dict):
        raise InvalidRequest("'params' must be a JSON object of parameter names and values")
    keys = [k for k in FORMATS if k in doc]
    if len(keys) != 1:
        raise InvalidRequest(
            "%s. Received dictionary with input fields: %s" % (REQUIRED_INPUT_FORMAT, sorted(k for k in doc))
        )
    key = keys[0]
    if key in ("dataframe_split", "dataframe_records"):
        return _dataframe(doc[key], key[len("dataframe_") :], signature), params
    if key == "instances":
        return _instances(doc[key], signature), params
    return _cast(doc[key], signature), params


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError:
        raise InvalidRequest(
            "this model's environment has no pandas, which DataFrame and CSV inputs need; send 'inputs' "
            "or 'instances' instead"
        ) from None
    return pd


def _parse_csv(text: str, signature: Optional[Signature]) -> Any:
    pd = _pandas()
    dtypes = None
    if signature is not None and signature.has_names and not signature.is_tensor:
        dtypes = {s.name: _CSV_DTYPES[s.type] for s in signature.inputs if s.type in _CSV_DTYPES}
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=dtypes)
    except Exception as exc:
        raise InvalidRequest(
            "Failed to parse input as a Pandas DataFrame. Ensure that the input is a valid CSV-formatted "
            "Pandas DataFrame produced using the `pandas.DataFrame.to_csv()` method. Error: '%s'" % exc
        ) from None
    if signature is not None and signature.has_names and not signature.is_tensor:
        for spec in signature.inputs:
            if spec.type == "datetime" and spec.name in frame:
                frame[spec.name] = _to_datetime(frame[spec.name], spec.name)
    return frame


def _to_datetime(series: Any, name: Any) -> Any:
    pd = _pandas()
    try:
        parsed = pd.to_datetime(series)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest("column %r cannot be read as datetime: %s" % (name, exc)) from None
    unit = getattr(getattr(parsed, "dt", None), "unit", "ns")
    return parsed.dt.as_unit("ns") if unit != "ns" else parsed


def _dataframe(value: Any, orient: str, signature: Optional[Signature]) -> Any:
    pd = _pandas()
    if orient == "records":
        if not isinstance(value, list):
            kind = "dictionary" if isinstance(value, dict) else "type %s" % type(value).__name__
            raise InvalidRequest("Dataframe records format must be a list of records. Got %s." % kind)
        try:
            frame = pd.DataFrame(data=value)
        except Exception as exc:
            raise InvalidRequest(
                "Provided dataframe_records field is not a valid dataframe representation in 'records' "
                "format. Error: '%s'" % exc
            ) from None
    else:
        if not isinstance(value, dict):
            kind = "list" if isinstance(value, list) else "type %s" % type(value).__name__
            raise InvalidRequest("Dataframe split format must be a dictionary. Got %s." % kind)
        keys = set(value)
        if "data" not in keys or keys - {"columns", "data", "index"}:
            raise InvalidRequest(
                "Dataframe split format must have 'data' field and optionally 'columns' and 'index' "
                "fields. Got %s." % sorted(keys)
            )
        try:
            frame = pd.DataFrame(index=value.get("index"), columns=value.get("columns"), data=value["data"])
        except Exception as exc:
            raise InvalidRequest(
                "Provided dataframe_split field is not a valid dataframe representation in 'split' "
                "format. Error: '%s'" % exc
            ) from None
    if signature is not None:
        frame = _cast_frame(frame, signature)
    return frame


def _cast_frame(frame: Any, signature: Signature) -> Any:
    """Column types as MLflow casts them while parsing (cast_df_types_according_to_schema)."""
    pd = _pandas()
    if signature.has_names:
        pairs = [(s.name, s) for s in signature.inputs]
    elif signature.is_tensor and len(signature.inputs) == 1:
        pairs = [(c, signature.inputs[0]) for c in frame.columns]
    else:
        pairs = list(zip(frame.columns, signature.inputs))
    for name, spec in pairs:
        if name not in frame.columns or len(frame) == 0:
            continue
        column = frame[name]
        try:
            if spec.type == "binary":
                frame[name] = column.map(lambda x: base64.decodebytes(bytes(x, "utf8")))
            elif spec.type == "tensor":
                if isinstance(column.iloc[0], list):
                    continue  # lists are reshaped by the schema enforcement
                frame[name] = column.astype(spec.dtype)
            elif spec.type == "datetime":
                frame[name] = _to_datetime(column, name)
            elif spec.type in _NUMPY:
                target = _NUMPY[spec.type]
                if target == np.dtype("object") and isinstance(column.dtype, pd.StringDtype):
                    continue
                frame[name] = column.astype(target)
        except InvalidRequest:
            raise
        except Exception as exc:
            raise InvalidRequest(
                "Data is not compatible with model signature. Failed to convert column %s to type %r. "
                "Error: %r" % (name, spec.type if spec.type != "tensor" else str(spec.dtype), exc)
            ) from None
    return frame


def _convert(value: Any, spec: Optional[Spec]) -> Any:
    try:
        if spec is None:
            return np.array(value)
        if spec.type == "tensor":
            return np.array(value, dtype=spec.dtype)
        dtype = _NUMPY.get(spec.type)
        if isinstance(value, (list, np.ndarray)):
            return np.array(value, dtype=dtype)
        return np.array([value], dtype=dtype)[0]
    except (TypeError, ValueError) as exc:
        raise InvalidRequest("%s" % exc) from None


def _cast(value: Any, signature: Optional[Signature]) -> Any:
    """``inputs`` (and non-record ``instances``): MLflow's _cast_schema_type."""
    by_name = {s.name: s for s in signature.inputs} if signature is not None and signature.has_names else {}
    if signature is not None:
        if len(by_name) == 1 and isinstance(value, list) and not any(isinstance(x, dict) for x in value):
            value = {next(iter(by_name)): value}
        elif not signature.has_names and not (isinstance(value, list) or np.isscalar(value)):
            raise InvalidRequest(
                "Failed to parse input data. This model contains an un-named model signature which expects "
                "a single n-dimensional array or a single value as input, however, an input of type %s was "
                "found." % type(value).__name__
            )
    if isinstance(value, dict):
        return {k: _convert(v, by_name.get(k)) for k, v in value.items()}
    first = signature.inputs[0] if signature is not None and signature.inputs else None
    if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
        return [{k: _convert(v, by_name.get(k)) for k, v in row.items()} for row in value]
    return _convert(value, first)


def _instances(value: Any, signature: Optional[Signature]) -> Any:
    by_name = {s.name: s for s in signature.inputs} if signature is not None and signature.has_names else {}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        columns: Dict[str, List[Any]] = {}
        for row in value:
            if not isinstance(row, dict):
                raise InvalidRequest("every instance must be an object of column names and values")
            for key, item in row.items():
                columns.setdefault(key, []).append(_convert(item, by_name.get(key)))
        data: Any = {k: np.array(v) for k, v in columns.items()}
    else:
        data = _cast(value, signature)
    if isinstance(data, dict):
        sized = {k: v for k, v in data.items() if isinstance(v, (list, np.ndarray))}
        check = list(sized)
        if signature is not None and signature.has_names:
            check = [c for c in signature.required_names() if c in sized]
        lengths = {len(sized[c]) for c in check}
        if len(lengths) > 1:
            raise InvalidRequest("The length of values for each input/column name are not the same")
    return data


# -- V2 requests -------------------------------------------------------------------------------------------


def from_v2(request: Any, signature: Signature, decode: Callable[[Any], Any], model: str) -> Any:
    """A V2 request as the model's input. Column signatures: a DataFrame, from one input per column, or
    from one ``[N, k]`` input whose k columns are the signature's, in order. Tensor signatures: arrays of
    the declared dtypes (one, or a dict by input name). ``decode`` applies an input's content type."""
    if signature.is_tensor:
        arrays = [_v2_tensor(inp, spec, decode) for inp, spec in zip(request.inputs, signature.inputs)]
        if len(signature.inputs) == 1 and len(request.inputs) == 1:
            return arrays[0]
        return {inp.name: arr for inp, arr in zip(request.inputs, arrays)}
    return _v2_frame(request, signature, decode, model)


def _v2_tensor(inp: Any, spec: Spec, decode: Callable[[Any], Any]) -> np.ndarray:
    data = decode(inp)
    dtype = spec.dtype if spec.dtype is not None and spec.dtype.kind not in "OU" else None
    try:
        return np.asarray(data, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest("input %r cannot be converted to %s: %s" % (inp.name, spec.dtype, exc)) from None


def _v2_frame(request: Any, signature: Signature, decode: Callable[[Any], Any], model: str) -> Any:
    pd = _pandas()
    names = [str(s.name) for s in signature.inputs]
    by_name = {i.name: i for i in request.inputs}
    columns: Dict[str, Any] = {}
    if len(request.inputs) == 1 and request.inputs[0].name not in names and request.inputs[0].data.ndim == 2:
        matrix = request.inputs[0].data
        if matrix.shape[1] != len(names):
            raise InvalidRequest(
                "model %r expects %d columns (%s); input %r has %d"
                % (model, len(names), ", ".join(names), request.inputs[0].name, matrix.shape[1])
            )
        for j, name in enumerate(names):
            columns[name] = matrix[:, j]
    else:
        required = [str(s.name) for s in signature.inputs if s.required]
        missing = [n for n in required if n not in by_name]
        if missing:
            raise InvalidRequest(
                "model %r is missing input column(s) %s; it expects %s"
                % (model, ", ".join(repr(m) for m in missing), ", ".join(names))
            )
        for spec in signature.inputs:
            inp = by_name.get(spec.name)
            if inp is None:
                continue
            value = decode(inp)
            if isinstance(value, np.ndarray):
                value = value.reshape(value.shape[0], -1)[:, 0] if value.ndim > 1 else value
                if value.dtype == object:
                    value = value.tolist()
            if isinstance(value, list) and value and isinstance(value[0], bytes) and spec.type == "string":
                with contextlib.suppress(UnicodeDecodeError):
                    value = [v.decode("utf-8") for v in value]
            columns[str(spec.name)] = value
    frame = pd.DataFrame(columns)
    for spec in signature.inputs:
        name = str(spec.name)
        if name not in frame or spec.type in ("string", "binary"):
            continue
        try:
            frame[name] = (
                _to_datetime(frame[name], name)
                if spec.type == "datetime"
                else frame[name].astype(_NUMPY[spec.type])
            )
        except InvalidRequest:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            raise InvalidRequest("column %r cannot be converted to %s: %s" % (name, spec.type, exc)) from None
    return frame


# -- schema enforcement ------------------------------------------------------------------------------------


def enforce_schema(data: Any, signature: Optional[Signature]) -> Any:
    """The input as the model gets it: converted and checked against the signature (MLflow's rules)."""
    if signature is None or not signature.inputs:
        return data
    if not signature.is_tensor:
        data = _as_frame(data, _pandas())
    if signature.has_names:
        required = signature.required_names()
        if isinstance(data, np.ndarray) and len(required) == 1:
            data = {required[0]: data}
        present = (
            set(data.columns) if hasattr(data, "columns") else set(data) if isinstance(data, dict) else set()
        )
        missing = [c for c in required if c not in present]
        if missing:
            extra = sorted(str(c) for c in present if c not in signature.names())
            note = " Note that there were extra inputs: %s." % extra if extra else ""
            raise InvalidRequest("Model is missing inputs %s.%s" % (missing, note))
    elif not signature.is_tensor and len(data.columns) < len(signature.inputs):
        raise InvalidRequest(
            "Model inference is missing inputs. The model signature declares %d inputs but the provided "
            "value only has %d inputs." % (len(signature.inputs), len(data.columns))
        )
    if signature.is_tensor:
        return _enforce_tensors(data, signature)
    out = {}
    if signature.has_names:
        for spec in signature.inputs:
            if spec.name in data.columns:
                out[spec.name] = _enforce_column(spec.name, data[spec.name], spec.type)
    else:
        for spec, name in zip(signature.inputs, data.columns):
            out[name] = _enforce_column(name, data[name], spec.type)
    return _pandas().DataFrame(out)


def _as_frame(data: Any, pd: Any) -> Any:
    if isinstance(data, pd.Series):
        return pd.DataFrame(data)
    if np.isscalar(data):
        return pd.DataFrame([data])
    if isinstance(data, dict):
        values = list(data.values())
        if all(np.isscalar(v) or v is None for v in values):
            return pd.DataFrame([data])
        try:
            if any(isinstance(v, np.ndarray) and v.ndim > 1 for v in values):
                return pd.DataFrame(
                    {
                        k: v.tolist() if isinstance(v, np.ndarray) and v.ndim > 1 else v
                        for k, v in data.items()
                    }
                )
            return pd.DataFrame(data)
        except Exception as exc:
            raise InvalidRequest(
                "This model contains a column-based signature, which suggests a DataFrame input. There was "
                "an error casting the input data to a DataFrame: %s" % exc
            ) from None
    if isinstance(data, (list, np.ndarray)):
        return pd.DataFrame(data)
    if isinstance(data, pd.DataFrame):
        return data
    raise InvalidRequest("Expected input to be DataFrame. Found: %s" % type(data).__name__)


def _enforce_column(name: Any, values: Any, kind: str) -> Any:
    """MLflow's _enforce_mlflow_datatype: only conversions that keep the values."""
    pd = _pandas()
    if values.dtype == object and kind not in ("binary", "string"):
        values = values.infer_objects()
    if kind == "string" and (values.dtype == object or isinstance(values.dtype, pd.StringDtype)):
        return values
    if kind == "binary" and (values.dtype == object or isinstance(values.dtype, pd.StringDtype)):
        return values
    target = _NUMPY[kind]
    if values.dtype == target:
        return values
    if kind == "datetime" and (values.dtype.kind == "M" or values.dtype == object):
        try:
            return values.astype(np.dtype("datetime64[ns]"))
        except (TypeError, ValueError):
            raise InvalidRequest(
                "Failed to convert column %s from type %s to datetime." % (name, values.dtype)
            ) from None
    if kind == "boolean" and values.dtype == object:
        return values
    have = values.dtype
    if have.kind == target.kind:
        upcast = have.itemsize <= target.itemsize
    elif have.kind == "u" and target.kind == "i":
        upcast = have.itemsize < target.itemsize
    elif have.kind in "iu" and target == np.dtype("float64"):
        upcast = have.itemsize <= 6
    else:
        upcast = False
    if upcast:
        return values.astype(target)
    if have == np.dtype("int64") and target.kind == "f" and all(pd.isnull(x) or x in (0, 1) for x in values):
        return values.astype(target)
    raise InvalidRequest(
        "Incompatible input types for column %s. Can not safely convert %s to %s." % (name, have, target)
    )


def _enforce_tensor(values: Any, spec: Spec, name: Optional[str]) -> np.ndarray:
    expected, dtype = spec.shape, spec.dtype
    assert dtype is not None
    if len(expected) == 1 and expected[0] == -1 and dtype == np.dtype("O"):
        return cast(np.ndarray, values)
    actual = values.shape
    if len(expected) > 1 and -1 in expected[1:] and len(actual) == 1 and values.dtype == np.dtype("O"):
        return cast(np.ndarray, values)
    what = "input %r" % name if name else "the input"
    if len(expected) != len(actual) or any(e != -1 and e != a for e, a in zip(expected, actual)):
        raise InvalidRequest(
            "Shape of %s %s does not match expected shape %s." % (what, tuple(actual), tuple(expected))
        )
    if values.dtype != dtype:
        raise InvalidRequest("dtype of %s %s does not match expected dtype %s" % (what, values.dtype, dtype))
    return cast(np.ndarray, values)


def _column_to_tensor(name: Optional[str], series: Any, spec: Spec) -> np.ndarray:
    if not spec.shape or spec.shape[0] != -1 or -1 in spec.shape[1:]:
        raise InvalidRequest(
            "For pandas dataframe input, the first dimension of shape must be a variable dimension and other "
            "dimensions must be fixed, but in model signature the shape of %s is %s."
            % ("input " + str(name) if name else "the unnamed input", spec.shape)
        )
    first = series.iloc[0]
    if np.isscalar(first):
        for shape in ((-1,), (-1, 1)):
            if spec.shape == shape:
                try:
                    return _enforce_tensor(np.array(series, dtype=spec.dtype).reshape(shape), spec, name)
                except (TypeError, ValueError) as exc:
                    raise InvalidRequest(
                        "column %r cannot be converted to %s: %s" % (name, spec.dtype, exc)
                    ) from None
        raise InvalidRequest(
            "The input pandas dataframe column '%s' contains scalar values, which requires the shape to be "
            "(-1,) or (-1, 1), but got tensor spec shape of %s." % (name, spec.shape)
        )
    try:
        stacked = np.vstack(series.tolist()).reshape(spec.shape).astype(spec.dtype)
    except (TypeError, ValueError):
        stacked = None
    if stacked is None or len(stacked) != len(series):
        raise InvalidRequest(
            "The value in the Input DataFrame column '%s' could not be converted to the expected shape of: "
            "'%s'. Ensure that each of the input list elements are of uniform length and that the data can "
            "be coerced to the tensor type '%s'" % (name, spec.shape, spec.dtype)
        )
    return stacked


def _enforce_tensors(data: Any, signature: Signature) -> Any:
    try:
        import pandas as pd
    except ImportError:
        pd = None
    is_frame = pd is not None and isinstance(data, pd.DataFrame)
    if signature.has_names:
        out = {}
        for spec in signature.inputs:
            name = spec.name
            if isinstance(data, dict):
                value = data.get(name)
                if value is None:
                    continue
                if not isinstance(value, np.ndarray):
                    raise InvalidRequest(
                        "This model contains a tensor-based model signature with input names, which suggests "
                        "a dictionary input mapping input name to a numpy array, but a dict with value type "
                        "%s was found." % type(value).__name__
                    )
                out[name] = _enforce_tensor(value, spec, name)
            elif is_frame:
                out[name] = _column_to_tensor(name, data[name], spec)
            else:
                raise InvalidRequest(
                    "This model contains a tensor-based model signature with input names, which suggests a "
                    "dictionary input mapping input name to tensor, but an input of type %s was found."
                    % type(data).__name__
                )
        return out
    spec = signature.inputs[0]
    if is_frame:
        if data.empty:
            raise InvalidRequest("Input DataFrame is empty.")
        if len(data.columns) == 1:
            return _column_to_tensor(None, data[data.columns[0]], spec)
        if spec.shape != (-1, len(data.columns)):
            raise InvalidRequest(
                "This model contains a model signature with an unnamed input. Since the input data is a "
                "pandas DataFrame containing multiple columns, the input shape must be of the structure "
                "(-1, number_of_dataframe_columns). Instead, the input DataFrame passed had %d columns and "
                "an input shape of %s." % (len(data.columns), spec.shape)
            )
        return _enforce_tensor(data.to_numpy(), spec, None)
    if isinstance(data, np.ndarray):
        return _enforce_tensor(data, spec, None)
    raise InvalidRequest(
        "This model contains a tensor-based model signature with no input names, which suggests a numpy "
        "array input or a pandas dataframe input with proper column values, but an input of type %s was "
        "found." % type(data).__name__
    )


# -- answers -------------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    try:
        import pandas as pd
    except ImportError:
        pd = None
    if pd is not None and isinstance(value, pd.DataFrame):
        return json.loads(value.to_json(orient="records", date_format="iso"))
    if pd is not None and isinstance(value, pd.Series):
        return json.loads(value.to_json(orient="records", date_format="iso"))
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value


def predictions(raw: Any) -> bytes:
    """MLflow's answer to ``/invocations``: ``{"predictions": ...}`` with DataFrames as records."""
    return json.dumps({"predictions": _jsonable(raw)}, default=str).encode("utf-8")
