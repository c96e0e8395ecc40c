"""Wrappers around handlers: the admin token and the same-origin check (CSRF), and CORS headers."""

from __future__ import annotations

import hmac
from typing import AbstractSet, List, Tuple

from ..call import LOOPBACK_ONLY, Call
from .routing import Answer, Handler, HTTPError, Request

__all__ = ["LOOPBACK_HOSTS", "admin_only", "cors_headers", "loopback_only", "same_origin"]


def loopback_only(handler: Handler) -> Handler:
    """Without an admin token, state-changing calls are for clients on this machine only (403 beyond)."""

    async def guarded(request: Request, call: Call) -> Answer:
        if not call.loopback:
            raise HTTPError(403, LOOPBACK_ONLY)
        return await handler(request, call)

    return guarded


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


#: The names a browser on this machine reaches a loopback server by.
LOOPBACK_HOSTS = frozenset((b"localhost", b"127.0.0.1", b"[::1]", b"::1"))


def _hostname(authority: bytes) -> bytes:
    """``host[:port]`` or ``[v6]:port`` -> its host, lower-cased."""
    authority = authority.strip().lower()
    if authority.startswith(b"["):
        return authority[: authority.find(b"]") + 1] if b"]" in authority else authority
    return authority.rsplit(b":", 1)[0] if authority.count(b":") == 1 else authority


def same_origin(
    handler: Handler, allowed: AbstractSet[bytes], hosts: AbstractSet[bytes] = LOOPBACK_HOSTS
) -> Handler:
    """A browser's state-changing call must come from this server's own pages or from an origin listed
    exactly in ``cors_origins`` (CSRF). "This server's own" is the request's ``Host`` only when that
    host is one the server is known by (``allowed_hosts``: loopback names and its own address by
    default): a page from a name an attacker controls, resolved to this server (DNS rebinding), sends
    that name as its Host and its Origin alike, and is refused. ``*`` in ``cors_origins`` lets any
    origin *read*; it never lets one change the server. A browser that says the call is cross-site
    (``Sec-Fetch-Site: cross-site``) is refused even without an Origin."""

    async def guarded(request: Request, call: Call) -> Answer:
        origin = request.header(b"origin")
        site = request.header(b"sec-fetch-site")
        if origin is None and site != b"cross-site":
            return await handler(request, call)  # not a browser's cross-site call
        host = request.header(b"host")
        own = (
            origin is not None
            and host is not None
            and origin in (b"http://" + host, b"https://" + host)
            and _hostname(host) in hosts
        )
        if not (own or (origin is not None and origin in allowed)):
            shown = (origin or b"(none, cross-site)").decode("latin-1")
            raise HTTPError(
                403,
                "cross-site request refused: origin %s may not change this server (list it in cors_origins, "
                "or call it by a name in allowed_hosts)" % shown,
            )
        return await handler(request, call)

    return guarded


def cors_headers(origin: bytes | None, allowed: AbstractSet[bytes]) -> List[Tuple[bytes, bytes]]:
    """CORS headers for an allowed Origin; none (so browsers refuse) for any other."""
    if origin is not None and allowed and (origin in allowed or b"*" in allowed):
        return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
    return []
