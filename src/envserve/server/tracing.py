"""Traces of the calls the server answers: OpenTelemetry spans exported over OTLP/HTTP (setting
``tracing_endpoint``; ``pip install 'envserve[tracing]'``), or :data:`NO_TRACING`, which does nothing, when
it is off. The request path calls the same methods either way.

A call's span continues the caller's trace (W3C ``traceparent`` on REST headers or gRPC metadata; a
malformed one is ignored and a new trace begins). Below it: ``parse``, ``model`` (the model's call) and
``encode``; below ``model``, from the timings the layers underneath report with the response (so the
worker side needs no OpenTelemetry, and neither does the model's environment): ``batch`` (waiting for
a batch to form), ``queue`` (waiting for a free worker), ``ipc`` (the call's round trip to the worker)
and, inside it, ``predict`` (the model's own time, measured in the worker). Times are wall-clock, which
the server and its workers share.
"""

from __future__ import annotations

import logging
from typing import Any, ContextManager, Dict, List, Mapping, Optional, Protocol, Tuple

from ..errors import SettingsError

__all__ = ["NO_TRACING", "NoTracing", "Tracer", "Tracing"]

logger = logging.getLogger("envserve.tracing")

Timings = Mapping[str, List[float]]


class Tracer(Protocol):
    """What the request path asks of tracing."""

    #: False for :class:`NoTracing`: the edges then skip building the request span's attributes.
    enabled: bool

    def open(self, name: str, carrier: Mapping[str, str], attributes: Dict[str, Any]) -> Any:
        """Begin a call's span (the current one until :meth:`close`); returns what ``close`` needs."""

    def close(self, opened: Any, attributes: Dict[str, Any], error: bool) -> None:
        """End a call's span with its status attributes; ``error``: the call failed on the server's side."""

    def span(self, name: str, attributes: Optional[Dict[str, Any]] = None) -> ContextManager[Any]:
        """A stage of the current call, as a child span."""

    def record(self, timings: Timings) -> None:
        """Child spans of the current one from the (start, end) wall-clock seconds the layers reported."""

    def shutdown(self) -> None:
        """Export what is pending, then stop."""


class _NoSpan:
    """A context manager that does nothing, shared by every stage of every call when tracing is off."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


class NoTracing:
    """Tracing off: every method does nothing, at the cost of a call."""

    enabled = False

    def open(self, name: str, carrier: Mapping[str, str], attributes: Dict[str, Any]) -> Any:
        return None

    def close(self, opened: Any, attributes: Dict[str, Any], error: bool) -> None:
        return None

    def span(self, name: str, attributes: Optional[Dict[str, Any]] = None) -> ContextManager[Any]:
        return _NO_SPAN

    def record(self, timings: Timings) -> None:
        return None

    def shutdown(self) -> None:
        return None


NO_TRACING = NoTracing()


class Tracing:
    """Spans exported over OTLP/HTTP to ``endpoint`` (``/v1/traces`` is appended when missing)."""

    enabled = True

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
        self._error = trace.Status(trace.StatusCode.ERROR)
        logger.info("tracing: spans exported over OTLP/HTTP to %s", url)

    def open(self, name: str, carrier: Mapping[str, str], attributes: Dict[str, Any]) -> Tuple[Any, Any]:
        context = self.propagator.extract(carrier)
        manager = self.tracer.start_as_current_span(
            name, context=context, kind=self._server_kind, attributes=attributes
        )
        return manager, manager.__enter__()

    def close(self, opened: Tuple[Any, Any], attributes: Dict[str, Any], error: bool) -> None:
        manager, span = opened
        span.set_attributes(attributes)
        if error:
            span.set_status(self._error)
        manager.__exit__(None, None, None)

    def span(self, name: str, attributes: Optional[Dict[str, Any]] = None) -> ContextManager[Any]:
        return self.tracer.start_as_current_span(name, attributes=attributes)

    def record(self, timings: Timings) -> None:
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
        self.provider.shutdown()
