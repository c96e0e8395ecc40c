"""Model settings: MLServer's ``model-settings.json`` read as is.

Part of the worker's import closure (the worker receives these settings as a plain dict), so it uses the
standard library only and stays Python 3.6-compatible (a dataclass where ``dataclasses`` exists, 3.7+;
the same constructor, repr and equality from :func:`_plain_dataclass` on 3.6).
"""

import json
import os
from typing import Any, Callable, Dict, List, Optional

try:
    from dataclasses import dataclass, field
except ImportError:  # Python 3.6, in a model's environment

    class _Factory:
        def __init__(self, default_factory: Callable[[], Any]) -> None:
            self.default_factory = default_factory

    def field(default_factory: Callable[[], Any]) -> Any:  # type: ignore[no-redef]
        return _Factory(default_factory)

    def dataclass(cls: Any) -> Any:  # type: ignore[no-redef]
        """What the worker needs of a dataclass: keyword/positional construction with defaults (and
        default factories), repr and equality."""
        names = list(cls.__annotations__)
        defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            values = dict(zip(names, args))
            values.update(kwargs)
            for name in names:
                if name in values:
                    value = values[name]
                elif name in defaults:
                    default = defaults[name]
                    value = default.default_factory() if isinstance(default, _Factory) else default
                else:
                    raise TypeError("__init__() missing required argument: %r" % name)
                setattr(self, name, value)

        def __repr__(self: Any) -> str:
            return "%s(%s)" % (cls.__name__, ", ".join("%s=%r" % (n, getattr(self, n)) for n in names))

        def __eq__(self: Any, other: Any) -> bool:
            return type(other) is type(self) and all(getattr(self, n) == getattr(other, n) for n in names)

        cls.__init__, cls.__repr__, cls.__eq__ = __init__, __repr__, __eq__
        return cls


from ..errors import SettingsError
from ..protocol.datatypes import DATATYPES
from ..protocol.v2 import MetadataTensor

__all__ = ["MODEL_SETTINGS_FILE", "ModelSettings"]

MODEL_SETTINGS_FILE = "model-settings.json"


