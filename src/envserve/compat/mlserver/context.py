"""``mlserver.context``: the model a call is for, as MLServer sets it around ``load``/``predict`` (its custom
metrics are labelled with it)."""

import threading
from contextlib import contextmanager

try:
    from contextvars import ContextVar
except ImportError:  # Python 3.6: one value per thread, which is how envserve calls a model there

    class ContextVar:  # type: ignore[no-redef]
        _unset = object()

        def __init__(self, name):  # type: ignore[no-untyped-def]
            self.name = name
            self._local = threading.local()

        def get(self, *default):  # type: ignore[no-untyped-def]
            value = getattr(self._local, "value", self._unset)
            if value is self._unset:
                if default:
                    return default[0]
                raise LookupError(self.name)
            return value

        def set(self, value):  # type: ignore[no-untyped-def]
            token = getattr(self._local, "value", self._unset)
            self._local.value = value
            return token

        def reset(self, token):  # type: ignore[no-untyped-def]
            self._local.value = token


model_name_var = ContextVar("model_name")  # type: ContextVar[str]
model_version_var = ContextVar("model_version")  # type: ContextVar[str]

__all__ = ["model_context", "model_name_var", "model_version_var"]


@contextmanager
def model_context(model_settings):  # type: ignore[no-untyped-def]
    name_token = model_name_var.set(model_settings.name)
    version_token = model_version_var.set(getattr(model_settings, "version", None) or "")
    try:
        yield
    finally:
        model_name_var.reset(name_token)
        model_version_var.reset(version_token)
