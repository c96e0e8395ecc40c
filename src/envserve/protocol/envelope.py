"""What travels beside a request and its answer inside envserve, never on a client's wire.

Going down, a :class:`Passthrough` says that a request carries a protocol body as it arrived (MLflow's
``/invocations``, a Seldon v1 call, one of the model's own REST routes) for the model's runtime to answer
in that protocol. Coming up, a :class:`Report` holds what the layers beneath the data plane found while
answering: when each stage ran (the traces), the model's own metrics, a REST route's status and headers,
how many requests shared the model call. Both ride beside the V2 objects (over the worker IPC as fields
of their own), never in their ``parameters``: a client cannot send them, and a model's parameters are its
own. Keys of ``parameters`` beginning with :data:`RESERVED_PREFIX` are refused from clients.

Worker import closure: standard library only, Python 3.6+.
"""

from typing import Any, Dict, List, Optional

__all__ = ["RESERVED_PREFIX", "Passthrough", "Report"]

#: ``parameters`` keys with this prefix are envserve's: a request that sends one is refused (400).
RESERVED_PREFIX = "envserve_"


class Passthrough:
    """A protocol body handed to the model's runtime as it arrived.

    ``kind`` is :data:`MLFLOW` (``options``: ``media_type``), :data:`SELDON` (``call``: predict, feedback
    or metadata; ``request_path``: the unit's ``meta.requestPath`` entry) or :data:`HANDLER` (``name`` of
    the model's route, ``method``, ``path``, ``query_string``, ``query``, ``headers``). The body is the
    single BYTES element of the request's first input.
    """

    MLFLOW = "mlflow"
    SELDON = "seldon"
    HANDLER = "handler"

    __slots__ = ("kind", "options")

    def __init__(self, kind: str, options: Optional[Dict[str, Any]] = None) -> None:
        self.kind = kind
        self.options = options or {}

    def to_wire(self) -> Dict[str, Any]:
        return {"kind": self.kind, "options": self.options}

    @classmethod
    def from_wire(cls, doc: Optional[Dict[str, Any]]) -> "Optional[Passthrough]":
        if not isinstance(doc, dict):
            return None
        options = doc.get("options")
        return cls(str(doc.get("kind")), options if isinstance(options, dict) else {})

    def __repr__(self) -> str:
        return "Passthrough(%r)" % (self.kind,)


class Report:
    """What the layers under the data plane tell it about one answer.

    - ``timings``: stage name (``predict``, ``ipc``, ``queue``, ``batch``) -> [start, end] in wall-clock
      seconds, which the server and its workers share (the traces' spans);
    - ``metrics``: the model's own metrics for this call, in Seldon's ``metrics()`` format;
    - ``handler``: a model REST route's answer, ``{"status", "headers"}`` (the body is the output);
    - ``batch_size``: requests merged into the model call that produced this answer (0: not batched);
    - ``queued``: where the call waited -> the calls before it there when it arrived (``workers``: queued
      or in flight at the model's workers; ``batch``: waiting in its batch queue). Set in the server.
    """

    __slots__ = ("batch_size", "handler", "metrics", "queued", "timings")

    def __init__(self) -> None:
        self.timings: Dict[str, List[float]] = {}
        self.metrics: List[Any] = []
        self.handler: Optional[Dict[str, Any]] = None
        self.batch_size = 0
        self.queued: Dict[str, int] = {}

    def to_wire(self) -> Dict[str, Any]:
        doc: Dict[str, Any] = {"timings": self.timings}
        if self.metrics:
            doc["metrics"] = self.metrics
        if self.handler is not None:
            doc["handler"] = self.handler
        return doc

    @classmethod
    def from_wire(cls, doc: Any) -> "Report":
        report = cls()
        if isinstance(doc, dict):
            timings = doc.get("timings")
            if isinstance(timings, dict):
                report.timings = timings
            metrics = doc.get("metrics")
            if isinstance(metrics, list):
                report.metrics = metrics
            handler = doc.get("handler")
            if isinstance(handler, dict):
                report.handler = handler
        return report
