"""The REST edge's limits on what a connection may hold: uvicorn's httptools protocol (the HTTP/1.1 parser
stays httptools'; uvicorn's connection handling stays uvicorn's) with the bounds neither of them has.

- **Head timeout**: a request's line and headers must arrive within ``head_timeout`` of its first byte,
  and a new connection must begin a request within it (uvicorn's keep-alive timer only runs *between*
  requests): a client sending a header a byte a minute, or nothing at all, is answered 408 and closed.
- **Head size**: the request line and headers may hold ``max_head_bytes`` (64 KiB by default); beyond, 431
  and closed — httptools itself keeps growing a header it is still reading.
- **Body idle timeout**: once the headers are in, the body's bytes may not stop for ``body_timeout`` while
  the server is reading (a paused read is the server's doing and does not count): 408 and closed.
- **Requests per connection**: after ``max_requests_per_connection`` the answer says ``Connection: close``.
- **Probes are never starved**: there is no cap that answers every request 503 (uvicorn's
  ``limit_concurrency`` did, probes included); beyond ``max_open`` connections a connection is still read,
  and only health probes and ``/metrics`` are served on it — the rest 503 and closed. Slow connections are
  bounded by the timeouts above, so such a flood ends; the app's own shedding (``max_connections``
  requests in flight) never sheds probes either.

Each answer is written here only while nothing of a response has been sent on the connection.
"""

from __future__ import annotations

import asyncio
from typing import FrozenSet, Optional, Type

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["ALWAYS_SERVED", "PROBES", "EdgeLimits", "edge_protocol"]

#: Health probes are never shed (by the app) nor refused (here): a pod under load must not look dead to
#: its orchestrator.
PROBES = frozenset(
    (
        "/v2/health/live",
        "/v2/health/ready",
        "/health/ping",
        "/health/status",
        "/api/v1.0/health/status",
        "/ping",
    )
)
#: Paths served even on connections beyond ``max_open``: the probes and Prometheus' scrapes.
ALWAYS_SERVED: FrozenSet[bytes] = frozenset(p.encode() for p in PROBES | {"/metrics", "/prometheus"})
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class EdgeLimits:
    """The numbers (settings ``head_timeout``, ``body_timeout``, ``max_head_bytes``,
    ``max_requests_per_connection``; ``max_open`` from ``max_connections``)."""

    def __init__(
        self,
        head_timeout: float = 30.0,
        body_timeout: float = 60.0,
        max_head_bytes: int = 64 * 1024,
        max_requests_per_connection: int = 10_000,
        max_open: int = 0,
    ) -> None:
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.max_head_bytes = max_head_bytes
        self.max_requests_per_connection = max_requests_per_connection
        self.max_open = max_open


def edge_protocol(limits: EdgeLimits, always: FrozenSet[bytes] = ALWAYS_SERVED) -> Type[HttpToolsProtocol]:
    """uvicorn's httptools protocol class with ``limits`` (give it to ``uvicorn.Config(http=...)``)."""

    class EdgeProtocol(_EdgeProtocol):
        pass

    EdgeProtocol.limits = limits
    EdgeProtocol.always = always
    return EdgeProtocol


class _EdgeProtocol(HttpToolsProtocol):
    limits: EdgeLimits
    always: FrozenSet[bytes]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = True  # reading a request's line and headers (or waiting for one)
        self._in_body = False  # reading a request's body
        self._head_bytes = 0
        self._requests = 0
        self._overflow = bool(self.limits.max_open) and len(self.connections) > self.limits.max_open
        self._timer: Optional[asyncio.TimerHandle] = None
        self._arm(self.limits.head_timeout)  # a connection that never begins a request

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._disarm()
        super().connection_lost(exc)

    # -- timers: armed only while a request is partly here, so a request that arrives whole costs none --

    def _arm(self, seconds: float) -> None:
        self._disarm()
        if seconds > 0:
            self._timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._in_body and getattr(self.flow, "read_paused", False):
            self._arm(self.limits.body_timeout)  # the server is not reading: not the client's delay
            return
        if self._in_head or self._in_body:
            self._refuse(408, "the request did not arrive in time")

    # -- bytes ---------------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._in_head and self._head_bytes:
            if self._head_bytes > self.limits.max_head_bytes:
                self._refuse(431, "the request line and headers exceed %d bytes" % self.limits.max_head_bytes)
            elif self._timer is None:
                self._arm(self.limits.head_timeout)  # counted from the head's first bytes, not re-armed
        elif self._in_body:
            self._arm(self.limits.body_timeout)  # an idle timeout: each chunk of the body re-arms it

    def on_headers_complete(self) -> None:
        self._in_head, self._in_body = False, True
        self._disarm()
        self._requests += 1
        path = self.url.split(b"?", 1)[0]
        if self._overflow and path not in self.always:
            self.limit_concurrency = 0  # uvicorn's own way: a plain 503 and Connection: close
        super().on_headers_complete()
        if self.cycle is not None and self._requests >= self.limits.max_requests_per_connection:
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        self._in_body = False
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        super().on_response_complete()

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` and close, when no response has begun on the connection; else just close."""
        self._disarm()
        started = self.cycle is not None and getattr(self.cycle, "response_started", False)
        if not started:
            text = message.encode("ascii")
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(text), text)
            )
        if self.cycle is not None:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.close()
