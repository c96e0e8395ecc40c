"""The transport-agnostic data plane: what every protocol edge (REST, gRPC, Seldon v1) calls.

It works on decoded documents and protocol objects and raises envserve errors; each transport maps
those errors to its own status codes in one table.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .. import __version__
from ..errors import InvalidRequest, ModelLoadError
from ..protocol.v2 import InferenceResponse, parse_inference_request
from .registry import ModelRegistry, ModelState

__all__ = ["DataPlane"]

EXTENSIONS = ["model_repository"]


class DataPlane:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.started = False  # set once the startup load has finished
        self.draining = False  # set when shutdown begins: readiness turns false first

    # -- health and metadata ------------------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.started and not self.draining and self.registry.settled

    def server_metadata(self) -> Dict[str, Any]:
        return {"name": self.registry.settings.server_name, "version": __version__, "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: Optional[str] = None) -> Dict[str, Any]:
        return self.registry.ready_handle(name, version).metadata()

    def model_ready(self, name: str, version: Optional[str] = None) -> bool:
        return self.registry.get(name, version).state == ModelState.READY

    # -- inference ----------------------------------------------------------------------------------------

    async def infer(
        self, name: str, version: Optional[str], doc: Any, binary: Any = None
    ) -> InferenceResponse:
        handle = self.registry.ready_handle(name, version)
        request = parse_inference_request(doc, binary)
        if handle.inline:
            return handle.infer_inline(request)
        return await handle.infer(request)

    def pick_model(self, name: Optional[str]) -> str:
        """The model a protocol without model names in its paths (MLflow scoring, Seldon v1) talks to."""
        if name:
            return name
        names = sorted({r.name for r in self.registry.records()})
        if len(names) == 1:
            return names[0]
        raise InvalidRequest(
            "%d models are served (%s); name one with the query parameter ?model=NAME or the header "
            "X-Model-Name" % (len(names), ", ".join(names) or "none")
        )

    # -- repository extension -----------------------------------------------------------------------------

    def repository_index(self, doc: Any = None) -> List[Dict[str, Any]]:
        ready_only = False
        if doc:
            if not isinstance(doc, dict):
                raise InvalidRequest('the index request body must be a JSON object such as {"ready": true}')
            ready = doc.get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidRequest("'ready' in the index request must be true or false")
            ready_only = ready
        return self.registry.index(ready_only)

    def model_status(self) -> List[Dict[str, Any]]:
        return self.registry.status()

    async def load(self, name: str) -> None:
        await self.registry.load_model(name)
        record = self.registry.get(name)
        if record.state != ModelState.READY:
            raise ModelLoadError("model %r failed to load: %s" % (name, record.reason), model=name)

    async def unload(self, name: str) -> None:
        await self.registry.unload_model(name)
