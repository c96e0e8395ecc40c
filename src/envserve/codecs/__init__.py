"""Codecs: V2 tensors <-> numpy arrays, lists of str/bytes and pandas DataFrames.

Content types use MLServer's names: ``np``, ``str``, ``base64`` per input, and ``pd`` (or ``np``) per
request. The content type of an input comes from, in order: the input's own ``parameters.content_type``,
the model's input metadata, the request's ``parameters.content_type`` (when it names an input codec), the
model's default ``parameters.content_type``.

Worker import closure: standard library and numpy (pandas lazily), Python 3.6+.
"""

from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from ..errors import InvalidRequest, UnknownContentType
from ..protocol.v2 import InferenceRequest, RequestInput, ResponseOutput
from .tensor import decode_base64, decode_numpy, decode_str, encode_array, encode_base64, encode_str

__all__ = [
    "INPUT_CODECS",
    "REQUEST_CODECS",
    "decode_input",
    "decode_request",
    "encode_outputs",
    "input_content_types",
]

INPUT_CODECS: Dict[str, Callable[[RequestInput], Any]] = {
    "np": decode_numpy,
    "str": decode_str,
    "base64": decode_base64,
}
_OUTPUT_ENCODERS: Dict[str, Callable[[str, Any], ResponseOutput]] = {
    "np": encode_array,
    "str": encode_str,
    "base64": encode_base64,
}
REQUEST_CODECS = ("np", "pd")
_ALL = sorted(set(INPUT_CODECS) | set(REQUEST_CODECS))


def _check(content_type: Optional[str], where: str) -> None:
    if content_type is not None and content_type not in INPUT_CODECS and content_type not in REQUEST_CODECS:
        raise UnknownContentType(
            "%s has unknown content type %r; known content types are %s"
            % (where, content_type, ", ".join(_ALL))
        )


def input_content_types(
    request: InferenceRequest,
    metadata: Mapping[str, Optional[str]],
    model_default: Optional[str] = None,
) -> Dict[str, Optional[str]]:
    """The effective content type of each input, validated."""
    request_ct = request.content_type
    _check(request_ct, "the request")
    fallback = request_ct if request_ct in INPUT_CODECS else model_default
    result = {}
    for inp in request.inputs:
        ct = inp.content_type or metadata.get(inp.name) or fallback
        _check(ct, "input %r" % inp.name)
        result[inp.name] = ct
    return result


def decode_input(inp: RequestInput, content_type: Optional[str]) -> Any:
    if content_type is None or content_type == "pd":
        return inp.data
    return INPUT_CODECS[content_type](inp)


def decode_request(
    request: InferenceRequest,
    content_types: Mapping[str, Optional[str]],
    model_default: Optional[str] = None,
) -> Any:
    """The whole request as one value: a DataFrame for ``pd``, otherwise the single input decoded."""
    request_ct = request.content_type or (model_default if model_default in REQUEST_CODECS else None)
    if request_ct == "pd":
        from .pandas import decode_dataframe

        return decode_dataframe(request, dict(content_types))
    if len(request.inputs) != 1:
        raise InvalidRequest(
            "this model takes one input, but the request has %d (%s); send one input, or set the request's "
            "parameters.content_type to 'pd' to pass them as DataFrame columns"
            % (len(request.inputs), ", ".join(repr(i.name) for i in request.inputs))
        )
    inp = request.inputs[0]
    return decode_input(inp, content_types.get(inp.name))


def encode_outputs(value: Any, default_name: str, content_type: Optional[str] = None) -> List[ResponseOutput]:
    """Encode what a model returned: a mapping name -> value, a DataFrame, or one array-like."""
    if isinstance(value, ResponseOutput):
        return [value]
    if isinstance(value, Mapping):
        return [_encode_one(str(k), v, None) for k, v in value.items()]
    if type(value).__name__ == "DataFrame" and hasattr(value, "columns"):
        from .pandas import encode_dataframe

        return encode_dataframe(value)
    return [_encode_one(default_name, value, content_type)]


def _encode_one(name: str, value: Any, content_type: Optional[str]) -> ResponseOutput:
    if isinstance(value, ResponseOutput):
        return value
    if content_type in _OUTPUT_ENCODERS:
        return _OUTPUT_ENCODERS[content_type](name, value)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
        return encode_str(name, value)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], bytes):
        raw = np.empty(len(value), dtype=object)  # not np.asarray: "S" arrays drop trailing NUL bytes
        raw[:] = list(value)
        return ResponseOutput(name, [len(value)], "BYTES", raw)
    if isinstance(value, np.ndarray) or not isinstance(value, (bytes, str)):
        return encode_array(name, value)
    return encode_str(name, [value])
