"""Prometheus metrics: served at ``/metrics`` (and on ``metrics_port`` when set).

Recorded on the request path (cheap: one counter and one histogram update per request):

- ``envserve_requests_total{model, version, protocol, status}`` (``status``: the HTTP status, for every
  protocol)
- ``envserve_request_duration_seconds{model, version, protocol}``
- ``envserve_batch_size{model, version}`` (adaptive batching)

Collected when scraped, from the state the lower layers keep:

- ``envserve_model_ready{model, version}``, ``envserve_queue_depth{model, version}``,
  ``envserve_worker_restarts_total{model, version}`` (worker pools)
- ``envserve_environment_cache_total{result="hit"|"miss"}``,
  ``envserve_environment_build_seconds_sum/_count`` (the environment cache)

Models' own metrics (a Seldon model's ``metrics()``), under their own keys as Seldon's wrapper exposes
them: COUNTER as ``<key>_total``, GAUGE as ``<key>``, TIMER (milliseconds) as the histogram ``<key>`` in
seconds; labelled ``model``, ``version`` and the metric's ``tags``.

Each :class:`Metrics` has its own registry, so several servers in one process do not mix.
"""

from __future__ import annotations

import bisect
import re
import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from ..settings.model import ModelSettings
from .handle import ModelState
from .mlserver_metrics import MLServerMetrics
from .registry import ModelRegistry
from .status import status_label

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: Prometheus' default buckets, which MLServer's histograms use.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: A model's own histograms: Seldon's TIMER (milliseconds, kept in seconds), MLServer's mlserver.log().
_BUCKETS = {"TIMER": _LATENCY_BUCKETS, "HISTOGRAM": DEFAULT_BUCKETS}


class _StateCollector:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Any]:
        ready = GaugeMetricFamily(
            "envserve_model_ready", "1 when the model is READY", labels=["model", "version"]
        )
        queue = GaugeMetricFamily(
            "envserve_queue_depth", "Requests waiting for a worker", labels=["model", "version"]
        )
        restarts = CounterMetricFamily(
            "envserve_worker_restarts", "Worker processes restarted after dying", labels=["model", "version"]
        )
        for record in self.registry.records():
            labels = [record.name, record.version or ""]
            ready.add_metric(labels, 1.0 if record.state is ModelState.READY else 0.0)
            if record.handle is not None:
                info = record.handle.describe()
                if "queued" in info:
                    queue.add_metric(labels, float(info["queued"]))
                    restarts.add_metric(labels, float(info.get("restarts", 0)))
        cache = CounterMetricFamily(
            "envserve_environment_cache", "Environment cache look-ups", labels=["result"]
        )
        stats = self.registry.environments.stats
        cache.add_metric(["hit"], float(stats["hits"]))
        cache.add_metric(["miss"], float(stats["misses"]))
        builds = CounterMetricFamily(
            "envserve_environment_build_seconds", "Seconds spent extracting or building environments"
        )
        builds.add_metric([], float(stats["build_seconds"]))
        builds_n = CounterMetricFamily("envserve_environment_builds", "Environments extracted or built")
        builds_n.add_metric([], float(stats["builds"]))
        yield from (ready, queue, restarts, cache, builds, builds_n)
        yield from self._shadows()

    def _shadows(self) -> Iterator[Any]:
        if not self.registry.shadows:
            return
        calls = CounterMetricFamily(
            "envserve_shadow_requests",
            "Requests mirrored to a model's shadow environment, by outcome",
            labels=["model", "outcome"],
        )
        rows = CounterMetricFamily(
            "envserve_shadow_rows",
            "Output rows the shadow answered, by agreement with the primary",
            labels=["model", "result"],
        )
        largest = GaugeMetricFamily(
            "envserve_shadow_max_abs_diff", "Largest absolute difference seen", labels=["model"]
        )
        for key, shadow in sorted(self.registry.shadows.items()):
            for outcome in ("compared", "errors", "skipped"):
                calls.add_metric([key, outcome], float(shadow.counts[outcome]))
            for result, count in shadow.rows.items():
                rows.add_metric([key, result], float(count))
            largest.add_metric([key], float(shadow.max_abs_diff))
        yield from (calls, rows, largest)


_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_Labels = Tuple[Tuple[str, str], ...]


