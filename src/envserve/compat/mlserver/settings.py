"""MLServer's settings objects as a custom runtime sees them (``self.settings``)."""

from typing import Any, Dict, List, Optional

from ._base import BaseModel
from .types import MetadataTensor

__all__ = ["ModelParameters", "ModelSettings", "Settings"]


class ModelParameters(BaseModel):
    _fields = {
        "uri": (None, None, False),
        "version": (None, None, False),
        "environment_path": (None, None, False),
        "environment_tarball": (None, None, False),
        "inference_pool_gid": (None, None, False),
        "autogenerate_inference_pool_gid": (False, None, False),
        "format": (None, None, False),
        "content_type": (None, None, False),
        "extra": ({}, None, False),
    }
    _extra_allowed = True
    uri: Optional[str]
    version: Optional[str]
    content_type: Optional[str]
    extra: Dict[str, Any]


class ModelSettings(BaseModel):
    _fields = {
        "name": ("", None, False),
        "platform": ("", None, False),
        "versions": ([], None, False),
        "inputs": ([], MetadataTensor, True),
        "outputs": ([], MetadataTensor, True),
        "parallel_workers": (None, None, False),
        "warm_workers": (False, None, False),
        "max_batch_size": (0, None, False),
        "max_batch_time": (0.0, None, False),
        "implementation": (None, None, False),
        "parameters": (None, ModelParameters, False),
        "cache_enabled": (False, None, False),
    }
    _extra_allowed = True
    name: str
    platform: str
    versions: List[str]
    inputs: List[MetadataTensor]
    outputs: List[MetadataTensor]
    max_batch_size: int
    parameters: Optional[ModelParameters]

    def __init__(self, **kwargs: Any) -> None:
        source = kwargs.pop("_source", None)
        super().__init__(**kwargs)
        object.__setattr__(self, "_source", source)

    def _names(self) -> List[str]:
        return [n for n in super()._names() if n != "_source"]

    @property
    def version(self) -> Optional[str]:
        return self.parameters.version if self.parameters is not None else None


class Settings(BaseModel):
    _fields = {"debug": (False, None, False), "model_repository_root": (".", None, False)}
    _extra_allowed = True
