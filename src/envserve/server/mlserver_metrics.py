"""MLServer's Prometheus metrics, under its names and labels, served beside envserve's own so the
dashboards and alerts written for MLServer keep working (``mlserver_metrics``, on by default).

What MLServer 1.7 exposes, and where envserve counts it:

- ``model_infer_request_success_total`` / ``model_infer_request_failure_total{model, version}`` and the
  summary ``model_infer_request_duration{model, version}``: every inference call, by the data plane (all
  protocols; MLServer only has V2). ``version`` is the served model's version or ``""`` (MLServer writes
  ``"None"`` for an unversioned model called over REST, ``""`` over gRPC); a call for a model that does not
  exist is counted under ``model=""`` (MLServer uses the name asked for, which lets any client grow the
  series without bound).
- ``<prefix>_requests_total{app_name, method, path, status_code}``, the histogram
  ``<prefix>_request_duration_seconds`` (same labels) and the gauge
  ``<prefix>_requests_in_progress{app_name, method}`` (``<prefix>``: ``metrics_rest_server_prefix``,
  ``rest_server`` by default; ``app_name`` is ``mlserver`` as MLServer sets it): REST requests to a
  route the server has, by the route's template in MLServer's spelling
  (``/v2/models/{model_name}/infer``); health probes and ``/metrics`` are left out, as MLServer does.
- ``grpc_server_started_total`` / ``grpc_server_handled_total{grpc_code, grpc_method, grpc_service,
  grpc_type}`` and the histogram ``grpc_server_handling_seconds``: gRPC calls.
- ``parallel_request_queue`` (histogram): for each call sent to a model's workers, the calls queued or in
  flight there when it was sent; ``batch_request_queue{model_name, model_version}`` (histogram): for each
  request to an adaptively batched model, the requests waiting in its batch.

All are plain counters in dicts updated on the event loop's thread (the edges and the data plane run
there) and turned into families when scraped: the request path pays a dict update, not a lock.
"""

from __future__ import annotations

import bisect
from typing import Any, Dict, Iterator, List, Tuple

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)

from .call import Call, Protocol

__all__ = ["MLServerMetrics"]

#: Prometheus' default buckets, which every MLServer histogram uses.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_APP = "mlserver"
#: What MLServer's REST metrics leave out (its ``skip_paths``).
_SKIPPED = frozenset(("/metrics", "/v2/health/live", "/v2/health/ready"))
_STREAMING = frozenset(("ModelStreamInfer",))


