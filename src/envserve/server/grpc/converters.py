"""Protobuf <-> envserve protocol objects: the only module that knows the gRPC message types.

Inputs may come as ``raw_input_contents`` (index-aligned with the inputs, as tritonclient sends them)
or in the typed ``contents`` fields; outputs are returned as ``raw_output_contents`` (what Triton does),
or in ``contents`` when the request asked for no raw data (``parameters.raw_output = false``). Values are
checked exactly as REST checks JSON data: shapes against element counts, values against datatypes.
"""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from ...errors import InvalidRequest
from ...protocol.binary import tensor_bytes, tensor_from_bytes
from ...protocol.v2 import (
    NO_INPUTS,
    InferenceRequest,
    InferenceResponse,
    RequestInput,
    RequestOutput,
    array_from_data,
    parse_shape,
    shaped,
)
from .generated import inference_pb2 as pb

__all__ = ["index_to_proto", "metadata_to_proto", "request_from_proto", "response_to_proto"]

# datatype -> the InferTensorContents field that carries it (FP16 travels only as raw bytes)
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters_from_proto(params: Any) -> Dict[str, Any]:
    result = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        if which is not None:
            result[key] = getattr(value, which)
    return result


def parameters_to_proto(target: Any, params: Dict[str, Any]) -> None:
    for key, value in params.items():
        slot = target[key]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, int):
            if value < 0 or value < 2**63:
                slot.int64_param = value
            else:
                slot.uint64_param = value
        elif isinstance(value, float):
            slot.double_param = value
        else:
            slot.string_param = str(value)


def request_from_proto(message: pb.ModelInferRequest) -> InferenceRequest:
    if not message.inputs:
        raise InvalidRequest(NO_INPUTS)
    raw = list(message.raw_input_contents)
    if raw and len(raw) != len(message.inputs):
        raise InvalidRequest(
            "raw_input_contents has %d entries for %d inputs" % (len(raw), len(message.inputs))
        )
    inputs = []
    for i, tensor in enumerate(message.inputs):
        where = "input %r" % tensor.name
        shape = parse_shape(list(tensor.shape), where)
        params = parameters_from_proto(tensor.parameters)
        if raw:
            data = tensor_from_bytes(raw[i], 0, len(raw[i]), shape, tensor.datatype, where)
        else:
            field = _CONTENTS.get(tensor.datatype)
            if field is None:
                raise InvalidRequest(
                    "%s: datatype %r must be sent in raw_input_contents" % (where, tensor.datatype)
                )
            values = list(getattr(tensor.contents, field))
            if tensor.datatype == "BYTES":  # its strings, whatever the shape counts, as over REST (shaped)
                arr = np.empty(len(values), dtype=object)
                arr[:] = values
                data = shaped(arr, shape)
            else:
                data = array_from_data(values, shape, tensor.datatype, where)
        inputs.append(RequestInput(tensor.name, shape, tensor.datatype, data, params))
    outputs = [RequestOutput(o.name, parameters_from_proto(o.parameters)) for o in message.outputs]
    return InferenceRequest(inputs, message.id or None, parameters_from_proto(message.parameters), outputs)


def response_to_proto(response: InferenceResponse, raw: bool = True) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version or "", id=response.id or ""
    )
    parameters_to_proto(message.parameters, response.parameters)
    for out in response.outputs:
        tensor = message.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        parameters_to_proto(tensor.parameters, out.parameters)
        if raw or out.datatype not in _CONTENTS:
            message.raw_output_contents.append(bytes(tensor_bytes(out.data, out.datatype)))
        else:
            flat = out.data.ravel().tolist()
            if out.datatype == "BYTES":
                flat = [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in flat]
            getattr(tensor.contents, _CONTENTS[out.datatype]).extend(flat)
    return message


def metadata_to_proto(doc: Dict[str, Any]) -> pb.ModelMetadataResponse:
    message = pb.ModelMetadataResponse(
        name=doc["name"], versions=doc.get("versions", []), platform=doc.get("platform", "")
    )
    for key in ("inputs", "outputs"):
        for t in doc.get(key, []):
            getattr(message, key).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
    return message


def index_to_proto(rows: List[Dict[str, Any]]) -> pb.RepositoryIndexResponse:
    message = pb.RepositoryIndexResponse()
    for row in rows:
        message.models.add(
            name=row["name"],
            version=row.get("version") or "",
            state=row["state"],
            reason=row.get("reason", ""),
        )
    return message
