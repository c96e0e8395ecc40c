"""Open Inference Protocol (V2) data model: requests and responses as plain objects with numpy data.

Parsing turns a decoded JSON document into an :class:`InferenceRequest` whose inputs hold numpy arrays of
their declared datatype and shape, or raises :class:`~envserve.errors.InvalidRequest` naming the field.
The shape is never used to allocate: the data are converted first, and the declared shape is only checked
against the number of elements that actually arrived.

Part of the worker's import closure: standard library and numpy only, Python 3.6+.
"""

import base64
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..errors import DatatypeMismatch, InvalidRequest, ShapeMismatch
from .binary import tensor_bytes, tensor_from_bytes
from .datatypes import DATATYPES, check_shape_size
from .envelope import RESERVED_PREFIX, Passthrough, Report

__all__ = [
    "InferenceRequest",
    "InferenceResponse",
    "MetadataTensor",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "array_from_data",
    "parse_inference_request",
    "reserved_parameter",
    "shaped",
]

NO_INPUTS = "the request must have a non-empty 'inputs' list"

#: Largest number of dimensions accepted in a shape; numpy itself stops at 64.
MAX_DIMS = 32


class RequestInput:
    """One input tensor. ``data`` is a numpy array already shaped as ``shape``."""

    __slots__ = ("data", "datatype", "name", "parameters", "shape")

    def __init__(
        self,
        name: str,
        shape: List[int],
        datatype: str,
        data: np.ndarray,
        parameters: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.name = name
        self.shape = shape
        self.datatype = datatype
        self.data = data
        self.parameters = parameters or {}

    @property
    def content_type(self) -> Optional[str]:
        return self.parameters.get("content_type")

    def __repr__(self) -> str:
        return "RequestInput(name=%r, shape=%r, datatype=%r)" % (self.name, self.shape, self.datatype)


class RequestOutput:
    """An output the client asked for, with its parameters (e.g. ``binary_data``)."""

    __slots__ = ("name", "parameters")

    def __init__(self, name: str, parameters: Optional[Dict[str, Any]] = None) -> None:
        self.name = name
        self.parameters = parameters or {}

    def __repr__(self) -> str:
        return "RequestOutput(name=%r)" % (self.name,)


class InferenceRequest:
    """A V2 inference request. ``passthrough`` (never from a client) marks a protocol body handed to the
    model's runtime as it arrived (:class:`~envserve.protocol.envelope.Passthrough`)."""

    __slots__ = ("id", "inputs", "outputs", "parameters", "passthrough")

    def __init__(
        self,
        inputs: List[RequestInput],
        id: Optional[str] = None,
        parameters: Optional[Dict[str, Any]] = None,
        outputs: Optional[List[RequestOutput]] = None,
        passthrough: Optional[Passthrough] = None,
    ) -> None:
        self.inputs = inputs
        self.id = id
        self.parameters = parameters or {}
        self.outputs = outputs or []
        self.passthrough = passthrough

    @property
    def content_type(self) -> Optional[str]:
        return self.parameters.get("content_type")

    def input(self, name: str) -> RequestInput:
        for item in self.inputs:
            if item.name == name:
                return item
        raise InvalidRequest("the request has no input named %r" % (name,))

    def __repr__(self) -> str:
        return "InferenceRequest(id=%r, inputs=%r)" % (self.id, self.inputs)


class ResponseOutput:
    """One output tensor; ``data`` is a numpy array (BYTES: object array of bytes or str)."""

    __slots__ = ("data", "datatype", "name", "parameters", "shape")

    def __init__(
        self,
        name: str,
        shape: List[int],
        datatype: str,
        data: np.ndarray,
        parameters: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.name = name
        self.shape = shape
        self.datatype = datatype
        self.data = data
        self.parameters = parameters or {}

    def __repr__(self) -> str:
        return "ResponseOutput(name=%r, shape=%r, datatype=%r)" % (self.name, self.shape, self.datatype)


class InferenceResponse:
    """A V2 inference response. ``report`` (never sent to a client) is what the layers beneath the data
    plane found while answering (:class:`~envserve.protocol.envelope.Report`)."""

    __slots__ = ("id", "model_name", "model_version", "outputs", "parameters", "report")

    def __init__(
        self,
        model_name: str,
        outputs: List[ResponseOutput],
        model_version: Optional[str] = None,
        id: Optional[str] = None,
        parameters: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.outputs = outputs
        self.id = id
        self.parameters = parameters or {}
        self.report = Report()

    def output(self, name: str) -> ResponseOutput:
        for item in self.outputs:
            if item.name == name:
                return item
        raise KeyError(name)

    def to_dict(self, binary: Optional[List[Any]] = None, binary_all: bool = False) -> Dict[str, Any]:
        """The JSON document, with each output's data as a flat numpy array (serialise with numpy support).

        With ``binary`` (a list to fill), outputs asked for as binary (their ``binary_data`` parameter, or
        ``binary_all``) leave out ``data``, carry ``binary_data_size``, and their bytes are appended to
        ``binary`` in order (the REST binary tensor extension).
        """
        doc: Dict[str, Any] = {"model_name": self.model_name}
        if self.model_version is not None:
            doc["model_version"] = self.model_version
        if self.id is not None:
            doc["id"] = self.id
        if self.parameters:
            doc["parameters"] = self.parameters
        outputs = []
        for out in self.outputs:
            item: Dict[str, Any] = {
                "name": out.name,
                "shape": out.shape,
                "datatype": out.datatype,
            }
            if binary is not None and (binary_all or out.parameters.get("binary_data") is True):
                raw = tensor_bytes(out.data, out.datatype)
                binary.append(raw)
                item["parameters"] = dict(out.parameters, binary_data_size=memoryview(raw).nbytes)
                outputs.append(item)
                continue
            data, parameters = flat_json_data(out.data, out.datatype), out.parameters
            if data is None:  # BYTES that are not UTF-8 travel base64-encoded in JSON, and say so
                data = [base64.b64encode(v).decode("ascii") for v in out.data.ravel().tolist()]
                parameters = dict(parameters, content_type="base64")
            if parameters:
                item["parameters"] = parameters
            item["data"] = data
            outputs.append(item)
        doc["outputs"] = outputs
        return doc


class MetadataTensor:
    """A tensor description in model metadata (``inputs``/``outputs`` of model-settings.json)."""

    __slots__ = ("datatype", "name", "parameters", "shape")

    def __init__(
        self, name: str, datatype: str, shape: List[int], parameters: Optional[Dict[str, Any]] = None
    ) -> None:
        self.name = name
        self.datatype = datatype
        self.shape = shape
        self.parameters = parameters or {}

    def to_dict(self) -> Dict[str, Any]:
        doc: Dict[str, Any] = {"name": self.name, "datatype": self.datatype, "shape": self.shape}
        if self.parameters:
            doc["parameters"] = self.parameters
        return doc


def flat_json_data(data: Any, datatype: str) -> Any:
    """Row-major flat data ready for a JSON encoder that understands numpy arrays.

    None when BYTES elements are not all UTF-8 text (they cannot be JSON strings as they are).
    """
    if isinstance(data, np.ndarray):
        if datatype == "BYTES" or data.dtype.kind in "OSU":
            try:
                return [v.decode("utf-8") if isinstance(v, bytes) else v for v in data.ravel().tolist()]
            except UnicodeDecodeError:
                return None
        if data.dtype == np.float16:
            return data.ravel().astype(np.float32)
        return np.ascontiguousarray(data).ravel()
    return data


# -- parsing -----------------------------------------------------------------------------------------------


def _field(doc: Mapping[str, Any], key: str, where: str) -> Any:
    try:
        return doc[key]
    except KeyError:
        raise InvalidRequest("%s is missing the required field %r" % (where, key)) from None


def _parameters(value: Any, where: str) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest("%s.parameters must be a JSON object" % where)
    return value


def parse_shape(value: Any, where: str) -> List[int]:
    if not isinstance(value, list):
        raise InvalidRequest(
            "%s.shape must be a list of non-negative integers, got %s" % (where, _kind(value))
        )
    if len(value) > MAX_DIMS:
        raise InvalidRequest(
            "%s.shape has %d dimensions; at most %d are allowed" % (where, len(value), MAX_DIMS)
        )
    for dim in value:
        # bool is an int subclass; a shape of [true] is a mistake, not a dimension of 1.
        if type(dim) is not int or dim < 0:
            raise InvalidRequest("%s.shape must be a list of non-negative integers, got %r" % (where, value))
    check_shape_size(value, where)
    return value


def _element_count(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim  # Python ints: no overflow however large the declared dimensions are
    return count


def array_from_data(
    data: Any, shape: List[int], datatype: str, where: str, loose_bytes: bool = False
) -> np.ndarray:
    """Convert JSON ``data`` (nested or flat) to an array of ``datatype`` shaped ``shape``.

    Raises InvalidRequest subclasses for ragged data, values the datatype cannot hold, and shapes whose
    element count differs from the data's -- except, with ``loose_bytes``, a BYTES input's: its strings are
    then returned flat, as MLServer reads them (:func:`shaped`).
    """
    try:
        dtype = DATATYPES[datatype]
    except KeyError:
        raise DatatypeMismatch(
            "%s.datatype %r is not an Open Inference Protocol datatype; use one of %s"
            % (where, datatype, ", ".join(DATATYPES))
        ) from None
    if not isinstance(data, list):
        if isinstance(data, (dict, type(None))):
            raise InvalidRequest("%s.data must be a list (nested or flat), got %s" % (where, _kind(data)))
        data = [data]
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError):
        raise ShapeMismatch("%s.data is ragged: nested lists must all have the same length" % where) from None
    kind = raw.dtype.kind
    if raw.size == 0:
        arr = np.empty(0, dtype=dtype)
    elif datatype == "BYTES":
        if kind != "U":
            raise DatatypeMismatch("%s.data must hold strings for datatype BYTES" % where)
        arr = np.empty(raw.size, dtype=object)
        arr[:] = [s.encode("utf-8") for s in raw.ravel().tolist()]
    elif dtype.kind == "f":
        if kind not in "iuf":
            raise DatatypeMismatch(
                "%s.data must hold numbers for datatype %s, found %s" % (where, datatype, _elements(raw))
            )
        with np.errstate(over="ignore"):  # an overflow is refused just below, not warned about
            arr = raw.astype(dtype, copy=False)
        if dtype != raw.dtype and kind == "f" and not np.isfinite(arr).all() and np.isfinite(raw).all():
            raise DatatypeMismatch("%s.data has values too large for datatype %s" % (where, datatype))
    elif dtype.kind in "iu":
        if kind in "fO":
            # numpy turns mixed int64/uint64 values into floats (or objects beyond 64 bits): check them
            # exactly as Python ints before deciding.
            raw = _exact_integers(data, raw, datatype, where)
            kind = raw.dtype.kind
        if kind not in "iu":
            raise DatatypeMismatch(
                "%s.data must hold integers for datatype %s, found %s" % (where, datatype, _elements(raw))
            )
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise DatatypeMismatch(
                "%s.data has values outside the range of %s (%d to %d)"
                % (where, datatype, info.min, info.max)
            )
        arr = raw.astype(dtype, copy=False)
    else:  # BOOL
        if kind != "b":
            raise DatatypeMismatch(
                "%s.data must hold true/false for datatype BOOL, found %s" % (where, _elements(raw))
            )
        arr = raw
    expected = _element_count(shape)
    if loose_bytes and datatype == "BYTES" and arr.size != expected:
        return arr
    if arr.size != expected:
        raise ShapeMismatch(
            "%s.shape %r needs %d elements but data has %d" % (where, shape, expected, arr.size)
        )
    return arr.reshape(shape)


def _exact_integers(data: Any, raw: np.ndarray, datatype: str, where: str) -> np.ndarray:
    try:
        values = np.asarray(data, dtype=object).ravel().tolist()
    except (ValueError, TypeError):
        return raw
    if not all(type(v) is int for v in values):
        return raw  # really non-integral: reported by the caller
    info = np.iinfo(DATATYPES[datatype])
    if min(values) < info.min or max(values) > info.max:
        raise DatatypeMismatch(
            "%s.data has values outside the range of %s (%d to %d)" % (where, datatype, info.min, info.max)
        )
    return np.array(values, dtype=DATATYPES[datatype])


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _elements(raw: np.ndarray) -> str:
    return {"U": "strings", "b": "booleans", "f": "non-integral numbers", "O": "mixed or null values"}.get(
        raw.dtype.kind, "integers"
    )


class _Binary:
    """The binary part of a request (REST binary tensor extension), consumed input by input in order."""

    def __init__(self, data: Any) -> None:
        self.data = memoryview(data) if data is not None else None
        self.offset = 0

    def take(self, size: Any, shape: List[int], datatype: str, where: str) -> np.ndarray:
        if self.data is None:
            raise InvalidRequest(
                "%s has parameters.binary_data_size but the request has no binary part "
                "(Inference-Header-Content-Length)" % where
            )
        if type(size) is not int or size < 0:
            raise InvalidRequest("%s: binary_data_size must be a non-negative integer" % where)
        arr = tensor_from_bytes(self.data, self.offset, size, shape, datatype, where)
        self.offset += size
        return arr


def parse_request_input(doc: Any, where: str, binary: Optional[_Binary] = None) -> RequestInput:
    if not isinstance(doc, dict):
        raise InvalidRequest("%s must be a JSON object" % where)
    name = _field(doc, "name", where)
    if not isinstance(name, str):
        raise InvalidRequest("%s.name must be a string" % where)
    where = "input %r" % name
    shape = parse_shape(_field(doc, "shape", where), where)
    datatype = _field(doc, "datatype", where)
    if not isinstance(datatype, str):
        raise InvalidRequest("%s.datatype must be a string" % where)
    parameters = _parameters(doc.get("parameters"), where)
    if "data" not in doc and "binary_data_size" in parameters:
        data = (binary or _Binary(None)).take(parameters["binary_data_size"], shape, datatype, where)
    else:
        data = array_from_data(_field(doc, "data", where), shape, datatype, where, loose_bytes=True)
    return RequestInput(name, shape, datatype, data, parameters)


def shaped(data: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``data`` in ``shape``, or as it is when the shape does not count its elements: a BYTES tensor
    shaped as MLServer's clients and documentation shape them (``[11]`` for ``"hello world"``, the
    string's length; ``[8, 8]`` for an image's bytes), which MLServer reads as the strings sent whatever
    the shape says. Such a tensor keeps the declared ``shape`` and holds its strings flat."""
    return data.reshape(shape) if data.size == _element_count(shape) else data


def parse_inference_request(doc: Any, binary: Any = None) -> InferenceRequest:
    """Build an :class:`InferenceRequest` from a decoded JSON document (and, for the binary tensor
    extension, the bytes that followed the JSON header)."""
    if not isinstance(doc, dict):
        raise InvalidRequest("the request body must be a JSON object with an 'inputs' list")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidRequest(NO_INPUTS)
    cursor = _Binary(binary) if binary is not None else None
    inputs = [parse_request_input(item, "inputs[%d]" % i, cursor) for i, item in enumerate(raw_inputs)]
    if cursor is not None and cursor.data is not None and cursor.offset != cursor.data.nbytes:
        raise InvalidRequest(
            "the binary part has %d bytes but the inputs' binary_data_size add up to %d"
            % (cursor.data.nbytes, cursor.offset)
        )
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest("'id' must be a string")
    outputs: List[RequestOutput] = []
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidRequest("'outputs' must be a list of {name, parameters} objects")
        for i, item in enumerate(raw_outputs):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InvalidRequest("outputs[%d] must be an object with a string 'name'" % i)
            outputs.append(
                RequestOutput(item["name"], _parameters(item.get("parameters"), "outputs[%d]" % i))
            )
    return InferenceRequest(inputs, request_id, _parameters(doc.get("parameters"), "request"), outputs)


def reserved_parameter(request: InferenceRequest) -> Optional[str]:
    """Where the request uses a ``parameters`` key envserve reserves (``envserve_...``), for the error
    message; None when it uses none."""
    for key in request.parameters:
        if key.startswith(RESERVED_PREFIX):
            return "parameters.%s" % key
    for inp in request.inputs:
        if inp.parameters:
            for key in inp.parameters:
                if key.startswith(RESERVED_PREFIX):
                    return "input %r parameters.%s" % (inp.name, key)
    for out in request.outputs:
        for key in out.parameters:
            if key.startswith(RESERVED_PREFIX):
                return "output %r parameters.%s" % (out.name, key)
    return None
