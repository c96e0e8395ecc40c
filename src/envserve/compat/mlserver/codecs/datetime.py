"""``DatetimeCodec``: BYTES as ISO 8601 datetimes."""

from datetime import datetime
from typing import Any, List

from ..types import ResponseOutput
from .base import InputCodec, register_input_codec
from .lists import is_list_of
from .utils import bytes_output

__all__ = ["DatetimeCodec"]


@register_input_codec
class DatetimeCodec(InputCodec):
    ContentType = "datetime"
    TypeHint = List[datetime]

    @classmethod
    def can_encode(cls, payload: Any) -> bool:
        return is_list_of(payload, datetime)

    @classmethod
    def encode_output(cls, name: str, payload: Any, use_bytes: bool = True, **kwargs: Any) -> ResponseOutput:
        data = [v.isoformat().encode("utf-8") if use_bytes else v.isoformat() for v in payload]
        return bytes_output(name, data, cls.ContentType)

    @classmethod
    def decode_input(cls, request_input: Any) -> List[datetime]:
        return [
            datetime.fromisoformat(v.decode("utf-8") if isinstance(v, bytes) else v)
            for v in request_input.data
        ]
