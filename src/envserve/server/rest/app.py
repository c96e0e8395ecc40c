"""The REST edge: a plain ASGI application over the data plane, routed by one table (:func:`routes`).

No framework: the inference path is the product's hot path, and a table indexed by segment count and
first segment finds its route with a dict lookup (bench/ measures it against a minimal ASGI floor).
For every request the app finds the route, begins the :class:`~envserve.server.call.Call` (request id,
span, access line), runs the handler, and maps whatever it raised through the one error table
(:mod:`.errors`), in the shape of the route's protocol. Unexpected exceptions are logged with their
traceback and answered 500 without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from typing import Any, Awaitable, Callable, Dict, List, MutableMapping, Optional, Sequence, Tuple

from ...errors import EnvserveError, Overloaded
from ...protocol.envelope import Passthrough
from ..call import Call, Calls, Protocol
from ..console import ConsoleAPI
from ..dataplane import DataPlane
from ..metrics import CONTENT_TYPE, Metrics
from .edge import PROBES
from .envserve_api import EnvserveAPI
from .errors import error_response, http_status
from .guards import LOOPBACK_HOSTS, admin_only, cors_headers, loopback_only, same_origin
from .kserve import KServeV1Handlers
from .mlflow import MLflowHandlers
from .routing import (
    JSON,
    Answer,
    Guard,
    Handler,
    HTTPError,
    Request,
    Response,
    Route,
    Router,
    StreamingResponse,
    dumps,
)
from .seldon import SeldonHandlers
from .v2 import V2Handlers

__all__ = ["MetricsApp", "RestApp", "route_taken", "routes"]

logger = logging.getLogger("envserve.rest")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_PREFLIGHT = [
    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
    (
        b"access-control-allow-headers",
        b"content-type, authorization, inference-header-content-length, x-model-name",
    ),
    (b"access-control-max-age", b"600"),
]

V2, KSERVE, MLFLOW, SELDON = Protocol.V2_REST, Protocol.KSERVE_V1, Protocol.MLFLOW, Protocol.SELDON
ADMIN, CHANGES = Guard.ADMIN, Guard.CHANGES


def routes(console: bool) -> List[Route]:
    """Every REST route, in one list: method, path, handler, protocol, guard."""
    v2, kserve, mlflow, seldon, own = (
        V2Handlers,
        KServeV1Handlers,
        MLflowHandlers,
        SeldonHandlers,
        EnvserveAPI,
    )
    table = [
        # Open Inference Protocol V2
        Route("POST", "/v2/models/{name}/infer", v2.infer),
        Route("POST", "/v2/models/{name}/versions/{version}/infer", v2.infer),
        Route("POST", "/v2/models/{name}/infer_stream", v2.infer_stream),
        Route("POST", "/v2/models/{name}/versions/{version}/infer_stream", v2.infer_stream),
        Route("POST", "/v2/models/{name}/generate", v2.generate),
        Route("POST", "/v2/models/{name}/versions/{version}/generate", v2.generate),
        Route("POST", "/v2/models/{name}/generate_stream", v2.infer_stream),
        Route("POST", "/v2/models/{name}/versions/{version}/generate_stream", v2.infer_stream),
        Route("GET", "/v2/models/{name}", v2.model_metadata),
        Route("GET", "/v2/models/{name}/versions/{version}", v2.model_metadata),
        Route("GET", "/v2/models/{name}/ready", v2.model_ready),
        Route("GET", "/v2/models/{name}/versions/{version}/ready", v2.model_ready),
        Route("GET", "/v2", v2.server_metadata),
        Route("GET", "/v2/health/live", v2.live),
        Route("GET", "/v2/health/ready", v2.ready),
        Route("GET", "/v2/docs", v2.docs_page),
        Route("GET", "/v2/docs/dataplane.json", v2.docs),
        Route("GET", "/v2/models/{name}/docs", v2.docs_page),
        Route("GET", "/v2/models/{name}/docs/dataplane.json", v2.model_docs),
        Route("POST", "/v2/repository/index", v2.repository_index),
        Route("POST", "/v2/repository/models/{name}/load", v2.load, V2, CHANGES),
        Route("POST", "/v2/repository/models/{name}/unload", v2.unload, V2, CHANGES),
        # KServe V1 (POST /v1/models/NAME:predict; the verb is part of the last segment)
        Route("GET", "/v1/models", kserve.models, KSERVE),
        Route("GET", "/v1/models/{name}", kserve.model, KSERVE),
        Route("POST", "/v1/models/{name}", kserve.call, KSERVE),
        # MLflow's scoring server
        Route("POST", "/invocations", mlflow.invocations, MLFLOW),
        Route("GET", "/ping", mlflow.ping, MLFLOW),
        Route("GET", "/health", mlflow.ping, MLFLOW),
        Route("GET", "/version", mlflow.version, MLFLOW),
        # Seldon Core v1, the routes of its Python wrapper
        Route("POST", "/api/v1.0/predictions", seldon.predictions, SELDON),
        Route("POST", "/api/v0.1/predictions", seldon.predictions, SELDON),
        Route("POST", "/predict", seldon.predictions, SELDON),
        Route("GET", "/predict", seldon.predictions, SELDON),
        Route("POST", "/send-feedback", seldon.feedback, SELDON),
        Route("POST", "/api/v1.0/feedback", seldon.feedback, SELDON),
        Route("GET", "/health/ping", seldon.ping, SELDON),
        Route("GET", "/health/status", seldon.status, SELDON),
        Route("GET", "/api/v1.0/health/status", seldon.status, SELDON),
        Route("GET", "/metadata", seldon.metadata, SELDON),
        Route("GET", "/api/v1.0/metadata", seldon.metadata, SELDON),
        # envserve's own API
        Route("GET", "/envserve/models", own.models),
        Route("GET", "/envserve/models/{name}/bom", own.bom),
        Route("GET", "/envserve/models/{name}/versions/{version}/bom", own.bom),
        Route("GET", "/envserve/models/{name}/shadow", own.shadow),
        Route("GET", "/envserve/models/{name}/versions/{version}/shadow", own.shadow),
    ]
    if not console:
        return table + [
            Route("GET", "/envserve/{call}", own.console_off),
            Route("GET", "/envserve/{group}/{call}", own.console_off),
        ]
    return table + [
        Route("GET", "/envserve/environments", own.environments, V2, ADMIN),
        Route("GET", "/envserve/registry/models", own.registry_models, V2, ADMIN),
        Route("GET", "/envserve/platform", own.platform, V2, ADMIN),
        Route("POST", "/envserve/environments/prune", own.prune, V2, CHANGES),
        Route("POST", "/envserve/deploy/render", own.render, V2, CHANGES),
        Route("POST", "/envserve/platform/image", own.set_image, V2, CHANGES),
    ]


def route_taken(console: bool) -> Callable[[str, str], bool]:
    """Whether the server answers (method, path) itself (a model's own route there is refused): the same
    table, before any handler exists."""
    router = Router(routes(console))

    def taken(method: str, path: str) -> bool:
        if path in ("/metrics", "/console") or path.startswith("/console/"):
            return True
        try:
            router.find(method, path)
        except HTTPError as exc:
            return exc.status != 404
        return True

    return taken


class RestApp:
    def __init__(
        self,
        dataplane: DataPlane,
        calls: Calls,
        max_request_size: int,
        metrics: Optional[Metrics] = None,
        admin_token: str = "",
        cors_origins: Sequence[str] = (),
        console: Optional[ConsoleAPI] = None,
        max_requests: int = 0,
        allowed_hosts: Sequence[str] = (),
        admin_open: bool = False,
    ) -> None:
        self.dataplane = dataplane
        self.calls = calls
        self.max_request_size = max_request_size
        self.metrics = metrics
        self.console = console
        self.admin_token = admin_token.encode() if admin_token else b""
        #: without a token, state-changing calls from beyond loopback are refused unless this is set
        self.admin_open = admin_open
        self.cors_origins = frozenset(o.encode() for o in cors_origins)
        #: the names browsers may call this server by for state-changing calls (CSRF, DNS rebinding)
        self.allowed_hosts = LOOPBACK_HOSTS | frozenset(
            h.strip().lower().encode() for h in allowed_hosts if h
        )
        self.max_requests = max_requests  # requests in flight beyond which 503 is answered (0: no bound)
        self.active = 0
        handlers: Dict[str, object] = {
            "V2Handlers": V2Handlers(dataplane),
            "KServeV1Handlers": KServeV1Handlers(dataplane),
            "MLflowHandlers": MLflowHandlers(dataplane),
            "SeldonHandlers": SeldonHandlers(dataplane),
            "EnvserveAPI": EnvserveAPI(dataplane, console),
        }
        self.router = Router([r.bind(handlers, self._guard) for r in routes(console is not None)])

    def _guard(self, guard: Guard, handler: Handler) -> Handler:
        guarded = admin_only(handler, self.admin_token)
        if guard is Guard.CHANGES and not self.admin_token and not self.admin_open:
            guarded = loopback_only(guarded)
        if guard is Guard.CHANGES:
            guarded = same_origin(guarded, self.cors_origins, self.allowed_hosts)
        return guarded

    async def _custom(self, request: Request, call: Call) -> Response:
        """A model's own REST route (MLServer's ``@custom_handler``), when one is (method, path)."""
        found = self.dataplane.custom_route(request.method, request.path)
        if found is None:
            raise HTTPError(404, "no route for %s %s" % (request.method, request.path))
        name, handler = found
        query_string = request.scope.get("query_string", b"").decode("latin-1")
        call.model = name
        call.route = request.path
        call.passthrough = Passthrough(
            Passthrough.HANDLER,
            {
                "name": handler,
                "method": request.method,
                "path": request.path,
                "query_string": query_string,
                "query": dict(urllib.parse.parse_qsl(query_string)),
                "headers": call.headers,
            },
        )
        response = await self.dataplane.passthrough(call, name, await request.body())
        answer = response.report.handler or {}
        headers = answer.get("headers") or {}
        encoded = [(str(k).lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()]
        return Response(int(answer.get("status", 200)), bytes(response.outputs[0].data.ravel()[0]), encoded)

    def _route(self, method: str, path: str) -> Tuple[Optional[Route], Dict[str, str], Optional[HTTPError]]:
        try:
            route, params = self.router.find(method, path)
        except HTTPError as exc:
            if exc.status != 404:
                return None, {}, exc
            return None, {}, None  # perhaps a model's own route
        return route, params, None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        path = scope["path"]
        if path == "/metrics" and self.metrics is not None:
            await metrics_endpoint(self.metrics, scope, send)
            return
        if self.console is not None and (path == "/console" or path.startswith("/console/")):
            await _send(send, *_console_page(path))
            return
        method = scope["method"]
        cors: List[Any] = []
        incoming = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                incoming = value.decode("latin-1")
            elif key == b"origin" and self.cors_origins:
                cors = cors_headers(value, self.cors_origins)
        if method == "OPTIONS" and cors:  # a preflight from an allowed origin
            await _send(send, 204, cors + _PREFLIGHT, b"")
            return
        route, params, refused = self._route(method, path)
        protocol = route.protocol if route is not None else Protocol.V2_REST
        request = Request(scope, receive, params, self.max_request_size)
        call = self.calls.begin(protocol, method, path, scope["headers"], incoming, request.gone)
        client = scope.get("client")
        call.peer = client[0] if client else None
        call.model = params.get("name", "")
        if route is not None:
            call.route = route.template
        status = 500
        try:
            response = await self._answer(request, call, route, refused)
            status = response.status
            headers = response.headers + [(b"x-request-id", call.request_id.encode("latin-1"))]
            if call.response_headers:
                headers += [(k.encode("ascii"), v.encode("ascii")) for k, v in call.response_headers.items()]
            if isinstance(response, StreamingResponse):
                await _stream(send, headers + cors if cors else headers, response, request.gone)
            else:
                await _send(send, status, headers + cors if cors else headers, response.body)
        finally:
            self.calls.end(call, status)

    async def _answer(
        self, request: Request, call: Call, route: Optional[Route], refused: Optional[HTTPError]
    ) -> Answer:
        """The handler's answer, or the error table's."""
        self.active += 1
        try:
            if self.max_requests and self.active > self.max_requests and call.path not in PROBES:
                raise Overloaded(
                    "the server is serving %d requests, its limit (max_connections); retry shortly"
                    % self.max_requests
                )
            if refused is not None:
                raise refused
            handler = route.handler if route is not None else self._custom
            return await handler(request, call)
        except EnvserveError as exc:
            status = http_status(exc)
            if status >= 500 and status != 503:
                logger.warning("%s %s -> %d: %s", call.method, call.path, status, exc.message)
            return error_response(call.protocol, status, exc.message)
        except HTTPError as exc:
            answer = error_response(Protocol.V2_REST, exc.status, exc.message)
            if exc.allow:
                answer.headers = answer.headers + [(b"allow", exc.allow.encode())]
            return answer
        except Exception:
            logger.exception("unexpected error serving %s %s", call.method, call.path)
            return error_response(call.protocol, 500, "internal server error; see the server log")
        finally:
            self.active -= 1


async def _stream(
    send: Send, headers: List[Any], response: StreamingResponse, gone: Callable[[], Awaitable[None]]
) -> None:
    """Send a response as it is produced; a client that disconnects stops its producer at once."""
    chunks = response.chunks

    async def pump() -> None:
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": response.first, "more_body": True})
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    sending = asyncio.ensure_future(pump())
    watching = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({sending, watching}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watching.cancel()
        if not sending.done():  # the client left: the producer (the model's stream) stops
            sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        await chunks.aclose()


async def _send(send: Send, status: int, headers: List[Any], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": headers + [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _console_page(path: str) -> Tuple[int, List[Tuple[bytes, bytes]], bytes]:
    from ..console import static_file

    if path == "/console":
        return 308, [(b"location", b"/console/")], b""
    found = static_file(path)
    if found is None:
        return 404, JSON, dumps({"error": "no such console page"})
    body, ctype = found
    headers = [
        (b"content-type", ctype.encode()),
        (b"cache-control", b"no-cache"),
        (b"x-content-type-options", b"nosniff"),
        (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'"),
    ]
    return 200, headers, body


async def metrics_endpoint(metrics: Metrics, scope: Scope, send: Send) -> None:
    if scope["method"] not in ("GET", "HEAD"):
        await _send(send, 405, JSON, dumps({"error": "use GET on /metrics"}))
    else:
        await _send(send, 200, [(b"content-type", CONTENT_TYPE.encode())], metrics.render())


class MetricsApp:
    """The ASGI app of the separate metrics port: /metrics and nothing else."""

    def __init__(self, metrics: Metrics, endpoint: str = "/metrics") -> None:
        self.metrics = metrics
        self.paths = {"/metrics", endpoint}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            if scope["path"] in self.paths:
                await metrics_endpoint(self.metrics, scope, send)
            else:
                await _send(
                    send,
                    404,
                    JSON,
                    dumps({"error": "only %s is served on this port" % " and ".join(sorted(self.paths))}),
                )


async def _lifespan(receive: Receive, send: Send) -> None:
    # The server loads models itself (after it starts listening); lifespan only acknowledges.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
