"""The transport-agnostic data plane: what every protocol edge (REST, gRPC, Seldon v1) calls.

It works on decoded documents and protocol objects and raises envserve errors; each transport maps
those errors to its own status codes in one table.
"""

from __future__ import annotations

import contextlib
import re
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import __version__
from ..errors import EnvserveError, InvalidRequest, ModelLoadError, ModelNotFound, ModelNotReady
from ..protocol.v2 import InferenceRequest, InferenceResponse, RequestInput, parse_inference_request
from ..runtimes.base import CUSTOM_METRICS, HANDLER_ANSWER, HANDLER_CALL, TIMINGS
from ..settings import ModelSettings
from ..workers.admission import ClientGone
from .registry import ModelRegistry, ModelState
from .shadow import Shadow

__all__ = ["DataPlane", "take_response_headers"]

EXTENSIONS = ["model_repository"]


_HEADER_NAME = re.compile(r"^[0-9a-z!#$%&'*+.^_`|~-]+$")
_RESERVED_HEADERS = {"content-type", "content-length", "transfer-encoding", "connection", "te", "trailer"}


def take_response_headers(response: InferenceResponse) -> Dict[str, str]:
    """The headers an MLServer runtime set as ``parameters.headers`` of its response, removed from it:
    names lower-cased, and only those a transport may carry (a token name, not reserved, not ``grpc-``;
    a value without control characters) -- a model cannot break the framing or forge a status."""
    extra = response.parameters.pop("headers", None) if response.parameters else None
    if not isinstance(extra, dict):
        return {}
    headers = {}
    for key, value in extra.items():
        name, text = str(key).lower(), str(value)
        if (
            _HEADER_NAME.match(name)
            and name not in _RESERVED_HEADERS
            and not name.startswith("grpc-")
            and all(32 <= ord(c) < 127 or c == "\t" for c in text)
        ):
            headers[name] = text
    return headers


def _release_json_data(doc: Any) -> None:
    """Drop a parsed document's ``data`` lists (their values now live in numpy arrays).

    The caller's frames keep the document alive while the call waits (for a batch, for a worker), and
    nested lists are what the cyclic garbage collector spends its time on: with many waiting requests its
    passes grew long enough to cost batching its gain (bench/RESULTS.md, batching). Nothing reads the data
    after parsing.
    """
    if isinstance(doc, dict):
        for inp in doc.get("inputs") or ():
            if isinstance(inp, dict):
                inp.pop("data", None)


