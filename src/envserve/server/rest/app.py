"""The REST edge: a plain ASGI application over the data plane.

No framework: the inference path is the product's hot path, and routing a handful of fixed paths by
splitting them costs less than a router (bench/RESULTS.md has the measurement that chose this).
Every error leaves as ``{"error": "..."}`` with the status from :mod:`.errors`; unexpected exceptions are
logged with their traceback and answered 500 without one.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any, Awaitable, Callable, List, MutableMapping, Optional, Sequence, Tuple

import numpy as np
import orjson

from ... import __version__
from ...errors import EnvserveError, InvalidRequest, Overloaded, PayloadTooLarge
from ..dataplane import DataPlane
from ..metrics import CONTENT_TYPE, Metrics
from .errors import status_for

__all__ = ["RestApp"]

logger = logging.getLogger("envserve.rest")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]
#: 503 says "try again shortly": the model is loading, its worker restarting, or its queue full.
_RETRY_HEADERS = _JSON_HEADERS + [(b"retry-after", b"1")]
#: Health probes are never shed: a pod under load must not look dead to its orchestrator.
_PROBES = frozenset(("/v2/health/live", "/v2/health/ready", "/health/ping", "/health/status", "/ping"))
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    raise TypeError("cannot serialise %s" % type(obj).__name__)


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc, default=_default, option=_DUMPS_OPTIONS)


class HTTPError(Exception):
    """A transport-level error (no route, wrong method)."""

    def __init__(self, status: int, message: str, allow: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow


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
    ) -> None:
        self.console = console  # a ConsoleAPI when the console is on
        self.max_requests = max_requests  # requests in flight beyond which 503 is answered (0: no bound)
        self.active = 0
        self.dataplane = dataplane
        self.max_request_size = max_request_size
        self.metrics = metrics
        self.admin_token = admin_token.encode() if admin_token else b""
        self.cors_origins = {o.encode() for o in cors_origins}

    def _cors(self, scope: Scope) -> List[Tuple[bytes, bytes]]:
        """CORS headers for an allowed Origin; none (so browsers refuse) for any other."""
        if not self.cors_origins:
            return []
        for key, value in scope["headers"]:
            if key == b"origin":
                if value in self.cors_origins or b"*" in self.cors_origins:
                    return [(b"access-control-allow-origin", value), (b"vary", b"Origin")]
                return []
        return []

    async def _console_page(self, scope: Scope, send: Send) -> None:
        from ..console import static_file

        if scope["path"] == "/console":
            status, headers, body = 308, [(b"location", b"/console/")], b""
        else:
            found = static_file(scope["path"])
            if found is None:
                status, headers, body = 404, list(_JSON_HEADERS), dumps({"error": "no such console page"})
            else:
                body, ctype = found
                status, headers = (
                    200,
                    [
                        (b"content-type", ctype.encode()),
                        (b"cache-control", b"no-cache"),
                        (b"x-content-type-options", b"nosniff"),
                        (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'"),
                    ],
                )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": headers + [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _check_origin(self, scope: Scope) -> None:
        """CSRF: a browser's state-changing call must come from this server's pages or an allowed origin."""
        origin = host = None
        for key, value in scope["headers"]:
            if key == b"origin":
                origin = value
            elif key == b"host":
                host = value
        if origin is None:  # not a browser's cross-site call
            return
        if host is not None and origin in (b"http://" + host, b"https://" + host):
            return
        if origin in self.cors_origins or b"*" in self.cors_origins:
            return
        raise HTTPError(
            403,
            "cross-site request refused: origin %s may not change this server"
            % (origin or b"?").decode("latin-1"),
        )

    def _check_admin(self, scope: Scope) -> None:
        """The repository's state-changing calls need the admin token when one is configured."""
        if not self.admin_token:
            return
        for key, value in scope["headers"]:
            if key == b"authorization" and hmac.compare_digest(value, b"Bearer " + self.admin_token):
                return
        raise HTTPError(401, "this call needs the admin token: send 'Authorization: Bearer <token>'")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        if scope["path"] == "/metrics" and self.metrics is not None:
            await metrics_endpoint(self.metrics, scope, send)
            return
        if self.console is not None and (
            scope["path"] == "/console" or scope["path"].startswith("/console/")
        ):
            await self._console_page(scope, send)
            return
        cors = self._cors(scope)
        if scope["method"] == "OPTIONS" and cors:  # a CORS preflight from an allowed origin
            headers = cors + [
                (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                (
                    b"access-control-allow-headers",
                    b"content-type, authorization, inference-header-content-length, x-model-name",
                ),
                (b"access-control-max-age", b"600"),
                (b"content-length", b"0"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        self.active += 1
        try:
            if self.max_requests and self.active > self.max_requests and scope["path"] not in _PROBES:
                raise Overloaded(
                    "the server is serving %d requests, its limit (max_connections); retry shortly"
                    % self.max_requests
                )
            result = await self._dispatch(scope, receive)
            status, body = result[0], result[1]
            headers = result[2] if len(result) == 3 else _JSON_HEADERS
        except EnvserveError as exc:
            status, body, headers = status_for(exc), dumps({"error": exc.message}), _JSON_HEADERS
            if status == 503:
                headers = _RETRY_HEADERS
            elif status >= 500:
                logger.warning("%s %s -> %d: %s", scope["method"], scope["path"], status, exc.message)
        except HTTPError as exc:
            status, body = exc.status, dumps({"error": exc.message})
            headers = _JSON_HEADERS + [(b"allow", exc.allow.encode())] if exc.allow else _JSON_HEADERS
        except Exception:
            logger.exception("unexpected error serving %s %s", scope["method"], scope["path"])
            status, body, headers = (
                500,
                dumps({"error": "internal server error; see the server log"}),
                _JSON_HEADERS,
            )
        finally:
            self.active -= 1
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": headers + cors + [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _binary_response(response: Any, doc: Any) -> Tuple[int, bytes, List[Tuple[bytes, bytes]]]:
        params = doc.get("parameters") if isinstance(doc, dict) else None
        binary_all = bool(isinstance(params, dict) and params.get("binary_data_output"))
        buffers: List[Any] = []
        head = dumps(response.to_dict(binary=buffers, binary_all=binary_all))
        if not buffers:
            return 200, head, _JSON_HEADERS
        body = b"".join([head, *buffers])
        return (
            200,
            body,
            [
                (b"content-type", b"application/octet-stream"),
                (b"inference-header-content-length", str(len(head)).encode()),
            ],
        )

    async def _infer(
        self,
        receive: Receive,
        name: str,
        version: Optional[str],
        doc: Any,
        protocol: str,
        binary: Any = None,
    ) -> Any:
        async def gone() -> None:  # once the body is read, the next message is the disconnect
            while (await receive())["type"] != "http.disconnect":
                pass

        return await self.dataplane.infer(
            name, version, doc, binary, protocol=protocol, status_of=_http_status, gone=gone
        )

    async def _envserve_api(self, scope: Scope, receive: Receive, parts: List[str]) -> Any:
        """envserve's own API: model status always; the console's calls when the console is on."""
        method, console = scope["method"], self.console
        route = "/".join(parts)
        if route == "models":  # runtimes, environments, workers (and traffic when the console is on)
            _expect(method, "GET", scope)
            return 200, dumps(console.models() if console is not None else self.dataplane.model_status())
        if console is None:
            raise HTTPError(
                404, "no route for %s; start the server with --console for the console API" % route
            )
        self._check_admin(scope)
        reads = {
            "environments": console.environments,
            "registry/models": console.registry_models,
            "platform": console.platform,
        }
        if route in reads:
            _expect(method, "GET", scope)
            return 200, dumps(reads[route]())
        if route in ("environments/prune", "deploy/render", "platform/image"):
            _expect(method, "POST", scope)
            self._check_origin(scope)
            doc = await self._read_json(scope, receive)
            if route == "environments/prune":
                return 200, dumps(await console.prune())
            if route == "deploy/render":
                return 200, dumps(console.render(doc))
            return 200, dumps(console.set_image(doc))
        raise HTTPError(404, "no route for %s %s" % (method, scope["path"]))

    async def _compat(self, scope: Scope, receive: Receive, parts: List[str]) -> Tuple[int, bytes]:
        """MLflow's scoring-server endpoints and Seldon Core v1's protocol, over the same data plane."""
        from ...protocol import mlflow_scoring, seldon

        method, dp = scope["method"], self.dataplane
        route = "/".join(parts)
        if route in ("ping", "health"):  # MLflow: 200 when the model(s) can serve
            _expect(method, "GET", scope)
            ready = dp.ready()
            return (200 if ready else 503), dumps({"status": "ok" if ready else "not ready"})
        if route == "version":
            _expect(method, "GET", scope)
            return 200, dumps(__version__)
        if route == "invocations":
            _expect(method, "POST", scope)
            if _content_type(scope) == "text/csv":
                raw = await self._read_body(scope, receive)
                try:
                    doc = mlflow_scoring.from_csv(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise InvalidRequest("the CSV body is not UTF-8") from None
            else:
                doc = mlflow_scoring.from_json(await self._read_json(scope, receive))
            name = dp.pick_model(_model_hint(scope))
            response = await self._infer(receive, name, None, doc, "mlflow")
            return 200, dumps(mlflow_scoring.to_predictions(response))
        # Seldon Core v1: errors in Seldon's own body
        try:
            if route == "api/v1.0/predictions":
                _expect(method, "POST", scope)
                doc, kind, _ = seldon.to_v2_request(await self._read_json(scope, receive))
                name = dp.pick_model(_model_hint(scope))
                response = await self._infer(receive, name, None, doc, "seldon")
                return 200, dumps(seldon.to_seldon_response(response, kind))
            if route == "health/ping":
                return 200, dumps("pong")
            if route == "health/status":
                ready = dp.ready()
                return (200 if ready else 503), dumps({"status": "ok" if ready else "not ready"})
            if route == "metadata":
                _expect(method, "GET", scope)
                meta = dp.model_metadata(dp.pick_model(_model_hint(scope)))
                return 200, dumps(
                    {
                        "name": meta["name"],
                        "versions": meta.get("versions", []),
                        "platform": meta.get("platform", ""),
                        "inputs": meta.get("inputs", []),
                        "outputs": meta.get("outputs", []),
                    }
                )
        except EnvserveError as exc:
            status = status_for(exc)
            return status, dumps(seldon.error_body(status, exc.message))
        raise HTTPError(404, "no route for %s %s" % (method, scope["path"]))

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.max_request_size
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise InvalidRequest("Content-Length is not a number") from None
                if declared > limit:
                    raise PayloadTooLarge(
                        "request body of %d bytes is over the limit of %d bytes (max_request_size)"
                        % (declared, limit)
                    )
                break
        chunks: List[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise InvalidRequest("client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge("request body is over the limit of %d bytes (max_request_size)" % limit)
            chunks.append(chunk)
            more = message.get("more_body", False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _read_json(self, scope: Scope, receive: Receive) -> Any:
        body = await self._read_body(scope, receive)
        if not body:
            return None
        return _loads(body)

    async def _dispatch(self, scope: Scope, receive: Receive) -> Any:
        method = scope["method"]
        parts = scope["path"].strip("/").split("/")
        dp = self.dataplane
        if parts[0] in _COMPAT_ROOTS:
            return await self._compat(scope, receive, parts)
        if parts[0] == "envserve":
            return await self._envserve_api(scope, receive, parts[1:])
        if not parts or parts[0] != "v2":
            raise HTTPError(404, "no route for %s; the API is under /v2" % scope["path"])
        n = len(parts)
        # /v2/models/{name}[/versions/{version}][/infer|/ready]
        if n >= 3 and parts[1] == "models":
            name = parts[2]
            version: Optional[str] = None
            rest = parts[3:]
            if len(rest) >= 2 and rest[0] == "versions":
                version = rest[1]
                rest = rest[2:]
            if rest == ["infer"]:
                _expect(method, "POST", scope)
                header_length = _header_length(scope)
                if header_length is None:
                    doc = await self._read_json(scope, receive)
                    response = await self._infer(receive, name, version, doc, "rest")
                    return self._binary_response(response, doc)  # plain JSON unless binary outputs were asked
                # binary tensor extension: a JSON header, then the inputs' raw bytes
                body = await self._read_body(scope, receive)
                if header_length > len(body):
                    raise InvalidRequest(
                        "Inference-Header-Content-Length %d is more than the %d-byte body"
                        % (header_length, len(body))
                    )
                doc = _loads(body[:header_length])
                binary_part = memoryview(body)[header_length:]
                response = await self._infer(receive, name, version, doc, "rest", binary_part)
                return self._binary_response(response, doc)
            if not rest:
                _expect(method, "GET", scope)
                return 200, dumps(dp.model_metadata(name, version))
            if rest == ["ready"]:
                _expect(method, "GET", scope)
                ready = dp.model_ready(name, version)
                return (200 if ready else 400), dumps({"name": name, "ready": ready})
        elif n == 1:
            _expect(method, "GET", scope)
            return 200, dumps(dp.server_metadata())
        elif n == 3 and parts[1] == "health":
            _expect(method, "GET", scope)
            if parts[2] == "live":
                live = dp.live()
                return (200 if live else 400), dumps({"live": live})
            if parts[2] == "ready":
                ready = dp.ready()
                return (200 if ready else 400), dumps({"ready": ready})
        elif n >= 3 and parts[1] == "repository":
            if parts[2:] == ["index"]:
                _expect(method, "POST", scope)
                return 200, dumps(dp.repository_index(await self._read_json(scope, receive)))
            if n == 5 and parts[2] == "models" and parts[4] in ("load", "unload"):
                _expect(method, "POST", scope)
                self._check_origin(scope)
                self._check_admin(scope)
                await self._read_json(scope, receive)
                if parts[4] == "load":
                    await dp.load(parts[3])
                else:
                    await dp.unload(parts[3])
                return 200, b"{}"
        raise HTTPError(404, "no route for %s %s" % (method, scope["path"]))


_COMPAT_ROOTS = {"invocations", "ping", "health", "version", "api", "metadata"}


def _http_status(exc: BaseException) -> str:
    return str(status_for(exc) if isinstance(exc, EnvserveError) else 500)


def _loads(body: Any) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("request body is not valid JSON: %s" % exc) from None


def _header_length(scope: Scope) -> Optional[int]:
    for key, value in scope["headers"]:
        if key == b"inference-header-content-length":
            try:
                length = int(value)
            except ValueError:
                raise InvalidRequest("Inference-Header-Content-Length is not a number") from None
            if length < 0:
                raise InvalidRequest("Inference-Header-Content-Length must not be negative")
            return length
    return None


def _model_hint(scope: Scope) -> Optional[str]:
    for key, value in scope["headers"]:
        if key == b"x-model-name":
            return value.decode("latin-1") or None
    for part in scope.get("query_string", b"").decode("latin-1").split("&"):
        key, _, value = part.partition("=")
        if key == "model" and value:
            from urllib.parse import unquote

            return str(unquote(value))
    return None


def _content_type(scope: Scope) -> str:
    for key, value in scope["headers"]:
        if key == b"content-type":
            return str(value.decode("latin-1")).split(";")[0].strip().lower()
    return ""


async def metrics_endpoint(metrics: Metrics, scope: Scope, send: Send) -> None:
    if scope["method"] not in ("GET", "HEAD"):
        body, status, ctype = dumps({"error": "use GET on /metrics"}), 405, b"application/json"
    else:
        body, status, ctype = metrics.render(), 200, CONTENT_TYPE.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class MetricsApp:
    """The ASGI app of the separate metrics port: /metrics and nothing else."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            if scope["path"] == "/metrics":
                await metrics_endpoint(self.metrics, scope, send)
            else:
                body = dumps({"error": "only /metrics is served on this port"})
                await send(
                    {
                        "type": "http.response.start",
                        "status": 404,
                        "headers": _JSON_HEADERS + [(b"content-length", str(len(body)).encode())],
                    }
                )
                await send({"type": "http.response.body", "body": body})


def _expect(method: str, allowed: str, scope: Scope) -> None:
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise HTTPError(
            405, "%s is not allowed on %s; use %s" % (method, scope["path"], allowed), allow=allowed
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
