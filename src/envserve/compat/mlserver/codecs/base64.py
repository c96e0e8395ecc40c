"""``Base64Codec``: BYTES as base64-encoded ``bytes``."""

import base64 as _b64
import binascii
from typing import Any, List

from ..types import ResponseOutput
from .base import InputCodec, register_input_codec
from .lists import is_list_of
from .utils import bytes_output

__all__ = ["Base64Codec"]


@register_input_codec
class Base64Codec(InputCodec):
    ContentType = "base64"
    TypeHint = List[bytes]

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        return is_list_of(payload, bytes)

    @classmethod
    def encode_output(cls, name: str, payload: Any, use_bytes: bool = True, **kwargs: Any) -> ResponseOutput:
        data = [_b64.b64encode(v) if use_bytes else _b64.b64encode(v).decode("ascii") for v in payload]
        return bytes_output(name, data, cls.ContentType)

    @classmethod
    def decode_input(cls, request_input: Any) -> List[bytes]:
        out = []
        for value in request_input.data:
            raw = value.encode("ascii") if isinstance(value, str) else value
            try:
                out.append(_b64.b64decode(raw, validate=True))
            except (binascii.Error, ValueError):
                out.append(raw)  # MLServer passes through what is not base64
        return out