class DataPlane:
    def __init__(self, registry: ModelRegistry, metrics: Optional[Any] = None) -> None:
        self.registry = registry
        self.metrics = metrics  # envserve.server.metrics.Metrics, when metrics are on
        self.started = False  # set once the startup load has finished
        self.draining = False  # set when shutdown begins: readiness turns false first
        self.tracing: Optional[Any] = None  # a server.tracing.Tracing when tracing_endpoint is set

    # -- health and metadata ------------------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.started and not self.draining and self.registry.settled

    def server_metadata(self) -> Dict[str, Any]:
        return {"name": self.registry.settings.server_name, "version": __version__, "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: Optional[str] = None) -> Dict[str, Any]:
        return self.registry.ready_handle(name, version).metadata()

    def model_settings(self, name: str, version: Optional[str] = None) -> ModelSettings:
        return self.registry.get(name, version).settings

    def model_ready(self, name: str, version: Optional[str] = None) -> bool:
        return self.registry.get(name, version).state == ModelState.READY

    # -- inference ----------------------------------------------------------------------------------------

    async def infer(
        self,
        name: str,
        version: Optional[str],
        payload: Any,
        binary: Any = None,
        protocol: str = "",
        gone: Optional[ClientGone] = None,
        mlserver_shapes: bool = False,
    ) -> InferenceResponse:
        """Run one inference. ``payload`` is a decoded V2 JSON document (with ``binary`` for the binary
        tensor extension) or an already built :class:`InferenceRequest`. Counted in the metrics under the
        edge's ``protocol`` label, with the outcome (the edge's own table names its status). ``gone``
        completes when the client disconnects: a call still waiting in a queue then never runs. With
        ``mlserver_shapes`` (the V2 edges), models that name an MLServer runtime answer one-dimensional
        outputs as [N, 1], as MLServer does (``ModelSettings.mlserver_shapes``)."""
        metrics = self.metrics
        if metrics is None:
            return await self._infer(name, version, payload, binary, gone, mlserver_shapes)
        started = time.perf_counter()
        outcome: Optional[BaseException] = None
        try:
            response = await self._infer(name, version, payload, binary, gone, mlserver_shapes)
            version = response.model_version  # the version that answered, also when none was asked for
            return response
        except BaseException as exc:
            outcome = exc
            if isinstance(exc, ModelNotFound):
                name, version = "", None  # names from requests are not labels: they would grow without bound
            else:
                with contextlib.suppress(EnvserveError):
                    version = self.registry.get(name, version).version
            raise
        finally:
            metrics.observe(name, version, protocol, outcome, time.perf_counter() - started)

    async def _infer(
        self,
        name: str,
        version: Optional[str],
        payload: Any,
        binary: Any,
        gone: Optional[ClientGone],
        mlserver_shapes: bool,
    ) -> InferenceResponse:
        handle = self.registry.ready_handle(name, version)
        tracing = self.tracing
        if tracing is not None:
            return await self._traced(tracing, handle, payload, binary, gone, mlserver_shapes)
        if isinstance(payload, InferenceRequest):
            request = payload
        else:
            request = parse_inference_request(payload, binary)
            _release_json_data(payload)
        shadow, mirrored = self._mirror(handle, request)
        if handle.inline_ok(request):
            response = handle.infer_inline(request)
        else:
            response = await handle.infer(request, gone)
        response.parameters.pop(TIMINGS, None)
        if mirrored is not None and shadow is not None:
            shadow.mirror(mirrored, response)
        return self._finish(handle, response, mlserver_shapes)

    async def _traced(
        self,
        tracing: Any,
        handle: Any,
        payload: Any,
        binary: Any,
        gone: Optional[ClientGone],
        mlserver_shapes: bool,
    ) -> InferenceResponse:
        """:meth:`_infer` with its stages as spans (server/tracing.py)."""
        with tracing.span("parse"):
            if isinstance(payload, InferenceRequest):
                request = payload
            else:
                request = parse_inference_request(payload, binary)
                _release_json_data(payload)
        attributes = {
            "envserve.model": handle.settings.name,
            "envserve.model_version": handle.settings.version or "",
        }
        shadow, mirrored = self._mirror(handle, request)
        with tracing.span("model", attributes):
            if handle.inline_ok(request):
                response = handle.infer_inline(request)
            else:
                response = await handle.infer(request, gone)
            tracing.record(response.parameters.pop(TIMINGS, None))
        if mirrored is not None and shadow is not None:
            shadow.mirror(mirrored, response)
        return self._finish(handle, response, mlserver_shapes)

    def _mirror(
        self, handle: Any, request: InferenceRequest
    ) -> Tuple[Optional[Shadow], Optional[InferenceRequest]]:
        """The model's shadow and the copy of ``request`` to send it, when this request is sampled."""
        shadow = self.registry.shadows.get(handle.settings.key) if self.registry.shadows else None
        return shadow, shadow.take(request) if shadow is not None else None

    def _finish(self, handle: Any, response: InferenceResponse, mlserver_shapes: bool) -> InferenceResponse:
        custom = response.parameters.pop(CUSTOM_METRICS, None)
        if custom and self.metrics is not None:
            self.metrics.custom(handle.settings, custom)
        if mlserver_shapes and handle.settings.mlserver_shapes:
            for out in response.outputs:
                if len(out.shape) == 1:
                    out.shape = [out.shape[0], 1]
                    out.data = out.data.reshape(out.shape)
        return response

    def wants_headers(self, name: str, version: Optional[str] = None) -> bool:
        """Whether the model reads the request's HTTP headers (MLServer runtimes: ``parameters.headers``)."""
        try:
            return bool(self.registry.ready_handle(name, version).capabilities().get("headers"))
        except EnvserveError:
            return False  # the inference call itself says what is wrong

    def custom_route(self, method: str, path: str) -> Optional[Tuple[str, str]]:
        """The model and handler name of a model's own REST route (MLServer's ``@custom_handler``)."""
        found = self.registry.custom_route(method, path)
        return None if found is None else (found[0].name, found[1]["name"])

    async def call_handler(
        self, name: str, handler: str, body: bytes, call: Dict[str, Any], gone: Optional[ClientGone] = None
    ) -> Tuple[int, Dict[str, str], bytes]:
        """Call a model's own REST route: the body and ``call`` (method, path, query, headers) go to the
        model as they arrived; the answer is its status, headers and body."""
        data = np.empty(1, dtype=object)
        data[0] = body
        request = InferenceRequest(
            [RequestInput("body", [1], "BYTES", data)], parameters={HANDLER_CALL: dict(call, name=handler)}
        )
        response = await self.infer(name, None, request, protocol="rest", gone=gone)
        answer = response.parameters.get(HANDLER_ANSWER) or {}
        headers = answer.get("headers") or {}
        return int(answer.get("status", 200)), dict(headers), bytes(response.outputs[0].data.ravel()[0])

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

    async def model_bom(self, name: str, version: Optional[str] = None) -> Dict[str, Any]:
        """The model's CycloneDX ML-BOM: its files, the Python and packages of the environment it runs in."""
        import asyncio

        from ..environments.bom import model_bom
        from ..runtimes import runtime_name

        record = self.registry.get(name, version)
        handle = record.handle
        if record.state != ModelState.READY or handle is None:
            raise ModelNotReady(
                "model %r is %s: its bill of materials describes the environment it runs in, so it is made "
                "once the model is READY" % (name, record.state),
                model=name,
            )
        described = handle.describe()
        settings = handle.settings  # the local copy of a fetched model
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(  # hashing the files reads them
            None,
            lambda: model_bom(
                settings,
                runtime=runtime_name(settings),
                environment=described.get("environment"),
                source_uri=record.settings.uri,
                tool_version=__version__,
            ),
        )

    def shadow(self, name: str, version: Optional[str] = None) -> Dict[str, Any]:
        """What the model's shadow found (``parameters.shadow_environment``)."""
        record = self.registry.get(name, version)
        shadow = self.registry.shadows.get(record.settings.key)
        if shadow is None:
            raise ModelNotFound(
                "model %r has no shadow; name a candidate environment in its parameters.shadow_environment"
                % name,
                model=name,
            )
        return shadow.snapshot()

    async def load(self, name: str) -> None:
        await self.registry.load_model(name)
        record = self.registry.get(name)
        if record.state != ModelState.READY:
            raise ModelLoadError("model %r failed to load: %s" % (name, record.reason), model=name)

    async def unload(self, name: str) -> None:
        await self.registry.unload_model(name)
