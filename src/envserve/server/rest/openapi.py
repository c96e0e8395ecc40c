"""The OpenAPI 3 document of the REST data plane (MLServer's ``/v2/docs/dataplane.json``), and one per
model whose schemas name that model's own inputs and outputs (``/v2/models/{name}/docs/dataplane.json``).

Written from the Open Inference Protocol's REST specification and from what envserve answers: every
status an operation can return is listed with its body, so a client generated from the document (or a
property-based tester such as schemathesis) finds no undocumented answer.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

from ...protocol.datatypes import DATATYPES

__all__ = ["dataplane", "for_model"]

_JSON = "application/json"


def _ref(name: str) -> Dict[str, str]:
    return {"$ref": "#/components/schemas/%s" % name}


def _error(description: str) -> Dict[str, Any]:
    return {
        "description": description,
        "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}},
        "content": {_JSON: {"schema": _ref("Error")}},
    }


def _ok(schema: Dict[str, Any], description: str = "OK") -> Dict[str, Any]:
    return {
        "description": description,
        "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}},
        "content": {_JSON: {"schema": schema}},
    }


_PARAMETERS = {"type": "object", "description": "Free-form parameters (content_type, headers, ...)."}
_MODEL = {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
_VERSION = {
    "name": "model_version",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
}
_NO_MODEL = _error("No model of that name (or version) is served.")
_NOT_READY = _error("The model is loading, its worker restarting, or its queue full; retry (Retry-After).")
_METHOD = _error("The path exists for other methods (see the Allow header).")
_READY = {
    "type": "object",
    "required": ["ready"],
    "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
}


def _schemas() -> Dict[str, Any]:
    tensor_data = {
        "description": "The tensor's elements in row-major order, flat or nested by the shape; for BYTES, "
        "strings (or base64 with the binary extension).",
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
        "Parameters": _PARAMETERS,
        "ServerMetadataResponse": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "MetadataTensor": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "properties": {
                "name": {"type": "string"},
                "datatype": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer"}},
                "parameters": _ref("Parameters"),
            },
        },
        "MetadataModelResponse": {
            "type": "object",
            "required": ["name", "platform"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": _ref("MetadataTensor")},
                "outputs": {"type": "array", "items": _ref("MetadataTensor")},
                "parameters": _ref("Parameters"),
            },
        },
        "RequestInput": {
            "type": "object",
            "required": ["name", "shape", "datatype", "data"],
            "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "datatype": {"type": "string", "enum": list(DATATYPES)},
                "parameters": _ref("Parameters"),
                "data": tensor_data,
            },
        },
        "RequestOutput": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "parameters": _ref("Parameters")},
        },
        "InferenceRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": _ref("Parameters"),
                "inputs": {"type": "array", "items": _ref("RequestInput"), "minItems": 1},
                "outputs": {"type": "array", "items": _ref("RequestOutput")},
            },
        },
        "ResponseOutput": {
            "type": "object",
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer"}},
                "datatype": {"type": "string"},
                "parameters": _ref("Parameters"),
                "data": tensor_data,
            },
        },
        "InferenceResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": ["string", "null"]},
                "id": {"type": ["string", "null"]},
                "parameters": _ref("Parameters"),
                "outputs": {"type": "array", "items": _ref("ResponseOutput")},
            },
        },
        "RepositoryIndexRequest": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
        "RepositoryIndexResponse": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "state"],
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                    "state": {"type": "string"},
                    "reason": {"type": "string"},
                },
            },
        },
    }


def _infer(parameters: List[Dict[str, Any]], request: Dict[str, Any], summary: str) -> Dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "operationId": "infer" + ("_version" if len(parameters) > 1 else ""),
            "parameters": parameters,
            "requestBody": {"required": True, "content": {_JSON: {"schema": request}}},
            "responses": {
                "200": _ok(_ref("InferenceResponse"), "The model's outputs."),
                "400": _error("The request is malformed or does not fit the model (the message says why)."),
                "404": _NO_MODEL,
                "405": _METHOD,
                "413": _error("The body is larger than max_request_size."),
                "415": _error("A content type the server does not read."),
                "500": _error("The model itself failed on this request (its error, never a client mistake)."),
                "503": _NOT_READY,
                "504": _error("The model did not answer within inference_timeout."),
            },
        }
    }


def _metadata(parameters: List[Dict[str, Any]], suffix: str) -> Dict[str, Any]:
    return {
        "get": {
            "summary": "Model metadata",
            "operationId": "model_metadata" + suffix,
            "parameters": parameters,
            "responses": {
                "200": _ok(_ref("MetadataModelResponse")),
                "404": _NO_MODEL,
                "405": _METHOD,
                "503": _NOT_READY,
            },
        }
    }


def _ready(parameters: List[Dict[str, Any]], suffix: str) -> Dict[str, Any]:
    return {
        "get": {
            "summary": "Model readiness (200 ready, 400 not yet, as MLServer answers)",
            "operationId": "model_ready" + suffix,
            "parameters": parameters,
            "responses": {
                "200": _ok(_READY, "Ready."),
                "400": _ok(_READY, "Not ready yet."),
                "404": _NO_MODEL,
                "405": _METHOD,
            },
        }
    }


def dataplane(version: str) -> Dict[str, Any]:
    """The whole REST data plane: health, server and model metadata, readiness, inference, repository."""
    health = {
        "type": "object",
        "properties": {"live": {"type": "boolean"}, "ready": {"type": "boolean"}},
    }
    repository_call = {
        "post": {
            "summary": "",
            "parameters": [_MODEL],
            "requestBody": {"content": {_JSON: {"schema": {"type": "object"}}}},
            "responses": {
                "200": _ok({"type": "object"}, "Done."),
                "400": _error("The body is not JSON."),
                "401": _error("The admin token is required and was not sent."),
                "403": _error("A browser request from another origin."),
                "404": _NO_MODEL,
                "405": _METHOD,
                "500": _error("The model failed to load."),
                "503": _NOT_READY,
            },
        }
    }
    load = copy.deepcopy(repository_call)
    load["post"].update(summary="Load (or reload) a model", operationId="repository_load")
    unload = copy.deepcopy(repository_call)
    unload["post"].update(summary="Unload a model", operationId="repository_unload")
    paths = {
        "/v2/health/live": {
            "get": {
                "summary": "Server liveness",
                "operationId": "server_live",
                "responses": {"200": _ok(health), "400": _ok(health, "Not live."), "405": _METHOD},
            }
        },
        "/v2/health/ready": {
            "get": {
                "summary": "Server readiness (every model that loads at start is ready)",
                "operationId": "server_ready",
                "responses": {"200": _ok(health), "400": _ok(health, "Not ready yet."), "405": _METHOD},
            }
        },
        "/v2": {
            "get": {
                "summary": "Server metadata",
                "operationId": "server_metadata",
                "responses": {"200": _ok(_ref("ServerMetadataResponse")), "405": _METHOD},
            }
        },
        "/v2/models/{model_name}": _metadata([_MODEL], ""),
        "/v2/models/{model_name}/versions/{model_version}": _metadata([_MODEL, _VERSION], "_version"),
        "/v2/models/{model_name}/ready": _ready([_MODEL], ""),
        "/v2/models/{model_name}/versions/{model_version}/ready": _ready([_MODEL, _VERSION], "_version"),
        "/v2/models/{model_name}/infer": _infer([_MODEL], _ref("InferenceRequest"), "Inference"),
        "/v2/models/{model_name}/versions/{model_version}/infer": _infer(
            [_MODEL, _VERSION], _ref("InferenceRequest"), "Inference on one version"
        ),
        "/v2/repository/index": {
            "post": {
                "summary": "The models in the repository and their state",
                "operationId": "repository_index",
                "requestBody": {"content": {_JSON: {"schema": _ref("RepositoryIndexRequest")}}},
                "responses": {
                    "200": _ok(_ref("RepositoryIndexResponse")),
                    "400": _error("The body is not a JSON object."),
                    "405": _METHOD,
                },
            }
        },
        "/v2/repository/models/{model_name}/load": load,
        "/v2/repository/models/{model_name}/unload": unload,
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "envserve data plane (Open Inference Protocol V2, REST)",
            "version": version,
            "description": "The REST API of envserve's V2 data plane. Every response carries X-Request-Id; "
            'errors are {"error": "..."}.',
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "headers": {
                "RequestId": {
                    "description": "The request's id: the client's X-Request-Id when sane, else a new one.",
                    "schema": {"type": "string"},
                }
            },
        },
    }


def for_model(version: str, metadata: Dict[str, Any]) -> Dict[str, Any]:
    """The document of one model's operations, its request and response schemas naming the model's own
    inputs and outputs (names, datatypes, ranks from its metadata) when the metadata declares them."""
    name = str(metadata.get("name", ""))
    whole = dataplane(version)
    base = "/v2/models/{model_name}"
    paths = {}
    for path, item in whole["paths"].items():
        if not path.startswith(base) or "/versions/" in path:
            continue
        item = copy.deepcopy(item)
        for operation in item.values():
            operation["parameters"] = [
                p for p in operation.get("parameters", []) if p["name"] != "model_name"
            ]
            if not operation["parameters"]:
                del operation["parameters"]
        paths[path.replace(base, "/v2/models/" + name.replace("/", "%2F"))] = item
    inputs = metadata.get("inputs") or []
    schemas = whole["components"]["schemas"]
    infer = paths["/v2/models/%s/infer" % name.replace("/", "%2F")]["post"]
    if inputs:
        schemas["ModelInput"] = _declared(inputs, ["name", "shape", "datatype", "data"])
        request = copy.deepcopy(schemas["InferenceRequest"])
        request["properties"]["inputs"] = {
            "type": "array",
            "items": _ref("ModelInput"),
            "minItems": 1,
            "maxItems": len(inputs),
        }
        schemas["ModelInferenceRequest"] = request
        infer["requestBody"]["content"][_JSON]["schema"] = _ref("ModelInferenceRequest")
    outputs = metadata.get("outputs") or []
    if outputs:
        schemas["ModelOutput"] = _declared(outputs, ["name", "shape", "datatype"])
        response = copy.deepcopy(schemas["InferenceResponse"])
        response["properties"]["outputs"] = {"type": "array", "items": _ref("ModelOutput"), "minItems": 1}
        schemas["ModelInferenceResponse"] = response
        infer["responses"]["200"] = _ok(_ref("ModelInferenceResponse"), "The model's outputs.")
    whole["paths"] = paths
    whole["info"]["title"] = "envserve: model %s" % name
    return whole


def _declared(tensors: List[Dict[str, Any]], required: List[str]) -> Dict[str, Any]:
    """One of the model's declared inputs or outputs: its name, its datatype, its rank (an output may leave
    ``data`` out: its bytes travel after the JSON when asked for as binary)."""
    variants: List[Dict[str, Any]] = []
    for tensor in tensors:
        shape: Optional[List[Any]] = tensor.get("shape")
        dims: Dict[str, Any] = {"type": "array", "items": {"type": "integer", "minimum": 0}}
        if isinstance(shape, list):
            dims.update(minItems=len(shape), maxItems=len(shape))
        variants.append(
            {
                "type": "object",
                "required": required,
                "properties": {
                    "name": {"const": tensor.get("name")},
                    "datatype": {"const": tensor.get("datatype")},
                    "shape": dims,
                    "parameters": _ref("Parameters"),
                    "data": {"description": "The tensor's elements, row-major."},
                },
            }
        )
    return {"oneOf": variants} if len(variants) > 1 else variants[0]
