"""The data plane: the one pipeline every edge's inference call goes through, and the repository's calls.

An edge decodes its protocol, begins a :class:`~.call.Call`, and calls :meth:`DataPlane.infer` (a V2
request) or :meth:`DataPlane.passthrough` (a body the model's runtime answers in its own protocol); a
stream goes through :meth:`DataPlane.infer_stream`, the same steps chunk by chunk. Both calls go through
:meth:`DataPlane._serve`, in this order:

1. the model is looked up once (its record: state, version, handle);
2. admission: the model is READY and the call's deadline has not passed (the model's own queue bound is
   its handle's: a full queue raises :class:`~envserve.errors.Overloaded`);
3. ``parse``: the V2 document becomes an :class:`~envserve.protocol.InferenceRequest`; ``parameters`` keys
   envserve reserves are refused; the HTTP headers go in as ``parameters.headers`` for models that read
   them (MLServer runtimes);
4. ``model``: the handle answers (inline on the event loop when it says it may, else awaited); a
   sampled copy goes to the model's shadow;
5. what the layers beneath reported (:class:`~envserve.protocol.envelope.Report`) becomes spans, the
   model's own metrics and the call's response headers; V2 answers of MLServer runtimes get MLServer's
   output shapes;
6. the call is counted in the metrics under its protocol, with its status in one vocabulary (HTTP codes).

It raises envserve errors; each edge maps them to its protocol in one table.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any, AsyncGenerator, AsyncIterator, Dict, List, Optional, Tuple, Union

import numpy as np

from .. import __version__
from ..errors import (
    InferenceTimeout,
    InvalidRequest,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
)
from ..protocol.envelope import Passthrough
from ..protocol.v2 import (
    InferenceRequest,
    InferenceResponse,
    RequestInput,
    parse_inference_request,
    reserved_parameter,
)
from ..settings import ModelSettings, ServerSettings
from .call import Call
from .handle import ModelHandle, ModelState
from .metrics import Metrics
from .registry import ModelRecord, ModelRegistry

__all__ = ["DataPlane", "take_response_headers"]

EXTENSIONS = ["model_repository"]

#: A decoded V2 JSON document, or a request an edge built itself (gRPC, KServe V1).
Payload = Union[Dict[str, Any], InferenceRequest]

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


def _release_json_data(doc: Dict[str, Any]) -> None:
    """Drop a parsed document's ``data`` lists (their values now live in numpy arrays).

    The caller's frames keep the document alive while the call waits (for a batch, for a worker), and
    nested lists are what the cyclic garbage collector spends its time on: with many waiting requests its
    passes grow long enough to cost batching its gain (bench/RESULTS.md, batching). Nothing reads the data
    after parsing.
    """
    for inp in doc.get("inputs") or ():
        if isinstance(inp, dict):
            inp.pop("data", None)


def _body_request(body: bytes, passthrough: Passthrough) -> InferenceRequest:
    """A passed-through body as the request the handle carries: its single BYTES element."""
    data = np.empty(1, dtype=object)
    data[0] = body
    return InferenceRequest([RequestInput("body", [1], "BYTES", data)], passthrough=passthrough)


class DataPlane:
    def __init__(self, registry: ModelRegistry, metrics: Optional[Metrics] = None) -> None:
        self.registry = registry
        self.metrics = metrics
        self.started = False  # set once the startup load has finished
        self.draining = False  # set when shutdown begins: readiness turns false first

    @property
    def settings(self) -> ServerSettings:
        return self.registry.settings

    # -- health and metadata ------------------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.started and not self.draining and self.registry.settled

    def server_metadata(self) -> Dict[str, Any]:
        settings = self.registry.settings
        version = settings.server_version or __version__
        return {"name": settings.server_name, "version": version, "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: Optional[str] = None) -> Dict[str, Any]:
        return self.registry.get(name, version).ready_handle().metadata()

    def model_settings(self, name: str, version: Optional[str] = None) -> ModelSettings:
        return self.registry.get(name, version).settings

    def model_ready(self, name: str, version: Optional[str] = None) -> bool:
        return self.registry.get(name, version).state is ModelState.READY

    def model(self, name: str, version: Optional[str] = None) -> ModelRecord:
        """The model's record (state, reason, settings); ModelNotFound when there is none."""
        return self.registry.get(name, version)

    def model_names(self) -> List[str]:
        return sorted({r.name for r in self.registry.records()})

    def pick_model(self, name: Optional[str]) -> str:
        """The model a protocol without model names in its paths (MLflow scoring, Seldon v1) talks to."""
        if name:
            return name
        names = self.model_names()
        if len(names) == 1:
            return names[0]
        raise InvalidRequest(
            "%d models are served (%s); name one with the query parameter ?model=NAME or the header "
            "X-Model-Name" % (len(names), ", ".join(names) or "none")
        )

    def custom_route(self, method: str, path: str) -> Optional[Tuple[str, str]]:
        """The model and handler name of a model's own REST route (MLServer's ``@custom_handler``)."""
        found = self.registry.custom_route(method, path)
        return None if found is None else (found[0].name, found[1]["name"])

    # -- inference ----------------------------------------------------------------------------------------

    async def infer(
        self,
        call: Call,
        name: str,
        version: Optional[str],
        payload: Payload,
        binary: Optional[memoryview] = None,
    ) -> InferenceResponse:
        """One V2 inference: ``payload`` is a decoded V2 JSON document (with ``binary``, the bytes after
        its JSON header, for the binary tensor extension) or a request the edge built."""
        return await self._serve(call, name, version, payload, binary)

    async def passthrough(self, call: Call, name: str, body: bytes) -> InferenceResponse:
        """The body as it arrived, answered by the model's runtime in the protocol ``call.passthrough``
        names; the answer's single BYTES output is the body to send."""
        if call.passthrough is None:
            raise ValueError("a passthrough call names what it passes through (call.passthrough)")
        return await self._serve(call, name, None, _body_request(body, call.passthrough), None)

    async def _serve(
        self,
        call: Call,
        name: str,
        version: Optional[str],
        payload: Payload,
        binary: Optional[memoryview],
    ) -> InferenceResponse:
        record: Optional[ModelRecord] = None
        outcome: Optional[BaseException] = None
        try:
            record = self.registry.get(name, version)
            handle = self._admit(call, record)
            with call.span("parse"):
                request = self._request(call, handle, payload, binary)
            shadow = self.registry.shadows.get(handle.settings.key) if self.registry.shadows else None
            mirrored = shadow.take(request) if shadow is not None else None
            attributes = None
            if call.tracer.enabled:
                attributes = {
                    "envserve.model": handle.settings.name,
                    "envserve.model_version": handle.settings.version or "",
                }
            with call.span("model", attributes):
                if handle.inline_ok(request):
                    response = handle.infer_inline(request)
                else:
                    response = await handle.infer(request, call.gone)
                call.tracer.record(response.report.timings)
            if mirrored is not None and shadow is not None:
                shadow.mirror(mirrored, response)
            self._finish(call, handle.settings, response)
            return response
        except BaseException as exc:
            outcome = exc
            raise
        finally:
            if self.metrics is not None:
                self._count(call, name, version, record, outcome)

    async def infer_stream(
        self, call: Call, name: str, version: Optional[str], payloads: AsyncIterator[Payload]
    ) -> AsyncGenerator[InferenceResponse, None]:
        """A stream: the requests (V2 documents or requests the edge built) go to the model as they come,
        its answers come back as it yields them, each finished as an answer is; the stream is counted
        once in the metrics, when it ends (499 when its client left). A model whose runtime does not stream
        refuses with 400 before anything is sent."""
        record: Optional[ModelRecord] = None
        outcome: Optional[BaseException] = None
        try:
            record = self.registry.get(name, version)
            handle = self._admit(call, record)
            if not handle.capabilities().get("stream"):
                raise InvalidRequest(
                    "model %r does not stream: its runtime has no predict_stream; call its infer endpoint"
                    % record.name,
                    model=record.name,
                )
            settings = handle.settings

            async def requests() -> AsyncIterator[InferenceRequest]:
                async for payload in payloads:
                    yield self._request(call, handle, payload, None)

            # closed here, at once, however the consumer leaves (an abandoned async generator would be
            # closed only when collected, and the model would go on streaming to nobody meanwhile)
            async with contextlib.aclosing(handle.infer_stream(requests(), call.gone)) as answers:
                async for response in answers:
                    self._finish(call, settings, response)
                    yield response
        except BaseException as exc:
            outcome = exc
            raise
        finally:
            if self.metrics is not None:
                self._count(call, name, version, record, outcome)

    def _admit(self, call: Call, record: ModelRecord) -> ModelHandle:
        """The handle that may take this call now: the model is READY and the call's deadline is ahead."""
        handle = record.ready_handle()
        if call.deadline is not None and time.monotonic() >= call.deadline:
            raise InferenceTimeout(
                "the call's deadline passed before model %r was called" % record.name, model=record.name
            )
        return handle

    def _request(
        self, call: Call, handle: ModelHandle, payload: Payload, binary: Optional[memoryview]
    ) -> InferenceRequest:
        if isinstance(payload, InferenceRequest):
            request = payload
        else:
            request = parse_inference_request(payload, binary)
            _release_json_data(payload)
        if request.passthrough is None:
            where = reserved_parameter(request)
            if where is not None:
                raise InvalidRequest(
                    "%s: parameters beginning with 'envserve_' are reserved for envserve's own use; rename "
                    "it" % where
                )
        if handle.capabilities().get("headers"):
            # MLServer runtimes read the HTTP headers (gRPC: the metadata) as parameters.headers
            request.parameters = dict(request.parameters, headers=call.headers)
        return request

    def _finish(self, call: Call, settings: ModelSettings, response: InferenceResponse) -> None:
        report = response.report
        metrics = self.metrics
        if metrics is not None:
            if report.metrics:
                metrics.custom(settings, report.metrics)
            if report.batch_size:
                metrics.observe_batch(settings, report.batch_size)
            if report.queued:
                metrics.observe_queued(settings, report.queued)
        if response.parameters:
            extra = take_response_headers(response)
            if extra:
                call.response_headers.update(extra)
        if call.protocol.v2 and settings.mlserver_shapes:
            for out in response.outputs:
                if len(out.shape) == 1 and out.data.size == out.shape[0]:
                    out.shape = [out.shape[0], 1]
                    out.data = out.data.reshape(out.shape)

    def _count(
        self,
        call: Call,
        name: str,
        version: Optional[str],
        record: Optional[ModelRecord],
        outcome: Optional[BaseException],
    ) -> None:
        assert self.metrics is not None
        if record is not None:
            name, version = record.name, record.version  # the version that answered, also when none was asked
        elif isinstance(outcome, ModelNotFound):
            name, version = "", None  # names from requests are not labels: they would grow without bound
        self.metrics.observe(call.protocol.value, name, version, outcome, time.perf_counter() - call.started)

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
        from ..environments.bom import model_bom
        from ..runtimes import runtime_name

        record = self.registry.get(name, version)
        handle = record.handle
        if record.state is not ModelState.READY or handle is None:
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
        if record.state is not ModelState.READY:
            raise ModelLoadError("model %r failed to load: %s" % (name, record.reason), model=name)

    async def unload(self, name: str) -> None:
        await self.registry.unload_model(name)
