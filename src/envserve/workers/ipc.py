"""The messages between the server and its worker processes (both sides; worker closure, py3.6+).

Each message is one frame of :mod:`.link`: the header holds the operation and the tensors' names,
datatypes, shapes and where their bytes are; the body the tensors' raw bytes, concatenated. numpy buffers
travel as they are (no JSON, no base64): numeric tensors in native C order, BYTES tensors as
``<u32 length><bytes>`` per element.

The operations (a header's ``op``) are :class:`Op`'s: ``hello``/``load``/``loaded`` at start,
``infer``/``result``/``error`` per call, ``stream``/``more``/``end``/``cancel`` and ``chunk``/``done``
for a stream, ``ping``/``pong`` while idle, ``stop``. A request's
:class:`~envserve.protocol.envelope.Passthrough` and a response's
:class:`~envserve.protocol.envelope.Report` travel as header fields of their own, never in the V2
``parameters``.
"""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import errors as _errors
from ..protocol.binary import tensor_bytes, tensor_from_bytes
from ..protocol.envelope import Passthrough, Report
from ..protocol.v2 import InferenceRequest, InferenceResponse, RequestInput, RequestOutput, ResponseOutput
from .link import _dumps, encode_frame

__all__ = [
    "OUTPUT_TAG",
    "Op",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "error_from_wire",
    "error_to_wire",
]

#: How a worker marks an output line it wrote while answering a call: ``<TAG><request id><TAG><line>``
#: (ASCII record separators, which log lines do not contain); the server strips the mark and tags its
#: log record with the id.
OUTPUT_TAG = "\x1e"


class Op:
    """The operations of the worker protocol (a frame header's ``op``), in the order a worker meets them."""

    HELLO = "hello"  # worker -> server, once connected: its index, pid and Python
    LOAD = "load"  # server -> worker: the model's settings
    LOADED = "loaded"  # worker -> server: ok with metadata and capabilities, or the error
    INFER = "infer"  # server -> worker: one call
    RESULT = "result"  # worker -> server: the call's response
    ERROR = "error"  # worker -> server: the call's error
    PING = "ping"  # server -> idle worker
    PONG = "pong"  # worker -> server
    STOP = "stop"  # server -> worker: finish and exit
    # a stream: its first request, then more of them and their end (the client's half-close), or a cancel
    # (the client left); the worker answers chunks, then done (or error)
    STREAM = "stream"  # server -> worker
    MORE = "more"  # server -> worker
    END = "end"  # server -> worker
    CANCEL = "cancel"  # server -> worker
    CHUNK = "chunk"  # worker -> server
    DONE = "done"  # worker -> server


# -- tensors ------------------------------------------------------------------------------------------------


def _pack_tensors(tensors: Sequence[Any]) -> Tuple[List[Dict[str, Any]], List[Any]]:
    described, buffers = [], []
    offset = 0
    for t in tensors:
        buf = tensor_bytes(t.data, t.datatype)
        nbytes = memoryview(buf).nbytes
        described.append(
            {
                "name": t.name,
                "shape": list(t.shape),
                "datatype": t.datatype,
                "parameters": t.parameters,
                "buf": [offset, nbytes],
            }
        )
        buffers.append(buf)
        offset += nbytes
    return described, buffers


# -- requests and responses ---------------------------------------------------------------------------------


def encode_request(
    call_id: int,
    request: InferenceRequest,
    dumps: Callable[[Dict[str, Any]], bytes] = _dumps,
    request_id: str = "",
    op: str = Op.INFER,
) -> List[Any]:
    """``request_id``: the server's id of the request(s) this call answers; the worker tags the lines
    it writes meanwhile with it. ``op``: :data:`Op.INFER`, or :data:`Op.STREAM` / :data:`Op.MORE` for the
    requests of a stream."""
    inputs, buffers = _pack_tensors(request.inputs)
    doc = {
        "id": request.id,
        "parameters": request.parameters,
        "outputs": [{"name": o.name, "parameters": o.parameters} for o in request.outputs],
        "inputs": inputs,
    }
    if request.passthrough is not None:
        doc["passthrough"] = request.passthrough.to_wire()
    header = {"op": op, "id": call_id, "rid": request_id, "request": doc}
    return encode_frame(header, buffers, dumps)


def _unpack_tensors(described: List[Dict[str, Any]], body: Any, cls: Any) -> List[Any]:
    """The inverse of :func:`_pack_tensors`: ``cls(name, shape, datatype, data, parameters)`` each."""
    return [
        cls(
            t["name"],
            t["shape"],
            t["datatype"],
            tensor_from_bytes(
                body, t["buf"][0], t["buf"][1], t["shape"], t["datatype"], t["name"], loose_bytes=True
            ),
            t["parameters"],
        )
        for t in described
    ]


def decode_request(header: Dict[str, Any], body: Any) -> InferenceRequest:
    doc = header["request"]
    inputs = _unpack_tensors(doc["inputs"], body, RequestInput)
    outputs = [RequestOutput(o["name"], o["parameters"]) for o in doc["outputs"]]
    passthrough = Passthrough.from_wire(doc.get("passthrough"))
    return InferenceRequest(inputs, doc["id"], doc["parameters"], outputs, passthrough)


def encode_response(call_id: int, response: InferenceResponse, op: str = Op.RESULT) -> List[Any]:
    """``op``: :data:`Op.RESULT`, or :data:`Op.CHUNK` for one answer of a stream."""
    outputs, buffers = _pack_tensors(response.outputs)
    header = {
        "op": op,
        "id": call_id,
        "response": {
            "model_name": response.model_name,
            "model_version": response.model_version,
            "id": response.id,
            "parameters": response.parameters,
            "outputs": outputs,
            "report": response.report.to_wire(),
        },
    }
    return encode_frame(header, buffers)


def decode_response(header: Dict[str, Any], body: Any) -> InferenceResponse:
    doc = header["response"]
    outputs = _unpack_tensors(doc["outputs"], body, ResponseOutput)
    response = InferenceResponse(
        doc["model_name"], outputs, doc["model_version"], doc["id"], doc["parameters"]
    )
    response.report = Report.from_wire(doc.get("report"))
    return response


# -- errors -------------------------------------------------------------------------------------------------


def error_to_wire(exc: BaseException) -> Dict[str, Any]:
    if isinstance(exc, _errors.EnvserveError):
        return {"kind": type(exc).__name__, "error": exc.message}
    return {"kind": "InferenceError", "error": "%s: %s" % (type(exc).__name__, exc)}


def error_from_wire(doc: Dict[str, Any], model: Optional[str] = None) -> _errors.EnvserveError:
    cls = getattr(_errors, str(doc.get("kind")), None)
    if not (isinstance(cls, type) and issubclass(cls, _errors.EnvserveError)):
        cls = _errors.InferenceError
    return cls(str(doc.get("error", "the worker failed without a message")), model=model)
