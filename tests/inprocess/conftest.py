"""In-process fixtures: a Server object (registry, data plane, REST app) built from a repository and driven
through its ASGI app with httpx's ASGITransport, without a server subprocess or a socket."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Coroutine

import httpx
import pytest

from envserve.server.serve import Server
from envserve.settings import ServerSettings


@pytest.fixture
def arun() -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Run a coroutine to completion on a fresh event loop."""
    return lambda coro: asyncio.run(coro)


@contextlib.asynccontextmanager
async def served(repo: Path, **settings: Any) -> AsyncIterator[Server]:
    """A Server for ``repo`` with its models loaded (what ``serve`` does before it says ready)."""
    settings.setdefault("trust_model_code", True)  # most of these serve runtime classes of their own
    server = Server(ServerSettings(model_repository=str(repo), **settings))
    await server.registry.load_repository()
    server.dataplane.started = True
    try:
        yield server
    finally:
        await server.registry.close()


def client(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), base_url="http://envserve")
