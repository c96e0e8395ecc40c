"""KServe's V1 protocol (its default for many predictors): ``GET /v1/models``, ``GET /v1/models/{name}``
and ``POST /v1/models/{name}:predict`` with ``instances`` (or ``inputs``), answering ``predictions``;
``:explain`` answers 501. Over the same data plane: the rows become one V2 input (a DataFrame's columns
for rows that are JSON objects) and the model's first output becomes the predictions."""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from ...errors import InvalidRequest
from ...protocol.v2 import InferenceRequest, RequestInput, shaped
from ..call import Call
from ..dataplane import DataPlane
from .routing import HTTPError, Request, Response, json_response

__all__ = ["KServeV1Handlers"]

_VERBS = ("predict", "explain")


class KServeV1Handlers:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    async def models(self, request: Request, call: Call) -> Response:
        return json_response({"models": self.dp.model_names()})

    async def model(self, request: Request, call: Call) -> Response:
        """``{"name", "ready": true}``; a model not ready: 503 with an error, as KServe's server answers."""
        name = request.params["name"]
        if self.dp.model_ready(name):
            return json_response({"name": name, "ready": True})
        record = self.dp.model(name)
        raise HTTPError(
            503,
            "model %r is not ready: %s%s"
            % (name, record.state, ": %s" % record.reason if record.reason else ""),
        )

    async def call(self, request: Request, call: Call) -> Response:
        name, _, verb = request.params["name"].rpartition(":")
        if not name or verb not in _VERBS:
            raise HTTPError(
                404, "no route for POST %s; KServe V1 calls are /v1/models/NAME:predict" % request.path
            )
        if verb == "explain":
            self.dp.model_ready(name)  # an unknown model is still a 404
            raise HTTPError(
                501, "model %r has no explainer: KServe V1 :explain is not served by envserve" % name
            )
        doc = await request.json()
        if not isinstance(doc, dict):
            raise InvalidRequest('the body must be a JSON object with "instances" or "inputs"')
        rows = doc.get("instances", doc.get("inputs"))
        if not isinstance(rows, list):
            raise InvalidRequest('Expected "instances" or "inputs" to be a list')
        if not rows:
            raise InvalidRequest('"instances" is empty: send at least one row')
        response = await self.dp.infer(call, name, None, _v2_request(rows))
        if not response.outputs:
            raise InvalidRequest("model %r answered no output" % name)
        out = response.outputs[0]
        return json_response({"predictions": shaped(out.data, out.shape).tolist()})


def _v2_request(rows: List[Any]) -> InferenceRequest:
    """``instances`` as a V2 request: rows of JSON objects as DataFrame columns, anything else one tensor."""
    if all(isinstance(r, dict) for r in rows):
        keys: Dict[str, None] = {}  # the columns in the order they first appear
        for r in rows:
            keys.update(dict.fromkeys(r))
        inputs = [_input(key, [r.get(key) for r in rows]) for key in keys]
        return InferenceRequest(inputs, parameters={"content_type": "pd"})
    return InferenceRequest([_input("instances", rows)])


def _input(name: str, values: List[Any]) -> RequestInput:
    try:
        array = np.asarray(values)
    except ValueError as exc:  # ragged rows
        raise InvalidRequest("%r: the rows must all have the same shape (%s)" % (name, exc)) from None
    if array.dtype.kind in "US" or array.dtype == object:
        if array.dtype == object and any(isinstance(v, (list, dict)) for v in array.ravel()):
            raise InvalidRequest("%r: the rows must all have the same shape" % name)
        data = np.empty(array.shape, dtype=object)
        data[...] = np.vectorize(lambda v: str(v).encode("utf-8"), otypes=[object])(array)
        return RequestInput(name, list(array.shape), "BYTES", data, {"content_type": "str"})
    if array.dtype.kind == "b":
        return RequestInput(name, list(array.shape), "BOOL", array)
    if array.dtype.kind in "iu":
        return RequestInput(name, list(array.shape), "INT64", array.astype(np.int64))
    if array.dtype.kind == "f":
        return RequestInput(name, list(array.shape), "FP64", array.astype(np.float64))
    raise InvalidRequest("%r: values of type %s cannot be sent to a model" % (name, array.dtype))
