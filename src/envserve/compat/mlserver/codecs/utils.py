"""Codec helpers (``mlserver.codecs.utils``)."""

from typing import Any, Dict, List, Optional, Union

from ..types import (
    Datatype,
    InferenceRequest,
    InferenceResponse,
    MetadataTensor,
    Parameters,
    RequestInput,
    RequestOutput,
    ResponseOutput,
    TensorData,
)
from .base import RequestCodec, find_input_codec, find_request_codec

__all__ = [
    "DecodedParameterName",
    "SingleInputRequestCodec",
    "decode_inference_request",
    "decode_request_input",
    "encode_inference_response",
    "encode_response_output",
    "get_decoded",
    "get_decoded_or_raw",
    "has_decoded",
    "inject_batch_dimension",
]

DecodedParameterName = "_decoded_payload"
InputOrOutput = Union[RequestInput, ResponseOutput]


def bytes_output(name: str, data: List[Any], content_type: str) -> ResponseOutput:
    """A BYTES output of one element per row (``[N, 1]``), as MLServer's string-like codecs encode."""
    return ResponseOutput(
        name=name,
        datatype=Datatype.BYTES,
        shape=[len(data), 1],
        data=TensorData(data),
        parameters=Parameters(content_type=content_type),
    )


def inject_batch_dimension(shape: List[int]) -> List[int]:
    """MLServer's rule: a one-dimensional ``[N]`` is ``[N, 1]``."""
    return shape if len(shape) > 1 else shape + [1]


def _parameters(item: Any) -> Parameters:
    if item.parameters is None:
        item.parameters = Parameters()
    parameters: Parameters = item.parameters
    return parameters


def has_decoded(item: Any) -> bool:
    return item.parameters is not None and hasattr(item.parameters, DecodedParameterName)


def get_decoded(item: Any) -> Any:
    return getattr(item.parameters, DecodedParameterName)


def get_decoded_or_raw(item: Any) -> Any:
    if has_decoded(item):
        return get_decoded(item)
    if isinstance(item, RequestInput):
        return item.data
    return item


def _save(item: Any, value: Any) -> None:
    setattr(_parameters(item), DecodedParameterName, value)


def decode_request_input(request_input: RequestInput, metadata_inputs: Dict[str, MetadataTensor]) -> Any:
    content_type = request_input.parameters.content_type if request_input.parameters else None
    if content_type is None:
        meta = metadata_inputs.get(request_input.name)
        if meta is not None and meta.parameters is not None:
            content_type = meta.parameters.content_type
    codec = find_input_codec(content_type=content_type) if content_type else None
    if codec is None:
        return None
    value = codec.decode_input(request_input)
    _save(request_input, value)
    return value


def decode_inference_request(
    request: InferenceRequest,
    model_settings: Any = None,
    metadata_inputs: Optional[Dict[str, MetadataTensor]] = None,
) -> Any:
    for request_input in request.inputs:
        decode_request_input(request_input, metadata_inputs or {})
    content_type = request.parameters.content_type if request.parameters else None
    if content_type is None and model_settings is not None and model_settings.parameters is not None:
        content_type = model_settings.parameters.content_type
    codec = find_request_codec(content_type=content_type) if content_type else None
    if codec is None:
        return None
    value = codec.decode_request(request)
    _save(request, value)
    return value


def encode_response_output(
    payload: Any, request_output: RequestOutput, metadata_outputs: Optional[Dict[str, MetadataTensor]] = None
) -> Optional[ResponseOutput]:
    content_type = request_output.parameters.content_type if request_output.parameters else None
    if content_type is None and metadata_outputs:
        meta = metadata_outputs.get(request_output.name)
        if meta is not None and meta.parameters is not None:
            content_type = meta.parameters.content_type
    codec = find_input_codec(content_type=content_type, payload=None if content_type else payload)
    if codec is None:
        return None
    output: ResponseOutput = codec.encode_output(request_output.name, payload)
    return output


def encode_inference_response(payload: Any, model_settings: Any) -> Optional[InferenceResponse]:
    codec = find_request_codec(payload=payload)
    if codec is None:
        return None
    version = model_settings.parameters.version if model_settings.parameters else None
    response: InferenceResponse = codec.encode_response(model_settings.name, payload, version)
    return response


class SingleInputRequestCodec(RequestCodec):
    """A request codec over one input codec: the request's only input decoded by it."""

    InputCodec: Any = None

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        return cls.InputCodec is not None and bool(cls.InputCodec.can_encode(payload))

    @classmethod
    def encode_response(
        cls, model_name: str, payload: Any, model_version: Optional[str] = None, **kwargs: Any
    ) -> InferenceResponse:
        output = cls.InputCodec.encode_output("output-1", payload, **kwargs)
        return InferenceResponse(
            model_name=model_name,
            model_version=model_version,
            parameters=Parameters(content_type=cls.ContentType),
            outputs=[output],
        )

    @classmethod
    def decode_response(cls, response: InferenceResponse) -> Any:
        return cls.InputCodec.decode_output(response.outputs[0])

    @classmethod
    def encode_request(cls, payload: Any, **kwargs: Any) -> InferenceRequest:
        inp = cls.InputCodec.encode_input("input-1", payload, **kwargs)
        return InferenceRequest(inputs=[inp], parameters=Parameters(content_type=cls.ContentType))

    @classmethod
    def decode_request(cls, request: InferenceRequest) -> Any:
        if len(request.inputs) != 1:
            from .errors import CodecError

            raise CodecError(
                "%s expects a single input, but the request has %d" % (cls.__name__, len(request.inputs))
            )
        return cls.InputCodec.decode_input(request.inputs[0])
