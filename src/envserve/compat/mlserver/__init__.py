"""envserve's stand-in for MLServer's public surface (``mlserver``), for custom runtimes whose environment
does not have MLServer. Put on a worker's ``sys.path`` after the environment's own packages: a real
MLServer always wins. Python 3.6+, numpy; pandas only for the pandas codec; no pydantic.

Implemented: ``MLModel``, ``ModelSettings``/``ModelParameters``/``Settings``, ``mlserver.types``,
``mlserver.codecs`` (NumPy, pandas, string, base64, datetime, request codecs, ``decode_args``, the
decode/encode helpers), ``mlserver.errors``, ``mlserver.utils.get_model_uri``,
``mlserver.handlers.custom_handler``, ``mlserver.register``/``mlserver.log`` (custom metrics, served from
the server's ``/metrics``), ``mlserver.context``.
"""

from .metrics import log, register
from .model import MLModel
from .settings import ModelParameters, ModelSettings, Settings

__version__ = "1.7.1+envserve"
#: Marks this package as envserve's stand-in (a real MLServer has no such attribute).
__envserve_compat__ = True

__all__ = ["MLModel", "ModelParameters", "ModelSettings", "Settings", "__version__", "log", "register"]
