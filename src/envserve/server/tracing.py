"""OpenTelemetry traces of inference requests, exported over OTLP/HTTP (setting ``tracing_endpoint``,
off by default; ``pip install 'envserve[tracing]'``).

A request's span continues the caller's trace (W3C ``traceparent`` on REST headers or gRPC metadata; a
malformed one is ignored and a new trace begins). Below it: ``parse``, ``model`` (the model's call) and
``encode``; below ``model``, from the timings the layers underneath report with the response (so the
worker side needs no OpenTelemetry, and neither does the model's environment): ``batch`` (waiting for
a batch to form), ``queue`` (waiting for a free worker), ``ipc`` (the call's round trip to the worker)
and, inside it, ``predict`` (the model's own time, measured in the worker). Times are wall-clock, which
the server and its workers share.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, Iterator, List, Mapping, Optional

from ..errors import SettingsError

__all__ = ["Tracing"]

logger = logging.getLogger("envserve.tracing")


class Tracing:
    def __init__(self, endpoint: str, service_name: str) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise SettingsError(
                "tracing_endpoint is set but OpenTelemetry is not installed (%s): "
                "pip install 'envserve[tracing]'" % exc
            ) from None
        url = endpoint.rstrip("/")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        self.tracer = self.provider.get_tracer("envserve")
        self.propagator = TraceContextTextMapPropagator()
        self._trace = trace
        self._server_kind = trace.SpanKind.SERVER
        logger.info("tracing: spans exported over OTLP/HTTP to %s", url)

    @contextlib.contextmanager
    def request(self, name: str, carrier: Mapping[str, str], attributes: Dict[str, Any]) -> Iterator[Any]:
        """The span of one request, continuing the trace its ``traceparent`` names (if well-formed)."""
        context = self.propagator.extract(carrier)
        with self.tracer.start_as_current_span(
            name, context=context, kind=self._server_kind, attributes=attributes
        ) as span:
            yield span

    @contextlib.contextmanager
    def span(self, name: str, attributes: Optional[Dict[str, Any]] = None) -> Iterator[Any]:
        with self.tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span

    def record(self, timings: Optional[Dict[str, List[float]]]) -> None:
        """Spans under the current one from the (start, end) wall-clock seconds the layers reported."""
        if not timings:
            return
        trace = self._trace
        parent = trace.get_current_span()
        context = trace.set_span_in_context(parent)
        for name in ("batch", "queue"):
            if name in timings:
                self._closed(name, timings[name], context)
        predict_parent = context
        if "ipc" in timings:
            ipc = self._closed("ipc", timings["ipc"], context)
            predict_parent = trace.set_span_in_context(ipc)
        if "predict" in timings:
            self._closed("predict", timings["predict"], predict_parent)

    def _closed(self, name: str, times: List[float], context: Any) -> Any:
        start, end = (int(float(t) * 1e9) for t in times[:2])
        span = self.tracer.start_span(name, context=context, start_time=start)
        span.end(end_time=max(start, end))
        return span

    def shutdown(self) -> None:
        """Export what is pending, then stop."""
        self.provider.shutdown()
