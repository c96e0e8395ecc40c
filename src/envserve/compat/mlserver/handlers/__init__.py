"""``mlserver.handlers.custom_handler``: marks a model method as the answer to an extra REST route."""

import inspect
from typing import Any, Callable, List, Tuple

from .._base import BaseModel

__all__ = ["CustomHandler", "custom_handler", "get_custom_handlers"]

_ATTR = "__custom_handler__"


class CustomHandler(BaseModel):
    _fields = {"rest_path": (..., None, False), "rest_method": ("POST", None, False)}


def custom_handler(rest_path: str, rest_method: str = "POST") -> Callable[[Any], Any]:
    def mark(method: Any) -> Any:
        setattr(method, _ATTR, CustomHandler(rest_path=rest_path, rest_method=rest_method))
        return method

    return mark


def get_custom_handlers(model: Any) -> List[Tuple[Any, Any]]:
    return [
        (getattr(member, _ATTR), member) for _, member in inspect.getmembers(model) if hasattr(member, _ATTR)
    ]
