"""Codec bases and the registry (``mlserver.codecs.base``)."""

from typing import Any, Dict, Optional, Type, Union

from ..types import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput

__all__ = [
    "InputCodec",
    "InputCodecLike",
    "RequestCodec",
    "RequestCodecLike",
    "find_input_codec",
    "find_request_codec",
    "register_input_codec",
    "register_request_codec",
]


class InputCodec:
    ContentType: Optional[str] = None
    TypeHint: Any = None

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        return False

    @classmethod
    def encode_output(cls, name: str, payload: Any, **kwargs: Any) -> ResponseOutput:
        raise NotImplementedError()

    encode = encode_output

    @classmethod
    def decode_output(cls, response_output: ResponseOutput) -> Any:
        return cls.decode_input(response_output)

    @classmethod
    def encode_input(cls, name: str, payload: Any, **kwargs: Any) -> RequestInput:
        out = cls.encode_output(name, payload, **kwargs)
        return RequestInput(
            name=out.name, shape=out.shape, datatype=out.datatype, data=out.data, parameters=out.parameters
        )

    @classmethod
    def decode_input(cls, request_input: RequestInput) -> Any:
        raise NotImplementedError()

    decode = decode_input


class RequestCodec:
    ContentType: Optional[str] = None
    TypeHint: Any = None

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        return False

    @classmethod
    def encode_response(
        cls, model_name: str, payload: Any, model_version: Optional[str] = None, **kwargs: Any
    ) -> InferenceResponse:
        raise NotImplementedError()

    encode = encode_response

    @classmethod
    def decode_response(cls, response: InferenceResponse) -> Any:
        raise NotImplementedError()

    @classmethod
    def encode_request(cls, payload: Any, **kwargs: Any) -> InferenceRequest:
        raise NotImplementedError()

    @classmethod
    def decode_request(cls, request: InferenceRequest) -> Any:
        raise NotImplementedError()

    decode = decode_request


InputCodecLike = Union[Type[InputCodec], InputCodec]
RequestCodecLike = Union[Type[RequestCodec], RequestCodec]

_INPUT: Dict[str, Any] = {}
_REQUEST: Dict[str, Any] = {}


def _register(table: Dict[str, Any], content_type: Any, codec: Any = None) -> Any:
    if codec is None and not isinstance(content_type, str):  # used as a bare decorator
        codec = content_type
        table[codec.ContentType] = codec
        return codec
    if codec is None:
        return lambda c: _register(table, content_type, c)
    table[content_type] = codec
    return codec


def register_input_codec(content_type: Any, codec: Any = None) -> Any:
    return _register(_INPUT, content_type, codec)


def register_request_codec(content_type: Any, codec: Any = None) -> Any:
    return _register(_REQUEST, content_type, codec)


def _find(table: Dict[str, Any], content_type: Optional[str], payload: Any, type_hint: Any) -> Any:
    if content_type is not None:
        return table.get(content_type)
    for codec in reversed(list(table.values())):
        if type_hint is not None and codec.TypeHint == type_hint:
            return codec
        if payload is not None and codec.can_encode(payload):
            return codec
    return None


def find_input_codec(content_type: Optional[str] = None, payload: Any = None, type_hint: Any = None) -> Any:
    return _find(_INPUT, content_type, payload, type_hint)


def find_request_codec(content_type: Optional[str] = None, payload: Any = None, type_hint: Any = None) -> Any:
    return _find(_REQUEST, content_type, payload, type_hint)
