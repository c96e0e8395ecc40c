"""MLServer's ``register``/``log`` with its labels; the histograms live in :data:`REGISTRY`."""

import threading
from typing import Any, Dict, List, Tuple

from ..context import model_name_var, model_version_var
from .errors import InvalidModelContext

SELDON_MODEL_NAME_LABEL = "model_name"
SELDON_MODEL_VERSION_LABEL = "model_version"

__all__ = ["REGISTRY", "Histogram", "log", "register"]


class _Child:
    def __init__(self, parent: "Histogram", labels: Tuple[str, ...]) -> None:
        self._parent = parent
        self._labels = labels

    def observe(self, amount: float, exemplar: Any = None) -> None:
        with self._parent._lock:
            self._parent.observed.append((self._labels, float(amount)))


class Histogram:
    """What MLServer's ``register`` returns: ``.labels(...).observe(value)``."""

    def __init__(self, name: str, description: str, labelnames: Tuple[str, ...] = ()) -> None:
        self.name = name
        self.description = description
        self.labelnames = tuple(labelnames)
        self.observed: List[Tuple[Tuple[str, ...], float]] = []
        self._lock = threading.Lock()

    def labels(self, *values: Any, **named: Any) -> _Child:
        if named:
            values = tuple(named.get(n, "") for n in self.labelnames)
        return _Child(self, tuple(str(v) for v in values))


REGISTRY: Dict[str, Histogram] = {}


def register(name: str, description: str) -> Histogram:
    """Register a metric (a histogram); an existing name returns the existing one."""
    found = REGISTRY.get(name)
    if found is None:
        found = REGISTRY[name] = Histogram(
            name, description, (SELDON_MODEL_NAME_LABEL, SELDON_MODEL_VERSION_LABEL)
        )
    return found


def _get_labels_from_context() -> Dict[str, str]:
    try:
        return {
            SELDON_MODEL_NAME_LABEL: model_name_var.get(),
            SELDON_MODEL_VERSION_LABEL: model_version_var.get(),
        }
    except LookupError:
        raise InvalidModelContext() from None


def log(**metrics: float) -> None:
    """Log metric values (a metric not registered yet is registered)."""
    labels = _get_labels_from_context()
    for metric_name, metric_value in metrics.items():
        metric = register(metric_name, "TODO: Default description?")
        metric.labels(**labels).observe(metric_value)
