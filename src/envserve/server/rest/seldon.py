"""Seldon Core v1's protocol (its Python wrapper's routes), over the same data plane; errors leave in
Seldon's own body."""

from __future__ import annotations

from typing import Awaitable, Callable

from ...errors import EnvserveError
from ...protocol import seldon
from ..dataplane import DataPlane
from .errors import status_for
from .mlflow import model_hint
from .routing import Handler, Request, Response, dumps, json_response

__all__ = ["SeldonHandlers"]


def seldon_errors(handler: Callable[[Request], Awaitable[Response]]) -> Handler:
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except EnvserveError as exc:
            status = status_for(exc)
            return Response(status, dumps(seldon.error_body(status, exc.message)))

    return wrapped


class SeldonHandlers:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    async def predictions(self, request: Request) -> Response:
        doc, kind, _ = seldon.to_v2_request(await request.json())
        name = self.dp.pick_model(model_hint(request))
        response = await self.dp.infer(name, None, doc, protocol="seldon", gone=request.gone)
        return json_response(seldon.to_seldon_response(response, kind))

    async def ping(self, request: Request) -> Response:
        return json_response("pong")

    async def status(self, request: Request) -> Response:
        ready = self.dp.ready()
        return json_response({"status": "ok" if ready else "not ready"}, 200 if ready else 503)

    async def metadata(self, request: Request) -> Response:
        meta = self.dp.model_metadata(self.dp.pick_model(model_hint(request)))
        return json_response(
            {
                "name": meta["name"],
                "versions": meta.get("versions", []),
                "platform": meta.get("platform", ""),
                "inputs": meta.get("inputs", []),
                "outputs": meta.get("outputs", []),
            }
        )
