"""Prometheus metrics: served at ``/metrics`` (and on ``metrics_port`` when set).

Recorded on the request path (cheap: one counter and one histogram update per request):

- ``envserve_requests_total{model, version, protocol, status}``
- ``envserve_request_duration_seconds{model, version, protocol}``
- ``envserve_batch_size{model, version}`` (adaptive batching)

Collected when scraped, from the state the lower layers keep:

- ``envserve_model_ready{model, version}``, ``envserve_queue_depth{model, version}``,
  ``envserve_worker_restarts_total{model, version}`` (worker pools)
- ``envserve_environment_cache_total{result="hit"|"miss"}``,
  ``envserve_environment_build_seconds_sum/_count`` (the environment cache)

Each :class:`Metrics` has its own registry, so several servers in one process do not mix.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .registry import ModelRegistry, ModelState

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
            ready.add_metric(labels, 1.0 if record.state == ModelState.READY else 0.0)
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


def _default_status(outcome: Optional[BaseException]) -> str:
    return "ok" if outcome is None else type(outcome).__name__


class Metrics:
    def __init__(self, registry: Optional[ModelRegistry] = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
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
        if registry is not None:
            self.registry.register(_StateCollector(registry))
            registry.batch_observer = self.observe_batch
        self._children: dict = {}  # type: ignore[type-arg]
        #: protocol label -> how that edge names an outcome (None: success, else the error raised)
        self._status: Dict[str, Callable[[Optional[BaseException]], str]] = {}

    def name_statuses(
        self, protocols: Iterable[str], status: Callable[[Optional[BaseException]], str]
    ) -> None:
        """An edge says how its protocols name outcomes in the ``status`` label (REST: 200, 503, ...)."""
        for protocol in protocols:
            self._status[protocol] = status

    def observe(
        self,
        model: str,
        version: Optional[str],
        protocol: str,
        outcome: Optional[BaseException],
        seconds: float,
    ) -> None:
        namer = self._status.get(protocol, _default_status)
        status = namer(outcome)
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

    def observe_batch(self, settings: Any, size: int) -> None:
        self.batch_size.labels(settings.name, settings.version or "").observe(size)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
