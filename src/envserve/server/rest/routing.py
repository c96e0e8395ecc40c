"""Routing for the REST edge: one table of (method, path pattern, handler), read top to bottom.

A pattern is a path whose ``{name}`` segments capture one path segment each (URL-decoded). Routes are
indexed by their segment count and first segment, so finding the inference route costs a dict lookup and
a few string comparisons (the hot path's budget; bench/). A path that matches with another method answers
405 with ``Allow``; a path that matches nothing answers 404.

Handlers are ``async def handler(request, call) -> Response``: the HTTP request, and the
:class:`~envserve.server.call.Call` the edge began for it. A route also names the protocol its calls
speak (their metrics label and error bodies) and the guard it sits behind (admin token, same origin).
The table is written with unbound handler functions and bound to the handler objects when the app is
built, so which paths the server answers is known before any handler exists (a model's own route there
is refused at load).
"""

from __future__ import annotations

import enum
from typing import (
    Any,
    AsyncGenerator,
    Awaitable,
    Callable,
    Dict,
    List,
    Mapping,
    MutableMapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)
from urllib.parse import unquote

import numpy as np
import orjson

from ...errors import InvalidRequest, PayloadTooLarge
from ..call import Call, Protocol

__all__ = [
    "JSON",
    "Answer",
    "Guard",
    "HTTPError",
    "Handler",
    "Request",
    "Response",
    "Route",
    "Router",
    "StreamingResponse",
    "dumps",
    "json_response",
    "loads",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Headers = List[Tuple[bytes, bytes]]

#: The headers of a JSON answer.
JSON: Headers = [(b"content-type", b"application/json")]


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    raise TypeError("cannot serialise %s" % type(obj).__name__)


def dumps(doc: Any) -> bytes:
    """JSON with numpy arrays and scalars as numbers (orjson's native numpy support, then a fallback)."""
    return orjson.dumps(doc, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(body: Any) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("request body is not valid JSON: %s" % exc) from None


class Response:
    """What a handler answers: status, body and headers (JSON unless it says otherwise)."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: Optional[Headers] = None) -> None:
        self.status = status
        self.body = body
        self.headers = JSON if headers is None else headers


class StreamingResponse:
    """A response sent as it is produced: its status and headers first, then each of ``chunks`` as the
    handler's iterator yields it (server-sent events). ``first`` is the chunk the handler already
    took (errors before it are ordinary error answers)."""

    __slots__ = ("chunks", "first", "headers", "status")

    def __init__(self, chunks: AsyncGenerator[bytes, None], first: bytes, headers: Headers) -> None:
        self.status = 200
        self.chunks = chunks
        self.first = first
        self.headers = headers


def json_response(doc: Any, status: int = 200) -> Response:
    return Response(status, dumps(doc))


class HTTPError(Exception):
    """A transport-level refusal (no route, wrong method, a guard): a status and a message."""

    def __init__(self, status: int, message: str, allow: Optional[str] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow


class Request:
    """One HTTP request as a handler sees it: the ASGI scope, the body (read at most ``max_body`` bytes)
    and the path parameters."""

    __slots__ = ("max_body", "params", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive, params: Dict[str, str], max_body: int) -> None:
        self.scope = scope
        self.receive = receive
        self.params = params
        self.max_body = max_body

    async def body(self) -> bytes:
        limit = self.max_body
        declared = self.header(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise InvalidRequest("Content-Length is not a number") from None
            if size > limit:
                raise PayloadTooLarge(
                    "request body of %d bytes is over the limit of %d bytes (max_request_size)"
                    % (size, limit)
                )
        chunks: List[bytes] = []
        size = 0
        more = True
        while more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise InvalidRequest("client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge("request body is over the limit of %d bytes (max_request_size)" % limit)
            chunks.append(chunk)
            more = message.get("more_body", False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def json(self) -> Any:
        """The body as JSON; None when it is empty."""
        body = await self.body()
        return loads(body) if body else None

    async def gone(self) -> None:
        """Completes when the client disconnects (once the body is read, the next message says so)."""
        while (await self.receive())["type"] != "http.disconnect":
            pass

    @property
    def content_type(self) -> str:
        value = self.header(b"content-type")
        return value.decode("latin-1").split(";")[0].strip().lower() if value else ""

    @property
    def method(self) -> str:
        return str(self.scope["method"])

    @property
    def path(self) -> str:
        return str(self.scope["path"])

    def header(self, name: bytes) -> Optional[bytes]:
        for key, value in self.scope["headers"]:
            if key == name:
                return value  # type: ignore[no-any-return]
        return None

    def headers(self) -> Dict[str, str]:
        """The request's headers, names in lower case (repeated ones joined with commas)."""
        found: Dict[str, str] = {}
        for key, value in self.scope["headers"]:
            name, text = key.decode("latin-1").lower(), value.decode("latin-1")
            found[name] = found[name] + ", " + text if name in found else text
        return found

    def query(self, name: str) -> Optional[str]:
        for part in self.scope.get("query_string", b"").decode("latin-1").split("&"):
            key, _, value = part.partition("=")
            if key == name:
                return unquote(value.replace("+", " "))
        return None


#: What a handler answers.
Answer = Union[Response, StreamingResponse]
Handler = Callable[[Request, Call], Awaitable[Answer]]


class Guard(enum.Enum):
    """What a route sits behind."""

    ADMIN = "admin"  # the admin token, when one is set
    CHANGES = "changes"  # a state-changing call: same origin (CSRF), then the admin token


class Route:
    __slots__ = ("guard", "handler", "method", "parts", "pattern", "protocol", "template")

    def __init__(
        self,
        method: str,
        pattern: str,
        handler: Callable[..., Awaitable[Answer]],
        protocol: Protocol = Protocol.V2_REST,
        guard: Optional[Guard] = None,
    ) -> None:
        self.method = method
        self.pattern = pattern
        self.parts = pattern.strip("/").split("/")
        #: the pattern as MLServer names its parameters (its REST metrics' ``path`` label)
        self.template = pattern.replace("{name}", "{model_name}").replace("{version}", "{model_version}")
        self.handler = handler
        self.protocol = protocol
        self.guard = guard

    def bind(self, owners: Mapping[str, object], guard: Callable[[Guard, Handler], Handler]) -> Route:
        """This route with its handler bound to the object of the class that defines it (``owners``: by
        class name), behind its guard."""
        owner = owners[self.handler.__qualname__.split(".")[0]]
        handler: Handler = self.handler.__get__(owner)
        if self.guard is not None:
            handler = guard(self.guard, handler)
        return Route(self.method, self.pattern, handler, self.protocol)

    def match(self, parts: Sequence[str]) -> Optional[Dict[str, str]]:
        params: Dict[str, str] = {}
        for want, got in zip(self.parts, parts):
            if want[0] == "{":
                if not got:
                    return None
                params[want[1:-1]] = unquote(got) if "%" in got else got
            elif want != got:
                return None
        return params


class Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = list(routes)
        self._index: Dict[Tuple[int, str], List[Route]] = {}
        for route in self.routes:
            first = route.parts[0]
            key = (len(route.parts), "" if first[0] == "{" else first)
            self._index.setdefault(key, []).append(route)

    def find(self, method: str, path: str) -> Tuple[Route, Dict[str, str]]:
        """The route and path parameters for a request; HTTPError 404 or 405 when there is none."""
        parts = path.strip("/").split("/")
        candidates = self._index.get((len(parts), parts[0]), []) + self._index.get((len(parts), ""), [])
        allowed: List[str] = []
        for route in candidates:
            params = route.match(parts)
            if params is None:
                continue
            if route.method == method or (route.method == "GET" and method == "HEAD"):
                return route, params
            allowed.append(route.method)
        if allowed:
            raise HTTPError(
                405,
                "%s is not allowed on %s; use %s" % (method, path, " or ".join(sorted(set(allowed)))),
                allow=", ".join(sorted(set(allowed))),
            )
        raise HTTPError(404, "no route for %s %s" % (method, path))
