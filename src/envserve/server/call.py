"""One request, from the moment an edge receives it until it has answered: the :class:`Call`.

An edge (REST, gRPC) begins a call with :meth:`Calls.begin`, hands it to the data plane with the decoded
request, encodes what comes back, maps an error through its one table, and ends the call with
:meth:`Calls.end`. Everything per call that is not the edge's own protocol lives here or in the data
plane, once: the request id (the client's ``X-Request-Id`` when sane, else a new one; on every log line
written meanwhile), the call's span (continuing the caller's trace; :data:`~.tracing.NO_TRACING` when
tracing is off), the access line, the headers in (read by models that ask for them, and by the tracer)
and out (set by models), the deadline, the client's disconnection, and what the model is asked beyond
V2 tensors (:class:`~envserve.protocol.envelope.Passthrough`). Each layer reads and adds to the call;
none reaches sideways for it.
"""

from __future__ import annotations

import enum
import ipaddress
import time
from contextvars import ContextVar, Token
from typing import Any, ContextManager, Dict, Optional, Sequence, Tuple, Union
from typing import Protocol as typing_Protocol

from ..logcontext import REQUEST_ID
from ..protocol.envelope import Passthrough
from ..workers.admission import ClientGone
from .logs import access, request_id
from .tracing import NO_TRACING, Tracer

__all__ = ["Call", "CallWatcher", "Calls", "Protocol"]

#: A call's headers as its transport delivered them: (name, value) pairs, bytes (REST) or text (gRPC).
RawHeaders = Sequence[Tuple[Union[bytes, str], Union[bytes, str]]]

#: gRPC codes that are the server's failure, not the client's (OpenTelemetry's rule for server spans).
_GRPC_SERVER_ERRORS = frozenset((2, 4, 12, 13, 14, 15))


class Protocol(enum.Enum):
    """The protocol a call came in; its value is the ``protocol`` label in the metrics."""

    V2_REST = "rest"
    V2_GRPC = "grpc"
    KSERVE_V1 = "kserve-v1"
    MLFLOW = "mlflow"
    SELDON = "seldon"

    def __init__(self, label: str) -> None:
        #: ``grpc`` or ``rest``: the access log's ``protocol`` field.
        self.transport = "grpc" if label == "grpc" else "rest"
        #: Open Inference Protocol V2 (whose answers follow MLServer's output shapes for its runtimes).
        self.v2 = label in ("rest", "grpc")


class Call:
    """One request in flight. Made by :meth:`Calls.begin`; tests may make one directly."""

    __slots__ = (
        "_headers",
        "_opened",
        "_raw_headers",
        "_token",
        "deadline",
        "gone",
        "method",
        "model",
        "passthrough",
        "path",
        "peer",
        "protocol",
        "request_id",
        "response_headers",
        "route",
        "started",
        "tracer",
    )

    def __init__(
        self,
        protocol: Protocol,
        method: str = "POST",
        path: str = "",
        headers: RawHeaders = (),
        request_id: str = "",
        gone: Optional[ClientGone] = None,
        deadline: Optional[float] = None,
        tracer: Tracer = NO_TRACING,
    ) -> None:
        self.protocol = protocol
        self.method = method
        self.path = path
        self.request_id = request_id
        #: ``time.perf_counter()`` when the call arrived: its latency in the metrics and the access log.
        self.started = time.perf_counter()
        #: ``time.monotonic()`` by which the client wants its answer (gRPC's ``grpc-timeout``); None: none.
        self.deadline = deadline
        #: Completes when the client disconnects (REST); gRPC cancels the call's task instead.
        self.gone = gone
        #: The model the call names, as the client wrote it (the access log's ``model``).
        self.model = ""
        #: The REST route that took the call, as MLServer spells its template
        #: (``/v2/models/{model_name}/infer``); ``""``: none of the server's.
        self.route = ""
        #: What the model is asked beyond V2 tensors (MLflow, Seldon, a model's own route); None: V2.
        self.passthrough: Optional[Passthrough] = None
        #: Headers the model set on its answer (MLServer's ``parameters.headers``), safe to send.
        self.response_headers: Dict[str, str] = {}
        self.tracer = tracer
        #: The client's address as the edge saw it (None: unknown, or a Unix socket); set by the edge.
        self.peer: Optional[str] = None
        self._raw_headers = headers
        self._headers: Optional[Dict[str, str]] = None
        self._opened: Any = None
        self._token: Optional[Token[str]] = None

    @property
    def headers(self) -> Dict[str, str]:
        """The request's headers (gRPC: its text metadata), names in lower case, repeated ones joined with
        commas; decoded on first use."""
        if self._headers is None:
            found: Dict[str, str] = {}
            for key, value in self._raw_headers:
                name = key.decode("latin-1").lower() if isinstance(key, bytes) else key.lower()
                if name.endswith("-bin"):  # gRPC's binary metadata is not text
                    continue
                text = value.decode("latin-1") if isinstance(value, bytes) else value
                found[name] = found[name] + ", " + text if name in found else text
            self._headers = found
        return self._headers

    @property
    def loopback(self) -> bool:
        """Whether the client connected from this machine (read only by the guards that need it)."""
        return is_loopback(self.peer)

    def span(self, name: str, attributes: Optional[Dict[str, Any]] = None) -> ContextManager[Any]:
        """A stage of this call in its trace (nothing when tracing is off)."""
        return self.tracer.span(name, attributes)


