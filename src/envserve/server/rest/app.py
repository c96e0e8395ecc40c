"""The REST edge: a plain ASGI application over the data plane, routed by one table (:meth:`RestApp.routes`).

No framework: the inference path is the product's hot path, and a table indexed by segment count and
first segment finds its route with a dict lookup (bench/ measures it against a minimal ASGI floor).
Every error leaves as ``{"error": "..."}`` with the status from :mod:`.errors` (503s also say
``Retry-After``); unexpected exceptions are logged with their traceback and answered 500 without one.
"""

from __future__ import annotations

import contextlib
import logging
import time
import urllib.parse
from typing import Any, Awaitable, Callable, List, MutableMapping, Optional, Sequence

from ...errors import EnvserveError, Overloaded
from ...logcontext import REQUEST_ID
from ..dataplane import DataPlane
from ..logs import access, request_id
from ..metrics import CONTENT_TYPE, Metrics
from .envserve_api import EnvserveAPI
from .errors import status_for
from .guards import admin_only, cors_headers, same_origin
from .kserve import KServeV1Handlers
from .mlflow import MLflowHandlers, mlflow_errors
from .routing import JSON, HTTPError, Request, Response, Route, Router, dumps
from .seldon import SeldonHandlers, seldon_errors
from .v2 import V2Handlers

__all__ = ["MetricsApp", "RestApp"]

logger = logging.getLogger("envserve.rest")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: 503 says "try again shortly": the model is loading, its worker restarting, or its queue full.
_RETRY = JSON + [(b"retry-after", b"1")]
#: Health probes are never shed: a pod under load must not look dead to its orchestrator.
_PROBES = frozenset(
    (
        "/v2/health/live",
        "/v2/health/ready",
        "/health/ping",
        "/health/status",
        "/api/v1.0/health/status",
        "/ping",
    )
)
_PREFLIGHT = [
    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
    (
        b"access-control-allow-headers",
        b"content-type, authorization, inference-header-content-length, x-model-name",
    ),
    (b"access-control-max-age", b"600"),
]


