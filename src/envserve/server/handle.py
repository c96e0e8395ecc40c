"""What serves one model version, as the registry and the data plane see it: the :class:`ModelHandle`
protocol and the :class:`ModelState` of a model. Where a handle comes from: :mod:`.placement`."""

from __future__ import annotations

import enum
from typing import Any, AsyncGenerator, AsyncIterator, Dict, Optional, Protocol

from ..protocol.v2 import InferenceRequest, InferenceResponse
from ..settings.model import ModelSettings
from ..workers.admission import ClientGone

__all__ = ["ModelHandle", "ModelState"]


class ModelState(str, enum.Enum):
    """A model version's state, as the repository extension of the Open Inference Protocol names it."""

    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"  # failed to load, or unloaded: the record's reason says which

    def __str__(self) -> str:
        return self.value


class ModelHandle(Protocol):
    """What the registry and the data plane need from a loaded model, wherever it runs."""

    settings: ModelSettings

    async def load(self) -> None: ...

    async def unload(self) -> None: ...

    def inline_ok(self, request: InferenceRequest) -> bool:
        """True when ``infer_inline`` may serve this request now, on the event loop thread."""

    def infer_inline(self, request: InferenceRequest) -> InferenceResponse: ...

    async def infer(self, request: InferenceRequest, gone: Optional[ClientGone] = None) -> InferenceResponse:
        """Serve the request; ``gone`` completes when its client disconnects (the call may then be dropped
        while it waits). Raises :class:`~envserve.errors.Overloaded` when the model's queue is full."""

    def infer_stream(
        self, requests: AsyncIterator[InferenceRequest], gone: Optional[ClientGone] = None
    ) -> AsyncGenerator[InferenceResponse, None]:
        """Serve a stream (the model's ``capabilities()["stream"]``): its requests as the client sends
        them, its answers as the model yields them. Closing the iterator early stops the model's stream."""

    def metadata(self) -> Dict[str, Any]: ...

    def capabilities(self) -> Dict[str, Any]:
        """What the loaded runtime declared beyond its metadata: ``handlers`` (its own REST routes,
        ``[{"name", "method", "path"}]``), ``headers`` (whether it reads the HTTP request headers) and
        ``stream`` (whether it answers streams)."""

    def describe(self) -> Dict[str, Any]: ...

    def problem(self) -> Optional[str]: ...
