from typing import Any, Optional

from ..errors import MLServerError

__all__ = ["CodecError", "CodecNotFound", "InputsNotFound", "OutputNotFound"]


class CodecError(MLServerError):
    def __init__(self, msg: str) -> None:
        super().__init__(msg, 400)


class CodecNotFound(MLServerError):
    def __init__(
        self,
        name: Optional[str] = None,
        payload_type: Optional[str] = None,
        is_input: bool = False,
        is_request: bool = False,
    ) -> None:
        what = "request" if is_request else ("input" if is_input else "output")
        msg = "No codec found for %s" % what
        if name:
            msg += " %r" % name
        if payload_type:
            msg += " with payload type %s" % payload_type
        super().__init__(msg, 400 if is_input else 500)


class InputsNotFound(MLServerError):
    def __init__(self, inputs: Any, codecs: Any) -> None:
        names = ", ".join(repr(getattr(i, "name", i)) for i in inputs)
        super().__init__("Input(s) %s have no matching argument among %s" % (names, sorted(codecs)), 400)


class OutputNotFound(MLServerError):
    def __init__(self, index: int, output_type: Any, hints: Any) -> None:
        super().__init__(
            "Output %d (%s) has no matching return type hint in %s" % (index, output_type, hints), 500
        )
