"""Seldon Core v1 protocol (``POST /api/v1.0/predictions``) <-> V2, so a SeldonDeployment with
``protocol: seldon`` can use envserve as its MLFLOW_SERVER/SKLEARN_SERVER image.

Request kinds: ``data.ndarray`` (with optional ``data.names``), ``data.tensor {shape, values}``,
``strData``, ``jsonData``, ``binData`` (base64). The response carries ``meta`` and the same kind as the
request. Errors use Seldon's body: ``{"status": {"code", "info", "reason", "status": "FAILURE"}}``.

Worker closure rules apply (stdlib + numpy, Python 3.6+), though only the server uses it.
"""

import base64
import binascii
import contextlib
import json
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..errors import InvalidRequest
from .datatypes import datatype_of
from .v2 import InferenceResponse, shaped

__all__ = ["data_array", "error_body", "response_meta", "to_seldon_response", "to_v2_request"]


def _tensor_input(arr: np.ndarray) -> Dict[str, Any]:
    if arr.dtype.kind in "USO":
        values = [v if isinstance(v, str) else json.dumps(v) for v in arr.ravel().tolist()]
        return {
            "name": "input",
            "shape": list(arr.shape),
            "datatype": "BYTES",
            "data": values,
            "parameters": {"content_type": "str"},
        }
    return {
        "name": "input",
        "shape": list(arr.shape),
        "datatype": datatype_of(arr.dtype),
        "data": arr.ravel().tolist(),
    }


