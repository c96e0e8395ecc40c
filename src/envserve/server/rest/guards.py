"""Wrappers around handlers: the admin token and the same-origin check (CSRF), and CORS headers."""

from __future__ import annotations

import hmac
from typing import AbstractSet, List, Tuple

from ..call import Call
from .routing import Answer, Handler, HTTPError, Request

__all__ = ["admin_only", "cors_headers", "same_origin"]


def admin_only(handler: Handler, token: bytes) -> Handler:
    """With a token configured, the call needs ``Authorization: Bearer <token>`` (401 otherwise)."""
    if not token:
        return handler
    expected = b"Bearer " + token

    async def guarded(request: Request, call: Call) -> Answer:
        value = request.header(b"authorization")
        if value is None or not hmac.compare_digest(value, expected):
            raise HTTPError(401, "this call needs the admin token: send 'Authorization: Bearer <token>'")
        return await handler(request, call)

    return guarded


def same_origin(handler: Handler, allowed: AbstractSet[bytes]) -> Handler:
    """A browser's state-changing call must come from this server's pages or an allowed origin (CSRF)."""

    async def guarded(request: Request, call: Call) -> Answer:
        origin = request.header(b"origin")
        if origin is not None:  # None: not a browser's cross-site call
            host = request.header(b"host")
            if not (
                (host is not None and origin in (b"http://" + host, b"https://" + host))
                or origin in allowed
                or b"*" in allowed
            ):
                raise HTTPError(
                    403,
                    "cross-site request refused: origin %s may not change this server"
                    % origin.decode("latin-1"),
                )
        return await handler(request, call)

    return guarded


def cors_headers(origin: bytes | None, allowed: AbstractSet[bytes]) -> List[Tuple[bytes, bytes]]:
    """CORS headers for an allowed Origin; none (so browsers refuse) for any other."""
    if origin is not None and allowed and (origin in allowed or b"*" in allowed):
        return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
    return []