@dataclass
class ModelSettings:
    """One model version as configured. ``folder`` is the directory relative paths are resolved from."""

    name: str
    implementation: Optional[str] = None
    folder: Optional[str] = None
    version: Optional[str] = None
    uri: Optional[str] = None
    content_type: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    parameters: Dict[str, Any] = field(default_factory=dict)
    inputs: List[MetadataTensor] = field(default_factory=list)
    outputs: List[MetadataTensor] = field(default_factory=list)
    platform: str = ""
    max_batch_size: int = 0
    max_batch_time: float = 0.0
    parallel_workers: Optional[int] = None
    source: Optional[str] = None  # the settings file this came from, for messages

    @property
    def mlserver_shapes(self) -> bool:
        """Whether V2 answers use MLServer's shapes: a model that names an MLServer runtime
        (``mlserver_sklearn.SKLearnModel``, ...) answers as MLServer 1.x does, a one-dimensional output of N
        values with shape [N, 1] (its NumpyCodec's), so clients written against MLServer keep working.
        ``parameters.plain_shapes: true`` (also read from ``parameters.extra``) keeps numpy's shapes."""
        plain = self.parameters.get("plain_shapes", self.extra.get("plain_shapes", False))
        return bool((self.implementation or "").startswith("mlserver_") and not plain)

    @property
    def key(self) -> str:
        return self.name if self.version is None else "%s@%s" % (self.name, self.version)

    def resolve(self, path: str) -> str:
        """A path from the settings, made absolute against the settings file's folder."""
        path = os.path.expanduser(path)
        if os.path.isabs(path) or self.folder is None:
            return path
        return os.path.normpath(os.path.join(self.folder, path))

    @property
    def model_path(self) -> Optional[str]:
        """Where the artifact lives locally: ``parameters.uri`` resolved, else the model folder."""
        if self.uri is not None and "://" not in self.uri and not self.uri.startswith(("models:", "runs:")):
            return self.resolve(self.uri)
        return self.folder

    # -- (de)serialisation -----------------------------------------------------------------------------

    @classmethod
    def from_dict(
        cls, doc: Any, folder: Optional[str] = None, source: Optional[str] = None
    ) -> "ModelSettings":
        where = source or "model settings"
        if not isinstance(doc, dict):
            raise SettingsError("%s must be a JSON object" % where)
        name = doc.get("name")
        if name is None and folder is not None:
            name = os.path.basename(os.path.normpath(folder))
        if not isinstance(name, str) or not name or "/" in name:
            raise SettingsError("%s: 'name' must be a non-empty string without '/'" % where)
        implementation = doc.get("implementation")
        if implementation is not None and not isinstance(implementation, str):
            raise SettingsError("%s: 'implementation' must be a string" % where)
        params = doc.get("parameters")
        params = {} if params is None else params
        if not isinstance(params, dict):
            raise SettingsError("%s: 'parameters' must be an object" % where)
        version = params.get("version")
        if version is not None:
            version = str(version)
            if not version or "/" in version:
                raise SettingsError("%s: parameters.version must be a non-empty string without '/'" % where)
        extra = params.get("extra")
        extra = {} if extra is None else extra
        if not isinstance(extra, dict):
            raise SettingsError("%s: parameters.extra must be an object" % where)
        settings = cls(
            name=name,
            implementation=implementation,
            folder=folder,
            version=version,
            uri=_optional_str(params.get("uri"), "parameters.uri", where),
            content_type=_optional_str(params.get("content_type"), "parameters.content_type", where),
            extra=extra,
            parameters=params,
            inputs=_tensors(doc.get("inputs"), "inputs", where),
            outputs=_tensors(doc.get("outputs"), "outputs", where),
            platform=str(doc.get("platform") or ""),
            max_batch_size=_number(doc.get("max_batch_size", 0), "max_batch_size", where, int),
            max_batch_time=_number(doc.get("max_batch_time", 0), "max_batch_time", where, float),
            parallel_workers=(
                None
                if doc.get("parallel_workers") is None
                else _number(doc["parallel_workers"], "parallel_workers", where, int)
            ),
            source=source,
        )
        return settings

    @classmethod
    def load(cls, path: str) -> "ModelSettings":
        """Read a ``model-settings.json`` file."""
        try:
            with open(path, "rb") as f:
                doc = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            raise SettingsError("%s does not exist" % path) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise SettingsError("%s is not valid JSON: %s" % (path, exc)) from None
        return cls.from_dict(doc, folder=os.path.dirname(os.path.abspath(path)), source=path)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-able document from which :meth:`from_dict` rebuilds these settings (for workers)."""
        parameters = dict(self.parameters)
        for key, value in (("uri", self.uri), ("version", self.version), ("content_type", self.content_type)):
            if value is not None:
                parameters[key] = value
        parameters["extra"] = self.extra
        doc: Dict[str, Any] = {
            "name": self.name,
            "implementation": self.implementation,
            "parameters": parameters,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "platform": self.platform,
            "max_batch_size": self.max_batch_size,
            "max_batch_time": self.max_batch_time,
        }
        if self.parallel_workers is not None:
            doc["parallel_workers"] = self.parallel_workers
        return doc


def _optional_str(value: Any, key: str, where: str) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    raise SettingsError("%s: %s must be a string" % (where, key))


def _number(value: Any, key: str, where: str, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise SettingsError("%s: %s must be a non-negative number" % (where, key))
    if kind is int and value != int(value):
        raise SettingsError("%s: %s must be a whole number" % (where, key))
    return kind(value)


def _tensors(value: Any, key: str, where: str) -> List[MetadataTensor]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise SettingsError("%s: %s must be a list" % (where, key))
    result = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise SettingsError("%s: %s[%d] must be an object with a string 'name'" % (where, key, i))
        datatype = item.get("datatype", "BYTES")
        if datatype not in DATATYPES:
            raise SettingsError("%s: %s[%d].datatype %r is not a V2 datatype" % (where, key, i, datatype))
        shape = item.get("shape", [-1])
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape
        ):
            raise SettingsError("%s: %s[%d].shape must be a list of integers (-1 for any)" % (where, key, i))
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise SettingsError("%s: %s[%d].parameters must be an object" % (where, key, i))
        result.append(MetadataTensor(item["name"], datatype, shape, params))
    return result