class RestApp:
    def __init__(
        self,
        dataplane: DataPlane,
        max_request_size: int,
        metrics: Optional[Metrics] = None,
        admin_token: str = "",
        cors_origins: Sequence[str] = (),
        console: Optional[Any] = None,
        max_requests: int = 0,
        access_log: bool = False,
    ) -> None:
        self.dataplane = dataplane
        self.access_log = access_log
        self.max_request_size = max_request_size
        self.metrics = metrics
        self.console = console  # a ConsoleAPI when the console is on
        self.admin_token = admin_token.encode() if admin_token else b""
        self.cors_origins = frozenset(o.encode() for o in cors_origins)
        self.max_requests = max_requests  # requests in flight beyond which 503 is answered (0: no bound)
        self.active = 0
        self.router = Router(self.routes())
        dataplane.registry.route_taken = self.route_taken

    def routes(self) -> List[Route]:
        """Every REST route, in one list."""
        v2 = V2Handlers(self.dataplane)
        mlflow = MLflowHandlers(self.dataplane)
        seldon = SeldonHandlers(self.dataplane)
        own = EnvserveAPI(self.dataplane, self.console)
        kserve = KServeV1Handlers(self.dataplane)

        def admin(handler: Any) -> Any:
            return admin_only(handler, self.admin_token)

        def changes(handler: Any) -> Any:  # a state-changing call: same origin, then the admin token
            return same_origin(admin(handler), self.cors_origins)

        routes = [
            # Open Inference Protocol V2
            Route("POST", "/v2/models/{name}/infer", v2.infer),
            Route("POST", "/v2/models/{name}/versions/{version}/infer", v2.infer),
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
            Route("POST", "/v2/repository/models/{name}/load", changes(v2.load)),
            Route("POST", "/v2/repository/models/{name}/unload", changes(v2.unload)),
            # KServe V1 (POST /v1/models/NAME:predict; the verb is part of the last segment)
            Route("GET", "/v1/models", kserve.models),
            Route("GET", "/v1/models/{name}", kserve.model),
            Route("POST", "/v1/models/{name}", kserve.call),
            # MLflow's scoring server
            Route("POST", "/invocations", mlflow_errors(mlflow.invocations)),
            Route("GET", "/ping", mlflow.ping),
            Route("GET", "/health", mlflow.ping),
            Route("GET", "/version", mlflow.version),
            # Seldon Core v1, the routes of its Python wrapper (errors in Seldon's body)
            Route("POST", "/api/v1.0/predictions", seldon_errors(seldon.predictions)),
            Route("POST", "/api/v0.1/predictions", seldon_errors(seldon.predictions)),
            Route("POST", "/predict", seldon_errors(seldon.predictions)),
            Route("GET", "/predict", seldon_errors(seldon.predictions)),
            Route("POST", "/send-feedback", seldon_errors(seldon.feedback)),
            Route("POST", "/api/v1.0/feedback", seldon_errors(seldon.feedback)),
            Route("GET", "/health/ping", seldon_errors(seldon.ping)),
            Route("GET", "/health/status", seldon_errors(seldon.status)),
            Route("GET", "/api/v1.0/health/status", seldon_errors(seldon.status)),
            Route("GET", "/metadata", seldon_errors(seldon.metadata)),
            Route("GET", "/api/v1.0/metadata", seldon_errors(seldon.metadata)),
            # envserve's own API
            Route("GET", "/envserve/models", own.models),
            Route("GET", "/envserve/models/{name}/bom", own.bom),
            Route("GET", "/envserve/models/{name}/versions/{version}/bom", own.bom),
            Route("GET", "/envserve/models/{name}/shadow", own.shadow),
            Route("GET", "/envserve/models/{name}/versions/{version}/shadow", own.shadow),
        ]
        if self.console is None:
            routes.append(Route("GET", "/envserve/{call}", own.console_off))
            routes.append(Route("GET", "/envserve/{group}/{call}", own.console_off))
            return routes
        return routes + [
            Route("GET", "/envserve/environments", admin(own.environments)),
            Route("GET", "/envserve/registry/models", admin(own.registry_models)),
            Route("GET", "/envserve/platform", admin(own.platform)),
            Route("POST", "/envserve/environments/prune", changes(own.prune)),
            Route("POST", "/envserve/deploy/render", changes(own.render)),
            Route("POST", "/envserve/platform/image", changes(own.set_image)),
        ]

    def route_taken(self, method: str, path: str) -> bool:
        """Whether the server answers (method, path) itself (a model's own route there is refused)."""
        if path in ("/metrics", "/console") or path.startswith("/console/"):
            return True
        try:
            self.router.find(method, path)
        except HTTPError as exc:
            return exc.status != 404
        return True

    async def _custom(self, request: Request) -> Response:
        """A model's own REST route (MLServer's ``@custom_handler``), when one is (method, path)."""
        found = self.dataplane.custom_route(request.method, request.path)
        if found is None:
            raise HTTPError(404, "no route for %s %s" % (request.method, request.path))
        query_string = request.scope.get("query_string", b"").decode("latin-1")
        call = {
            "method": request.method,
            "path": request.path,
            "query_string": query_string,
            "query": dict(urllib.parse.parse_qsl(query_string)),
            "headers": request.headers(),
        }
        status, headers, body = await self.dataplane.call_handler(
            found[0], found[1], await request.body(), call, gone=request.gone
        )
        encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        return Response(status, body, encoded)

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
        started = time.perf_counter()
        cors: List[Any] = []
        incoming = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                incoming = value.decode("latin-1")
            elif key == b"origin" and self.cors_origins:
                cors = cors_headers(value, self.cors_origins)
        if scope["method"] == "OPTIONS" and cors:  # a preflight from an allowed origin
            await _send(send, 204, cors + _PREFLIGHT, b"")
            return
        rid = request_id(incoming)
        token = REQUEST_ID.set(rid)
        model = ""
        tracing = self.dataplane.tracing
        # the request's span (continuing the caller's trace) ends on every way out, a cancelled call too
        with contextlib.ExitStack() as stack:
            span = None
            if tracing is not None:
                carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
                attributes = {
                    "http.request.method": scope["method"],
                    "url.path": path,
                    "envserve.request_id": rid,
                }
                span = stack.enter_context(
                    tracing.request("%s %s" % (scope["method"], path), carrier, attributes)
                )
            self.active += 1
            try:
                if self.max_requests and self.active > self.max_requests and path not in _PROBES:
                    raise Overloaded(
                        "the server is serving %d requests, its limit (max_connections); retry shortly"
                        % self.max_requests
                    )
                try:
                    handler, params = self.router.find(scope["method"], path)
                except HTTPError as exc:
                    if exc.status != 404:
                        raise
                    handler, params = self._custom, {}
                model = params.get("name", "")
                response = await handler(Request(scope, receive, params, self.max_request_size))
                status, body, headers = response.status, response.body, response.headers
            except EnvserveError as exc:
                status, body, headers = status_for(exc), dumps({"error": exc.message}), JSON
                if status == 503:
                    headers = _RETRY
                elif status >= 500:
                    logger.warning("%s %s -> %d: %s", scope["method"], path, status, exc.message)
            except HTTPError as exc:
                status, body = exc.status, dumps({"error": exc.message})
                headers = JSON + [(b"allow", exc.allow.encode())] if exc.allow else JSON
            except Exception:
                logger.exception("unexpected error serving %s %s", scope["method"], path)
                status, body, headers = (
                    500,
                    dumps({"error": "internal server error; see the server log"}),
                    JSON,
                )
            finally:
                self.active -= 1
            headers = headers + [(b"x-request-id", rid.encode("latin-1"))]
            if span is not None:
                span.set_attribute("http.response.status_code", status)
        try:
            await _send(send, status, headers + cors if cors else headers, body)
        finally:
            if self.access_log:
                access(scope["method"], path, model, status, started, "rest")
            REQUEST_ID.reset(token)


async def _send(send: Send, status: int, headers: List[Any], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": headers + [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _console_page(path: str) -> Any:
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