class CallWatcher(typing_Protocol):
    """Told of every call as it begins and ends (MLServer's REST and gRPC metrics)."""

    def started(self, call: Call) -> None: ...

    def ended(self, call: Call, status: int, shown: str, seconds: float) -> None: ...


class Calls:
    """What every edge does at the beginning and the end of a call, shared by the REST and gRPC edges."""

    def __init__(
        self, tracer: Tracer = NO_TRACING, access_log: bool = False, watcher: Optional[CallWatcher] = None
    ) -> None:
        self.tracer = tracer
        self.access_log = access_log
        self.watcher = watcher

    def begin(
        self,
        protocol: Protocol,
        method: str,
        path: str,
        headers: RawHeaders,
        incoming_id: Optional[str] = None,
        gone: Optional[ClientGone] = None,
        deadline: Optional[float] = None,
    ) -> Call:
        """A new call: its request id (``incoming_id`` when sane) set for the log lines written meanwhile,
        and its span begun."""
        call = Call(protocol, method, path, headers, request_id(incoming_id), gone, deadline, self.tracer)
        call._token = REQUEST_ID.set(call.request_id)
        if self.tracer.enabled:
            call._opened = self.tracer.open(*_span_of(call))
        if self.watcher is not None:
            self.watcher.started(call)
        return call

    def end(self, call: Call, status: int, shown: Optional[str] = None) -> None:
        """The call has answered ``status`` (HTTP status, or gRPC code shown as ``shown``): its span ends
        and its access line is written."""
        grpc = call.protocol is Protocol.V2_GRPC
        if call._opened is not None:
            if grpc:
                self.tracer.close(
                    call._opened, {"rpc.grpc.status_code": status}, status in _GRPC_SERVER_ERRORS
                )
            else:
                self.tracer.close(call._opened, {"http.response.status_code": status}, status >= 500)
            call._opened = None
        if self.watcher is not None:
            self.watcher.ended(
                call, status, shown if shown is not None else str(status), time.perf_counter() - call.started
            )
        if self.access_log:
            access(
                call.method,
                call.path,
                call.model,
                shown if shown is not None else status,
                call.started,
                call.protocol.transport,
            )
        if call._token is not None:
            REQUEST_ID.reset(call._token)
            call._token = None


def _span_of(call: Call) -> Tuple[str, Dict[str, str], Dict[str, Any]]:
    """The name, trace carrier and attributes of a call's span, by its transport's conventions."""
    if call.protocol is Protocol.V2_GRPC:
        service, _, method = call.path.strip("/").rpartition("/")
        attributes: Dict[str, Any] = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        return call.path, call.headers, attributes
    attributes = {
        "http.request.method": call.method,
        "url.path": call.path,
        "envserve.request_id": call.request_id,
    }
    return "%s %s" % (call.method, call.path), call.headers, attributes


def is_loopback(host: Optional[str]) -> bool:
    """Whether a peer address is this machine's (127.0.0.0/8, ::1, IPv4-mapped ::ffff:127.x); an unknown
    or non-IP peer (a Unix socket) counts as this machine."""
    if not host:
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


#: The address of the client whose call runs in this context (set by the gRPC edge per call task).
PEER: ContextVar[Optional[str]] = ContextVar("envserve_peer", default=None)

#: What a client beyond loopback is told when the calls that change the server are not open to it.
LOOPBACK_ONLY = (
    "this call changes the server, which without an admin token answers only clients on this machine: "
    "set admin_token (ENVSERVE_ADMIN_TOKEN) and send it, or admin_open=true to open it to the network"
)
