"""``mlserver.metrics``: ``register(name, description)`` and ``log(**values)``, MLServer's custom metrics.

As in MLServer each name is a histogram labelled ``model_name`` and ``model_version`` (from
:mod:`mlserver.context`). envserve takes what a model logs into the answer's report and serves it from the
server's ``/metrics``; until then (a runtime used outside envserve) values are kept on the histogram.
"""

from .context import log, register
from .errors import InvalidModelContext, MetricNotFound

__all__ = ["InvalidModelContext", "MetricNotFound", "log", "register"]