class _CustomCollector:
    """The metrics models report with their answers (Seldon's ``metrics()`` format)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: (type, key) -> labels -> value (COUNTER/GAUGE: a float; TIMER: [bucket counts], sum)
        self._values: Dict[Tuple[str, str], Dict[_Labels, Any]] = {}

    def update(self, model: str, version: str, items: List[Any]) -> None:
        with self._lock:
            for item in items:
                if not isinstance(item, dict):
                    continue
                kind, key, value = item.get("type", "COUNTER"), item.get("key"), item.get("value")
                tags = item.get("tags") or {}
                if not (isinstance(key, str) and _METRIC_NAME.match(key) and isinstance(value, (int, float))):
                    continue
                if not isinstance(tags, dict) or not all(
                    isinstance(k, str) and _LABEL_NAME.match(k) for k in tags
                ):
                    continue
                if kind == "HISTOGRAM":  # MLServer's mlserver.log(): its labels, Prometheus' buckets
                    labels: _Labels = (("model_name", model), ("model_version", version))
                else:
                    labels = (("model", model), ("version", version)) + tuple(
                        sorted((k, str(v)) for k, v in tags.items() if k not in ("model", "version"))
                    )
                series = self._values.setdefault((str(kind), key), {})
                if kind == "COUNTER":
                    series[labels] = series.get(labels, 0.0) + float(value)
                elif kind == "GAUGE":
                    series[labels] = float(value)
                elif kind in _BUCKETS:
                    buckets = _BUCKETS[kind]
                    counts, total = series.get(labels, ([0] * (len(buckets) + 1), 0.0))
                    amount = float(value) / 1000.0 if kind == "TIMER" else float(value)
                    counts[bisect.bisect_left(buckets, amount)] += 1
                    series[labels] = (counts, total + amount)

    def collect(self) -> Iterator[Any]:
        with self._lock:
            snapshot = {k: dict(v) for k, v in self._values.items()}
        for (kind, key), series in sorted(snapshot.items()):
            first = ("model_name", "model_version") if kind == "HISTOGRAM" else ("model", "version")
            names = sorted({n for labels in series for n, _ in labels}, key=lambda n: (n not in first, n))
            family: Any
            if kind == "COUNTER":
                family = CounterMetricFamily(key, "A model's own counter", labels=names)
            elif kind == "GAUGE":
                family = GaugeMetricFamily(key, "A model's own gauge", labels=names)
            elif kind == "TIMER":
                family = HistogramMetricFamily(key, "A model's own timer (seconds)", labels=names)
            else:
                family = HistogramMetricFamily(key, "A model's own metric (mlserver.log)", labels=names)
            for labels, value in series.items():
                have = dict(labels)
                values = [have.get(n, "") for n in names]
                if kind in _BUCKETS:
                    counts, total = value
                    cumulative, buckets = 0, []
                    for bound, count in zip(list(_BUCKETS[kind]) + [float("inf")], counts):
                        cumulative += count
                        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                    family.add_metric(values, buckets, sum_value=total)
                else:
                    family.add_metric(values, value)
            yield family


class Metrics:
    def __init__(
        self, registry: Optional[ModelRegistry] = None, mlserver: Optional[MLServerMetrics] = None
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        #: MLServer's families, beside ours (None: ``mlserver_metrics`` is off)
        self.mlserver = mlserver
        if mlserver is not None:
            self.registry.register(mlserver)
        self.requests = Counter(
            "envserve_requests",
            "Inference requests",
            ["model", "version", "protocol", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "envserve_request_duration_seconds",
            "Inference request latency",
            ["model", "version", "protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "envserve_batch_size",
            "Requests merged into one model call",
            ["model", "version"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self._custom = _CustomCollector()
        self.registry.register(self._custom)
        if registry is not None:
            self.registry.register(_StateCollector(registry))
        self._children: Dict[Tuple[str, Optional[str], str, str], Tuple[Any, Any]] = {}

    def observe(
        self,
        protocol: str,
        model: str,
        version: Optional[str],
        outcome: Optional[BaseException],
        seconds: float,
    ) -> None:
        """One inference call: its protocol label, the model and version that answered (``""`` for a name
        no model has), how it ended (None: answered; else what was raised) and how long it took."""
        status = status_label(outcome)
        key = (model, version, protocol, status)
        children = self._children.get(key)
        if children is None:  # label look-ups cached: the request path pays two updates, not four
            labels = (model, version or "", protocol)
            children = self._children[key] = (
                self.requests.labels(*labels, status),
                self.latency.labels(*labels),
            )
        children[0].inc()
        children[1].observe(seconds)
        if self.mlserver is not None:
            self.mlserver.infer(model, version or "", outcome is None, seconds)

    def observe_queued(self, settings: ModelSettings, queued: Dict[str, int]) -> None:
        """How many calls a call found before it at the model's workers or batch queue."""
        if self.mlserver is not None:
            for where, depth in queued.items():
                self.mlserver.queued(settings.name, settings.version or "", where, depth)

    def custom(self, settings: ModelSettings, items: List[Any]) -> None:
        """A model's own metrics reported with an answer (malformed entries are left out; the runtime that
        produced them already refused them to the model's author)."""
        self._custom.update(settings.name, settings.version or "", items)

    def observe_batch(self, settings: ModelSettings, size: int) -> None:
        self.batch_size.labels(settings.name, settings.version or "").observe(size)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
