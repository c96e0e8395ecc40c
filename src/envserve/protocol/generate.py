"""The generate extension of the Open Inference Protocol (``/generate``, ``/generate_stream``), as Triton and
KServe define it: a flat JSON object whose keys name the model's inputs (``{"text_input": "Hello",
"max_tokens": 16}``) and whose ``parameters`` are the request's; the answer names the model's outputs the
same way (``{"model_name", "model_version", "text_output": "..."}``). MLServer's clients send a V2 request
to the same routes instead; :func:`is_generate` tells them apart (a V2 request has ``inputs``).

Worker import closure rules apply (stdlib + numpy, Python 3.6+), though only the server uses it.
"""

from typing import Any, Dict, List

import numpy as np

from ..errors import InvalidRequest
from .v2 import InferenceResponse, shaped

__all__ = ["from_generate", "is_generate", "to_generate"]


def is_generate(doc: Any) -> bool:
    """Whether a body is the generate extension's (not a V2 request: no ``inputs`` list)."""
    return isinstance(doc, dict) and not isinstance(doc.get("inputs"), list)


def _input(name: str, value: Any) -> Dict[str, Any]:
    where = "field %r" % name
    values = value if isinstance(value, list) else [value]
    if not values:
        raise InvalidRequest("%s is an empty list: send at least one value" % where)
    if all(isinstance(v, str) for v in values):
        return {"name": name, "shape": [len(values)], "datatype": "BYTES", "data": values}
    if all(isinstance(v, bool) for v in values):
        return {"name": name, "shape": [len(values)], "datatype": "BOOL", "data": values}
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return {"name": name, "shape": [len(values)], "datatype": "INT64", "data": values}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return {"name": name, "shape": [len(values)], "datatype": "FP64", "data": values}
    raise InvalidRequest("%s must be a string, a number, true/false, or a flat list of one of them" % where)


def from_generate(doc: Dict[str, Any]) -> Dict[str, Any]:
    """The V2 request document of a generate-extension body: one input per field, ``parameters`` as the
    request's parameters."""
    parameters = doc.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidRequest("'parameters' must be a JSON object")
    inputs: List[Dict[str, Any]] = [
        _input(str(k), v) for k, v in doc.items() if k not in ("parameters", "id")
    ]
    if not inputs:
        raise InvalidRequest('the generate request names no input: send fields such as "text_input"')
    v2: Dict[str, Any] = {"inputs": inputs}
    if parameters:
        v2["parameters"] = parameters
    if isinstance(doc.get("id"), str):
        v2["id"] = doc["id"]
    return v2


def _value(data: np.ndarray, shape: List[int], datatype: str) -> Any:
    values = shaped(data, shape).ravel().tolist()
    if datatype == "BYTES":
        values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]
    return values[0] if len(values) == 1 else values


def to_generate(response: InferenceResponse) -> Dict[str, Any]:
    """A V2 answer as the generate extension's: one field per output (a single value as itself)."""
    doc: Dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version or ""}
    for out in response.outputs:
        doc[out.name] = _value(out.data, out.shape, out.datatype)
    if response.id:
        doc["id"] = response.id
    return doc