class _Histogram:
    """Counts per bucket (not cumulative; the last is +Inf), their sum and count."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value

    def buckets(self) -> List[Tuple[str, float]]:
        cumulative, out = 0, []
        for bound, count in zip(BUCKETS + (float("inf"),), self.counts):
            cumulative += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
        return out


class MLServerMetrics:
    def __init__(self, rest_prefix: str = "rest_server") -> None:
        self.rest_prefix = rest_prefix
        #: (model, version) -> [successes, failures, seconds]
        self._infer: Dict[Tuple[str, str], List[float]] = {}
        self._rest: Dict[Tuple[str, str, str], Tuple[List[int], _Histogram]] = {}
        self._rest_active: Dict[str, int] = {}
        self._grpc_started: Dict[Tuple[str, str, str], int] = {}
        self._grpc_handled: Dict[Tuple[str, str, str, str], int] = {}
        self._grpc_seconds: Dict[Tuple[str, str, str], _Histogram] = {}
        self._workers_queue = _Histogram()
        self._batch_queue: Dict[Tuple[str, str], _Histogram] = {}

    # -- recording -----------------------------------------------------------------------------------------

    def infer(self, model: str, version: str, ok: bool, seconds: float) -> None:
        counts = self._infer.get((model, version))
        if counts is None:
            counts = self._infer[(model, version)] = [0.0, 0.0, 0.0]
        counts[0 if ok else 1] += 1
        counts[2] += seconds

    def queued(self, model: str, version: str, where: str, depth: int) -> None:
        """A call found ``depth`` others before it at a model's workers (``where="workers"``) or in its
        batch queue (``"batch"``)."""
        if where == "workers":
            self._workers_queue.observe(float(depth))
            return
        histogram = self._batch_queue.get((model, version))
        if histogram is None:
            histogram = self._batch_queue[(model, version)] = _Histogram()
        histogram.observe(float(depth))

    def started(self, call: Call) -> None:
        if call.protocol is Protocol.V2_GRPC:
            key = _grpc_key(call.path)
            self._grpc_started[key] = self._grpc_started.get(key, 0) + 1
        elif call.path not in _SKIPPED:
            self._rest_active[call.method] = self._rest_active.get(call.method, 0) + 1

    def ended(self, call: Call, status: int, shown: str, seconds: float) -> None:
        if call.protocol is Protocol.V2_GRPC:
            key = _grpc_key(call.path)
            handled = (shown,) + key
            self._grpc_handled[handled] = self._grpc_handled.get(handled, 0) + 1
            histogram = self._grpc_seconds.get(key)
            if histogram is None:
                histogram = self._grpc_seconds[key] = _Histogram()
            histogram.observe(seconds)
            return
        if call.path in _SKIPPED:
            return
        self._rest_active[call.method] = self._rest_active.get(call.method, 1) - 1
        if not call.route:  # no route of the server's (MLServer counts only the routes it has)
            return
        key = (call.method, call.route, str(status))
        found = self._rest.get(key)
        if found is None:
            found = self._rest[key] = ([0], _Histogram())
        found[0][0] += 1
        found[1].observe(seconds)

    # -- scraping ------------------------------------------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        success = CounterMetricFamily(
            "model_infer_request_success", "Model infer request success count", labels=["model", "version"]
        )
        failure = CounterMetricFamily(
            "model_infer_request_failure", "Model infer request failure count", labels=["model", "version"]
        )
        duration = SummaryMetricFamily(
            "model_infer_request_duration", "Model infer request duration", labels=["model", "version"]
        )
        for (model, version), (ok, failed, seconds) in list(self._infer.items()):
            success.add_metric([model, version], ok)
            failure.add_metric([model, version], failed)
            duration.add_metric([model, version], int(ok + failed), seconds)
        yield from (success, failure, duration)

        prefix = self.rest_prefix
        labels = ["app_name", "method", "path", "status_code"]
        requests = CounterMetricFamily(prefix + "_requests", "Number of requests", labels=labels)
        latency = HistogramMetricFamily(
            prefix + "_request_duration_seconds", "Request duration, in seconds", labels=labels
        )
        for (method, path, status), (seen, timed) in list(self._rest.items()):
            requests.add_metric([_APP, method, path, status], float(seen[0]))
            latency.add_metric([_APP, method, path, status], timed.buckets(), timed.total)
        active = GaugeMetricFamily(
            prefix + "_requests_in_progress", "Number of requests in progress", labels=["app_name", "method"]
        )
        for method, active_now in list(self._rest_active.items()):
            active.add_metric([_APP, method], float(active_now))
        yield from (requests, latency, active)

        rpc = ["grpc_method", "grpc_service", "grpc_type"]
        started = CounterMetricFamily(
            "grpc_server_started", "Total number of RPCs started on the server.", labels=rpc
        )
        for (service, method, kind), begun in list(self._grpc_started.items()):
            started.add_metric([method, service, kind], float(begun))
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            labels=["grpc_code"] + rpc,
        )
        for (code, service, method, kind), ended in list(self._grpc_handled.items()):
            handled.add_metric([code, method, service, kind], float(ended))
        handling = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by "
            "the server.",
            labels=rpc,
        )
        for (service, method, kind), timed in list(self._grpc_seconds.items()):
            handling.add_metric([method, service, kind], timed.buckets(), timed.total)
        yield from (started, handled, handling)

        workers = HistogramMetricFamily("parallel_request_queue", "counter of request queue size for workers")
        workers.add_metric([], self._workers_queue.buckets(), self._workers_queue.total)
        batch = HistogramMetricFamily(
            "batch_request_queue",
            "counter of request queue batch size",
            labels=["model_name", "model_version"],
        )
        for (model, version), depths in list(self._batch_queue.items()):
            batch.add_metric([model, version], depths.buckets(), depths.total)
        yield from (workers, batch)


def _grpc_key(path: str) -> Tuple[str, str, str]:
    """``/inference.GRPCInferenceService/ModelInfer`` -> (service, method, its kind)."""
    service, _, method = path.strip("/").rpartition("/")
    return service, method, "BIDI_STREAMING" if method in _STREAMING else "UNARY"
