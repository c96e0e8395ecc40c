"""``StringCodec`` / ``StringRequestCodec``: BYTES as ``str`` (UTF-8)."""

from typing import Any, List

from ..types import ResponseOutput
from .base import InputCodec, register_input_codec, register_request_codec
from .lists import is_list_of
from .utils import SingleInputRequestCodec, bytes_output

__all__ = ["StringCodec", "StringRequestCodec", "decode_str", "encode_str"]


def encode_str(elem: str) -> bytes:
    return elem.encode("utf-8")


def decode_str(encoded: Any, str_codec: str = "utf-8") -> Any:
    if encoded is None:
        return None
    if isinstance(encoded, bytes):
        return encoded.decode(str_codec)
    if isinstance(encoded, str):
        return encoded
    return ""


@register_input_codec
class StringCodec(InputCodec):
    ContentType = "str"
    TypeHint = List[str]

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        return is_list_of(payload, str)

    @classmethod
    def encode_output(cls, name: str, payload: Any, use_bytes: bool = True, **kwargs: Any) -> ResponseOutput:
        data = [encode_str(v) if use_bytes else v for v in payload]
        return bytes_output(name, data, cls.ContentType)

    @classmethod
    def decode_input(cls, request_input: Any) -> List[str]:
        return [decode_str(v) for v in request_input.data]


@register_request_codec
class StringRequestCodec(SingleInputRequestCodec):
    InputCodec = StringCodec
    ContentType = StringCodec.ContentType
    TypeHint = List[str]
