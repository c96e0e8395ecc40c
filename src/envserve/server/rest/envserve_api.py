"""envserve's own API under ``/envserve/``: model status always; the console's calls when it is on."""

from __future__ import annotations

from typing import Optional

from ..call import Call
from ..console import ConsoleAPI
from ..dataplane import DataPlane
from .routing import HTTPError, Request, Response, json_response

__all__ = ["EnvserveAPI"]


class EnvserveAPI:
    def __init__(self, dataplane: DataPlane, console: Optional[ConsoleAPI]) -> None:
        self.dp = dataplane
        self.console = console

    async def models(self, request: Request, call: Call) -> Response:
        """Runtimes, environments, workers (and traffic when the console is on)."""
        return json_response(self.console.models() if self.console is not None else self.dp.model_status())

    async def bom(self, request: Request, call: Call) -> Response:
        """The model's CycloneDX ML-BOM (``/envserve/models/{name}[/versions/{version}]/bom``)."""
        return json_response(await self.dp.model_bom(request.params["name"], request.params.get("version")))

    async def shadow(self, request: Request, call: Call) -> Response:
        """What the model's shadow environment answered (``/envserve/models/{name}/shadow``)."""
        return json_response(self.dp.shadow(request.params["name"], request.params.get("version")))

    async def console_off(self, request: Request, call: Call) -> Response:
        raise HTTPError(
            404, "no route for %s; start the server with --console for the console API" % request.path
        )

    # the console's calls (routed only when it is on)
    def _console(self) -> ConsoleAPI:
        if self.console is None:
            raise HTTPError(404, "the console is off; start the server with --console")
        return self.console

    async def environments(self, request: Request, call: Call) -> Response:
        return json_response(self._console().environments())

    async def registry_models(self, request: Request, call: Call) -> Response:
        return json_response(self._console().registry_models())

    async def platform(self, request: Request, call: Call) -> Response:
        return json_response(self._console().platform())

    async def prune(self, request: Request, call: Call) -> Response:
        await request.json()
        return json_response(await self._console().prune())

    async def render(self, request: Request, call: Call) -> Response:
        return json_response(self._console().render(await request.json()))

    async def set_image(self, request: Request, call: Call) -> Response:
        return json_response(self._console().set_image(await request.json()))