def data_array(doc: Dict[str, Any]) -> Tuple[np.ndarray, str, List[str]]:
    """(array, kind, column names) of a Seldon message's ``data`` (``ndarray`` or ``tensor``)."""
    data = doc["data"]
    if not isinstance(data, dict):
        raise InvalidRequest("'data' must be an object with 'ndarray' or 'tensor'")
    names = data.get("names") or []
    if not isinstance(names, list):
        raise InvalidRequest("data.names must be a list of column names")
    if "ndarray" in data:
        try:
            arr = np.asarray(data["ndarray"])
        except ValueError:
            raise InvalidRequest("data.ndarray is ragged: every row must have the same length") from None
        if arr.dtype == object:
            raise InvalidRequest("data.ndarray mixes types or is ragged")
        if arr.ndim == 1:
            arr = arr.reshape(1, -1) if names else arr
        kind = "ndarray"
    elif "tensor" in data:
        tensor = data["tensor"]
        if not isinstance(tensor, dict) or "values" not in tensor or "shape" not in tensor:
            raise InvalidRequest("data.tensor needs 'shape' and 'values'")
        values = np.asarray(tensor["values"], dtype=np.float64)
        shape = tensor["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InvalidRequest("data.tensor.shape must be a list of non-negative integers")
        count = 1
        for d in shape:
            count *= d
        if count != values.size:
            raise InvalidRequest(
                "data.tensor.shape %r needs %d values but has %d" % (shape, count, values.size)
            )
        arr = values.reshape(shape)
        kind = "tensor"
    else:
        raise InvalidRequest("'data' needs 'ndarray' or 'tensor'")
    return arr, kind, [str(n) for n in names]


#: The kind of a request whose ``jsonData`` is an array of numbers: Seldon's wrapper hands it to the
#: model as it is, and answers what the model returns as ``data`` (a tensor when it is numeric).
JSON_ARRAY = "jsonData array"


def _numeric_array(value: Any) -> Optional[np.ndarray]:
    """``value`` as an array when it is a list of numbers, or rows of them; else None."""
    if not isinstance(value, list) or not value:
        return None
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged
        return None
    return arr if arr.dtype.kind in "biuf" else None


def to_v2_request(doc: Any) -> Tuple[Dict[str, Any], str, List[str]]:
    """(V2 request document, kind, column names) for a Seldon v1 request body."""
    if not isinstance(doc, dict):
        raise InvalidRequest(
            "the Seldon request must be a JSON object with 'data', 'strData', 'jsonData' or 'binData'"
        )
    meta = doc.get("meta") or {}
    request_id = meta.get("puid") if isinstance(meta, dict) else None
    v2: Dict[str, Any] = {"id": request_id} if isinstance(request_id, str) else {}
    if "data" in doc:
        arr, kind, names = data_array(doc)
        v2["inputs"] = [_tensor_input(arr)]
        return v2, kind, names
    if "strData" in doc:
        v2["inputs"] = [
            {
                "name": "input",
                "shape": [1],
                "datatype": "BYTES",
                "data": [str(doc["strData"])],
                "parameters": {"content_type": "str"},
            }
        ]
        return v2, "strData", []
    if "jsonData" in doc:
        matrix = _numeric_array(doc["jsonData"])
        if matrix is not None:  # rows of numbers: the model gets them as Seldon's wrapper hands them over
            v2["inputs"] = [_tensor_input(matrix)]
            return v2, JSON_ARRAY, []
        v2["inputs"] = [
            {
                "name": "input",
                "shape": [1],
                "datatype": "BYTES",
                "data": [json.dumps(doc["jsonData"])],
                "parameters": {"content_type": "str"},
            }
        ]
        return v2, "jsonData", []
    if "binData" in doc:
        try:
            base64.b64decode(str(doc["binData"]), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("binData is not valid base64") from None
        v2["inputs"] = [
            {
                "name": "input",
                "shape": [1],
                "datatype": "BYTES",
                "data": [str(doc["binData"])],
                "parameters": {"content_type": "base64"},
            }
        ]
        return v2, "binData", []
    raise InvalidRequest("the Seldon request needs one of 'data', 'strData', 'jsonData', 'binData'")


def _array(out: Any) -> np.ndarray:
    data = out.data
    if out.datatype == "BYTES":
        strings = np.asarray(
            [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in data.ravel().tolist()],
            dtype=object,
        )
        return shaped(strings, out.shape)
    return shaped(np.asarray(data), out.shape)


def response_meta(request_meta: Any, request_path: Dict[str, str]) -> Dict[str, Any]:
    """The ``meta`` of an answer, as Seldon's wrapper makes it: the request's ``puid`` and ``tags``
    passed through, and ``requestPath`` (this unit's name -> its image)."""
    meta: Dict[str, Any] = {}
    if isinstance(request_meta, dict):
        tags = request_meta.get("tags")
        if isinstance(tags, dict) and tags:
            meta["tags"] = tags
        puid = request_meta.get("puid")
        if isinstance(puid, str) and puid:
            meta["puid"] = puid
    if request_path:
        meta["requestPath"] = dict(request_path)
    return meta


def to_seldon_response(response: InferenceResponse, kind: str, meta: Dict[str, Any]) -> Dict[str, Any]:
    outputs = response.outputs
    if not outputs:
        raise InvalidRequest("the model produced no output")
    first = _array(outputs[0])
    if kind in ("strData", "binData"):
        raw = outputs[0].data.ravel().tolist()
        value = raw[0] if raw else b""
        if kind == "binData":
            if not isinstance(value, bytes):
                value = str(value).encode("utf-8")
            return {"meta": meta, "binData": base64.b64encode(value).decode("ascii")}
        return {
            "meta": meta,
            "strData": value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value),
        }
    if kind == "jsonData":
        value = first.ravel().tolist()[0] if first.size == 1 else first.tolist()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        return {"meta": meta, "jsonData": value}
    if len(outputs) > 1:  # several outputs: side by side as columns
        arrays = [
            _array(o).reshape(len(_array(o)), -1) if _array(o).ndim else _array(o).reshape(1, 1)
            for o in outputs
        ]
        first = (
            np.concatenate(arrays, axis=1) if all(a.shape[0] == arrays[0].shape[0] for a in arrays) else first
        )
        names = [o.name for o in outputs]
    else:
        names = ["t:%d" % i for i in range(first.shape[1])] if first.ndim == 2 else []
    if kind == JSON_ARRAY:  # no 'data' in the request: numbers answer as a tensor, anything else an ndarray
        kind = "tensor" if first.dtype.kind in "biuf" else "ndarray"
    if kind == "tensor":
        values = first.astype(np.float64) if first.dtype != object else first
        data: Dict[str, Any] = {
            "names": names,
            "tensor": {"shape": list(first.shape), "values": values.ravel().tolist()},
        }
    else:
        data = {"names": names, "ndarray": first.tolist()}
    return {"meta": meta, "data": data}


def error_body(status: int, message: str) -> Dict[str, Any]:
    reason = "MICROSERVICE_BAD_DATA" if 400 <= status < 500 else "MICROSERVICE_INTERNAL_ERROR"
    return {"status": {"code": status, "info": message, "reason": reason, "status": "FAILURE"}}
