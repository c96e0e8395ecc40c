"""A small stand-in for the pydantic models MLServer's types are: keyword construction with defaults,
attribute access, ``dict()``/``model_dump()``, ``json()``, ``parse_obj``/``model_validate``, ``copy``.
Worker closure: standard library only, Python 3.6+."""

import copy as _copy
import json
from enum import Enum
from typing import Any, Dict, List, Tuple


class BaseModel:
    #: field name -> (default, nested type or None, is a list of it)
    _fields: Dict[str, Tuple[Any, Any, bool]] = {}
    _extra_allowed = False

    def __init__(self, **kwargs: Any) -> None:
        for name, (default, kind, many) in self._fields.items():
            if name in kwargs:
                value = kwargs.pop(name)
            elif default is ...:
                raise TypeError("%s: field %r is required" % (type(self).__name__, name))
            else:
                value = _copy.copy(default)
            object.__setattr__(self, name, _coerce(value, kind, many))
        if kwargs:
            if not self._extra_allowed:
                raise TypeError("%s has no field(s) %s" % (type(self).__name__, ", ".join(sorted(kwargs))))
            for name, value in kwargs.items():
                object.__setattr__(self, name, value)

    def _names(self) -> List[str]:
        return list(self._fields) + [k for k in vars(self) if k not in self._fields]

    def model_dump(
        self, include: Any = None, exclude: Any = None, exclude_none: bool = False, **_: Any
    ) -> Dict[str, Any]:
        """As pydantic's: ``include``/``exclude`` are sets of field names, or dicts of a field name to
        ``True`` (the whole field) or to a nested set/dict for its value (``"__all__"`` or an index for
        the items of a list), as MLServer's examples pass them."""
        return _dump_fields(self._names(), lambda n: getattr(self, n), include, exclude, exclude_none)

    dict = model_dump

    def model_dump_json(
        self, include: Any = None, exclude: Any = None, exclude_none: bool = False, **_: Any
    ) -> str:
        doc = self.model_dump(include=include, exclude=exclude, exclude_none=exclude_none)
        return json.dumps(doc, default=_json_default)

    json = model_dump_json

    @classmethod
    def model_validate(cls, obj: Any) -> Any:
        if isinstance(obj, cls):
            return obj
        if not isinstance(obj, dict):
            raise TypeError("%s.model_validate needs a dict, not %s" % (cls.__name__, type(obj).__name__))
        return cls(**obj)

    parse_obj = model_validate

    @classmethod
    def model_validate_json(cls, text: Any) -> Any:
        return cls.model_validate(json.loads(text))

    parse_raw = model_validate_json

    def model_copy(self, deep: bool = False, update: Any = None) -> Any:
        new = _copy.deepcopy(self) if deep else _copy.copy(self)
        for name, value in (update or {}).items():
            setattr(new, name, value)
        return new

    copy = model_copy

    def __eq__(self, other: Any) -> bool:
        return type(other) is type(self) and self.model_dump() == other.model_dump()

    def __repr__(self) -> str:
        return "%s(%s)" % (
            type(self).__name__,
            ", ".join("%s=%r" % (n, getattr(self, n)) for n in self._names()),
        )


def _coerce(value: Any, kind: Any, many: bool) -> Any:
    if value is None or kind is None:
        return value
    if many:
        return [_coerce(v, kind, False) for v in value]
    if isinstance(value, dict) and isinstance(kind, type) and issubclass(kind, BaseModel):
        return kind(**value)
    if not isinstance(kind, type):  # a converter function (TensorData's): it decides
        return kind(value)
    if not isinstance(value, kind):
        return kind(value)
    return value


def _part(spec: Any, key: Any) -> Any:
    """What ``include``/``exclude`` says about ``key``: True (all of it), a nested spec, or None."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        found = spec.get(key)
        return True if found is Ellipsis else found
    return True if key in spec else None


def _dump_fields(
    names: Any, get: Any, include: Any, exclude: Any, exclude_none: bool, drop_none: bool = True
) -> Dict[str, Any]:
    out = {}
    for name in names:
        dropped = _part(exclude, name)
        if dropped is True:
            continue
        kept = _part(include, name)
        if include is not None and kept is None:
            continue
        value = _dump(
            get(name),
            exclude_none,
            None if kept is True else kept,
            dropped if dropped is not None else None,
        )
        if exclude_none and drop_none and value is None:
            continue
        out[name] = value
    return out


def _items_spec(spec: Any, index: int) -> Any:
    """The spec for a list's item: its index's, else ``__all__``'s."""
    if not isinstance(spec, dict):
        return None
    found = spec.get(index, spec.get("__all__"))
    return True if found is Ellipsis else found


def _dump(value: Any, exclude_none: bool, include: Any = None, exclude: Any = None) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(include=include, exclude=exclude, exclude_none=exclude_none)
    if isinstance(value, list):
        out = []
        for i, item in enumerate(value):
            dropped = _items_spec(exclude, i)
            if dropped is True:
                continue
            kept = _items_spec(include, i)
            if include is not None and kept is None:
                continue
            out.append(_dump(item, exclude_none, None if kept is True else kept, dropped))
        return out
    if isinstance(value, dict):  # exclude_none drops models' fields, as in pydantic, not a dict's values
        return _dump_fields(list(value), value.__getitem__, include, exclude, exclude_none, drop_none=False)
    if isinstance(value, Enum):
        return value.value
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError("%s is not JSON serialisable" % type(value).__name__)
