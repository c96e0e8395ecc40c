"""``mlserver.utils``: what custom runtimes call."""

import os
import urllib.parse
from typing import Any, Sequence

from .errors import InvalidModelURI

__all__ = ["get_model_uri", "to_absolute_path"]


def to_absolute_path(settings: Any, uri: str) -> str:
    source = getattr(settings, "_source", None)
    if source and not os.path.isabs(uri):
        folder = source if os.path.isdir(source) else os.path.dirname(source)
        return os.path.join(folder, uri)
    return uri


async def get_model_uri(settings: Any, wellknown_filenames: Sequence[str] = ()) -> str:
    """The model's artifact: ``parameters.uri`` (relative to the model folder); for a folder, the first
    of ``wellknown_filenames`` in it, else the folder."""
    parameters = getattr(settings, "parameters", None)
    uri = getattr(parameters, "uri", None) if parameters is not None else None
    if not uri:
        raise InvalidModelURI(settings.name)
    parts = urllib.parse.urlparse(uri, scheme="file")
    if parts.scheme != "file":
        return str(uri)
    path = to_absolute_path(settings, parts.path)
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        for name in wellknown_filenames:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        return path
    raise InvalidModelURI(settings.name, path)
