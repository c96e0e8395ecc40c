from typing import Any


def is_list_of(payload: Any, instance_type: Any) -> bool:
    return isinstance(payload, list) and all(isinstance(elem, instance_type) for elem in payload)
