"""``decode_args``: a predict written with typed arguments, decoded and encoded by the type hints."""

import functools
import typing
from typing import Any, Callable, Dict, List, Optional, Tuple, Union, get_type_hints

from ..types import InferenceRequest, InferenceResponse, ResponseOutput
from .base import InputCodec, RequestCodec, find_input_codec, find_request_codec
from .errors import CodecNotFound, InputsNotFound, OutputNotFound


def get_origin(tp: Any) -> Any:
    """typing.get_origin (3.8+), or its attribute on older Pythons."""
    fn = getattr(typing, "get_origin", None)
    return fn(tp) if fn is not None else getattr(tp, "__origin__", None)


def get_args(tp: Any) -> Any:
    fn = getattr(typing, "get_args", None)
    return fn(tp) if fn is not None else getattr(tp, "__args__", ())


__all__ = ["SignatureCodec", "decode_args"]


def _as_list(a: Any) -> List[Any]:
    if a is None:
        return []
    if isinstance(a, tuple):
        return list(a)
    if get_origin(a) in (tuple, Tuple):
        return list(get_args(a))
    return [a]


def _unwrap_optional(t: Any) -> Any:
    if get_origin(t) is Union:
        args = [a for a in get_args(t) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return t


def _is(codec: Any, base: type) -> bool:
    return (isinstance(codec, type) and issubclass(codec, base)) or isinstance(codec, base)


class SignatureCodec(RequestCodec):
    """Maps a predict's type hints to codecs, as MLServer's does."""

    def __init__(self, predict: Callable[..., Any]) -> None:
        hints = {k: _unwrap_optional(v) for k, v in get_type_hints(predict).items()}
        self._output_hints = _as_list(hints.pop("return", None))
        self._input_codecs: Dict[str, Any] = {
            name: self._find(name, hint, True) for name, hint in hints.items()
        }
        self._output_codecs = [self._find(None, hint, False) for hint in self._output_hints]

    @staticmethod
    def _find(name: Optional[str], hint: Any, is_input: bool) -> Any:
        codec = find_input_codec(type_hint=hint) or find_request_codec(type_hint=hint)
        if codec is None:
            raise CodecNotFound(name=name, payload_type=str(hint), is_input=is_input)
        return codec

    def decode_request(self, request: InferenceRequest) -> Dict[str, Any]:  # type: ignore[override]
        inputs: Dict[str, Any] = {}
        extra = []
        for request_input in request.inputs:
            codec = self._input_codecs.get(request_input.name)
            if codec is None:
                extra.append(request_input)
                continue
            if not _is(codec, InputCodec):
                raise CodecNotFound(name=request_input.name, is_input=True)
            inputs[request_input.name] = codec.decode_input(request_input)
        if extra:
            found = [(n, c) for n, c in self._input_codecs.items() if _is(c, RequestCodec)]
            if not found:
                raise InputsNotFound(extra, self._input_codecs)
            name, codec = found[0]
            inputs[name] = codec.decode_request(InferenceRequest(inputs=extra))
        return inputs

    def encode_response(  # type: ignore[override]
        self, model_name: str, payload: Any, model_version: Optional[str] = None, **kwargs: Any
    ) -> InferenceResponse:
        outputs: List[ResponseOutput] = []
        for idx, item in enumerate(_as_list(payload)):
            if idx >= len(self._output_codecs):
                raise OutputNotFound(idx, type(item), self._output_hints)
            codec = self._output_codecs[idx]
            if not codec.can_encode(item):
                raise OutputNotFound(idx, type(item), self._output_hints)
            if _is(codec, InputCodec):
                outputs.append(codec.encode_output(name="output-%d" % idx, payload=item))
            else:
                outputs.extend(codec.encode_response(model_name="", payload=item).outputs)
        return InferenceResponse(model_name=model_name, model_version=model_version, outputs=outputs)


def decode_args(predict: Callable[..., Any]) -> Callable[..., Any]:
    codec = SignatureCodec(predict)

    @functools.wraps(predict)
    async def wrapper(self: Any, request: InferenceRequest) -> InferenceResponse:
        inputs = codec.decode_request(request)
        outputs = await predict(self, **inputs)
        return codec.encode_response(model_name=self.name, payload=outputs, model_version=self.version)

    return wrapper
