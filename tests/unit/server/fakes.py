"""Fakes for driving the data plane and the edges in process: a model handle whose answers a test
decides, a placement that makes them, a tracer that records what it was asked, and a server assembled
from those with the real registry, data plane, metrics and edges (as uvicorn tests its supervisor with
fake processes). Nothing here opens a socket or starts a process."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from envserve.environments import EnvironmentCache
from envserve.protocol.v2 import InferenceRequest, InferenceResponse, ResponseOutput
from envserve.server.call import Calls
from envserve.server.dataplane import DataPlane
from envserve.server.grpc.service import InferenceService
from envserve.server.metrics import Metrics
from envserve.server.placement import Placement
from envserve.server.registry import ModelRegistry
from envserve.server.rest.app import RestApp, route_taken
from envserve.settings import ModelSettings, ServerSettings

#: What a fake model does with a request: an answer, or it raises.
Behaviour = Callable[[InferenceRequest], InferenceResponse]


def echo(settings: ModelSettings) -> Behaviour:
    """Answers its first input as output ``out``."""

    def answer(request: InferenceRequest) -> InferenceResponse:
        data = request.inputs[0].data
        return InferenceResponse(
            settings.name, [ResponseOutput("out", list(data.shape), "INT64", data)], settings.version
        )

    return answer


def raising(exc: BaseException) -> Callable[[ModelSettings], Behaviour]:
    def make(settings: ModelSettings) -> Behaviour:
        def answer(request: InferenceRequest) -> InferenceResponse:
            raise exc

        return answer

    return make


class FakeHandle:
    """A ModelHandle whose answers are ``behaviour``'s; it keeps every request it was given."""

    def __init__(
        self,
        settings: ModelSettings,
        behaviour: Behaviour,
        capabilities: Optional[Dict[str, Any]] = None,
        inline: bool = False,
    ) -> None:
        self.settings = settings
        self.behaviour = behaviour
        self._capabilities = capabilities or {}
        self.inline = inline
        self.requests: List[InferenceRequest] = []
        self.inline_calls = 0
        self.gone: List[Any] = []

    async def load(self) -> None:
        return None

    async def unload(self) -> None:
        return None

    def inline_ok(self, request: InferenceRequest) -> bool:
        return self.inline

    def infer_inline(self, request: InferenceRequest) -> InferenceResponse:
        self.inline_calls += 1
        self.requests.append(request)
        return self.behaviour(request)

    async def infer(self, request: InferenceRequest, gone: Any = None) -> InferenceResponse:
        self.requests.append(request)
        self.gone.append(gone)
        await asyncio.sleep(0)
        return self.behaviour(request)

    def metadata(self) -> Dict[str, Any]:
        return {"name": self.settings.name, "versions": [], "platform": "", "inputs": [], "outputs": []}

    def capabilities(self) -> Dict[str, Any]:
        return self._capabilities

    def describe(self) -> Dict[str, Any]:
        return {"runtime": "FakeHandle", "environment": None}

    def problem(self) -> Optional[str]:
        return None


class FakePlacement(Placement):
    """Makes a FakeHandle per model, from ``models``: name -> (behaviour factory, capabilities, inline)."""

    def __init__(
        self, settings: ServerSettings, environments: EnvironmentCache, models: Dict[str, Any]
    ) -> None:
        super().__init__(settings, environments)
        self.models = models
        self.handles: Dict[str, FakeHandle] = {}

    def make(self, model: ModelSettings, batching: bool = True) -> FakeHandle:  # type: ignore[override]
        make, capabilities, inline = self.models[model.name]
        handle = FakeHandle(model, make(model), capabilities, inline)
        self.handles[model.name] = handle
        return handle


class RecordingTracer:
    """A Tracer that records the calls' spans, their stages and the timings reported."""

    enabled = True

    def __init__(self) -> None:
        self.opened: List[Tuple[str, Dict[str, str], Dict[str, Any]]] = []
        self.closed: List[Tuple[Dict[str, Any], bool]] = []
        self.stages: List[str] = []
        self.timings: List[Dict[str, List[float]]] = []

    def open(self, name: str, carrier: Any, attributes: Dict[str, Any]) -> Any:
        self.opened.append((name, dict(carrier), dict(attributes)))
        return name

    def close(self, opened: Any, attributes: Dict[str, Any], error: bool) -> None:
        self.closed.append((dict(attributes), error))

    @contextlib.contextmanager
    def span(self, name: str, attributes: Optional[Dict[str, Any]] = None) -> Any:
        self.stages.append(name)
        yield None

    def record(self, timings: Any) -> None:
        self.timings.append(dict(timings))

    def shutdown(self) -> None:
        return None


class Assembled:
    """The real registry, data plane, metrics and both edges over fake model handles."""

    def __init__(self, tmp_path: Any, models: Dict[str, Any], tracer: Any = None, **settings: Any) -> None:
        self.settings = ServerSettings(model_repository=str(tmp_path), **settings)
        self.placement = FakePlacement(self.settings, EnvironmentCache(str(tmp_path / "envs")), models)
        self.registry = ModelRegistry(self.settings, self.placement, route_taken(console=False))
        self.metrics = Metrics(self.registry)
        self.dataplane = DataPlane(self.registry, self.metrics)
        self.calls = Calls(tracer) if tracer is not None else Calls()
        self.app = RestApp(self.dataplane, self.calls, self.settings.max_request_size, self.metrics)
        self.grpc = InferenceService(self.dataplane, self.calls).handlers()

    async def load(self, name: str, **fields: Any) -> FakeHandle:
        record = self.registry.add_settings(ModelSettings(name=name, **fields))
        await self.registry.load_record(record)
        assert record.state == "READY", record.reason
        return self.placement.handles[name]

    def requests(self, protocol: str, status: str, model: str = "m", version: str = "") -> float:
        """How many calls the metrics counted for these labels."""
        value = self.metrics.registry.get_sample_value(
            "envserve_requests_total",
            {"model": model, "version": version, "protocol": protocol, "status": status},
        )
        return value or 0.0


def model(
    make: Callable[[ModelSettings], Behaviour] = echo, capabilities: Any = None, inline: bool = False
) -> Any:
    return (make, capabilities, inline)


def v2_body(values: Any = (1, 2), **extra: Any) -> Dict[str, Any]:
    values = list(values)
    doc: Dict[str, Any] = {
        "inputs": [{"name": "x", "shape": [len(values)], "datatype": "INT64", "data": values}]
    }
    doc.update(extra)
    return doc


def int_array(values: Any) -> np.ndarray:
    return np.asarray(list(values), dtype=np.int64)
