"""Open Inference Protocol V2 over REST: health, metadata, inference (JSON and binary tensors), repository."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from typing import Any, AsyncGenerator, AsyncIterator, List, Optional, Tuple

from ... import __version__
from ...errors import EnvserveError, InvalidRequest
from ...protocol.generate import from_generate, is_generate, to_generate
from ...protocol.v2 import InferenceRequest, InferenceResponse, parse_inference_request
from ..call import Call
from ..dataplane import DataPlane
from ..status import http_status
from . import openapi
from .routing import Answer, Request, Response, StreamingResponse, dumps, json_response, loads

__all__ = ["V2Handlers"]

logger = logging.getLogger("envserve.rest")

#: The headers of a stream of server-sent events (no proxy buffering, no caching).
SSE = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class V2Handlers:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    async def server_metadata(self, request: Request, call: Call) -> Response:
        return json_response(self.dp.server_metadata())

    async def live(self, request: Request, call: Call) -> Response:
        live = self.dp.live()
        return json_response({"live": live}, 200 if live else 400)

    async def ready(self, request: Request, call: Call) -> Response:
        ready = self.dp.ready()
        return json_response({"ready": ready}, 200 if ready else 400)

    async def model_metadata(self, request: Request, call: Call) -> Response:
        return json_response(self.dp.model_metadata(request.params["name"], request.params.get("version")))

    async def model_ready(self, request: Request, call: Call) -> Response:
        name = request.params["name"]
        ready = self.dp.model_ready(name, request.params.get("version"))
        return json_response({"name": name, "ready": ready}, 200 if ready else 400)

    async def infer(self, request: Request, call: Call) -> Response:
        name, version = request.params["name"], request.params.get("version")
        header_length = _header_length(request)
        body = await request.body()
        if header_length is not None and header_length > len(body):
            raise InvalidRequest(
                "Inference-Header-Content-Length %d is more than the %d-byte body"
                % (header_length, len(body))
            )
        payload: Any
        binary: Optional[memoryview] = None
        if len(body) > OFF_LOOP_BYTES:
            # a large body is read into tensors in a thread: the event loop keeps answering probes and
            # other calls meanwhile (the thread yields the interpreter every few milliseconds)
            payload = await asyncio.get_running_loop().run_in_executor(None, _parse, body, header_length)
            params: Any = payload.parameters
        else:
            if header_length is None:
                payload = loads(body) if body else None
            else:  # binary tensor extension: a JSON header, then the inputs' raw bytes
                payload = loads(body[:header_length])
                binary = memoryview(body)[header_length:]
            params = payload.get("parameters") if isinstance(payload, dict) else None
        binary_all = isinstance(params, dict) and bool(params.get("binary_data_output"))
        response = await self.dp.infer(call, name, version, payload, binary)
        with call.span("encode"):
            return _encode(response, binary_all)  # plain JSON unless binary outputs were asked for

    async def generate(self, request: Request, call: Call) -> Response:
        """The generate extension (fields in, fields out), or a V2 request as MLServer's clients send one
        to this route."""
        name, version = request.params["name"], request.params.get("version")
        doc = await request.json()
        if is_generate(doc):
            response = await self.dp.infer(call, name, version, from_generate(doc))
            return json_response(to_generate(response))
        response = await self.dp.infer(call, name, version, doc)
        return _encode(response, False)

    async def infer_stream(self, request: Request, call: Call) -> Answer:
        """Server-sent events, one ``data:`` event per answer of the model's stream (a V2 response; for a
        generate-extension body, the generate extension's fields). An error before the first answer is an
        ordinary error answer; one after it is an ``error`` event, and the stream ends."""
        name, version = request.params["name"], request.params.get("version")
        doc = await request.json()
        generate = is_generate(doc) and request.path.endswith("/generate_stream")
        payload = from_generate(doc) if generate else doc

        async def one() -> AsyncIterator[Any]:
            yield payload

        answers = self.dp.infer_stream(call, name, version, one())
        try:
            first = await answers.__anext__()
        except StopAsyncIteration:
            return Response(200, b"", SSE)

        def event(answer: InferenceResponse) -> bytes:
            return b"data: " + dumps(to_generate(answer) if generate else answer.to_dict()) + b"\n\n"

        async def events() -> AsyncGenerator[bytes, None]:
            try:
                async for answer in answers:
                    yield event(answer)
            except EnvserveError as exc:
                yield (
                    b"event: error\ndata: "
                    + dumps({"error": exc.message, "status": http_status(exc)})
                    + b"\n\n"
                )
            except Exception:
                logger.exception("model %r failed while streaming", name)
                yield (
                    b"event: error\ndata: "
                    + dumps({"error": "internal server error; see the server log"})
                    + b"\n\n"
                )
            finally:
                await answers.aclose()

        return StreamingResponse(events(), event(first), SSE)

    async def docs(self, request: Request, call: Call) -> Response:
        return json_response(openapi.dataplane(__version__))

    async def model_docs(self, request: Request, call: Call) -> Response:
        metadata = self.dp.model_metadata(request.params["name"], None)
        return json_response(openapi.for_model(__version__, metadata))

    async def docs_page(self, request: Request, call: Call) -> Response:
        return Response(200, _docs_page(), [(b"content-type", b"text/html; charset=utf-8")])

    async def repository_index(self, request: Request, call: Call) -> Response:
        return json_response(self.dp.repository_index(await _object_body(request, "index")))

    async def load(self, request: Request, call: Call) -> Response:
        await _object_body(request, "load")
        await self.dp.load(request.params["name"])
        return Response(200, b"{}")

    async def unload(self, request: Request, call: Call) -> Response:
        await _object_body(request, "unload")
        await self.dp.unload(request.params["name"])
        return Response(200, b"{}")


async def _object_body(request: Request, call: str) -> Any:
    """A repository call's body: none at all, or a JSON object (``null``, a list... are 400)."""
    body = await request.body()
    if not body:
        return {}
    doc = loads(body)
    if not isinstance(doc, dict):
        raise InvalidRequest('the %s request body must be a JSON object such as {"ready": true}' % call)
    return doc


#: Bodies larger than this are parsed off the event loop.
OFF_LOOP_BYTES = 1 << 20


def _parse(body: bytes, header_length: Optional[int]) -> InferenceRequest:
    """A V2 request body (JSON, or the binary extension's header and bytes) as tensors."""
    if header_length is None:
        return parse_inference_request(loads(body), None)
    return parse_inference_request(loads(body[:header_length]), memoryview(body)[header_length:])


def _header_length(request: Request) -> Optional[int]:
    value = request.header(b"inference-header-content-length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise InvalidRequest("Inference-Header-Content-Length is not a number") from None
    if length < 0:
        raise InvalidRequest("Inference-Header-Content-Length must not be negative")
    return length


def _encode(response: InferenceResponse, binary_all: bool) -> Response:
    buffers: List[Any] = []
    head = dumps(response.to_dict(binary=buffers, binary_all=binary_all))
    if not buffers:
        return Response(200, head)
    headers: List[Tuple[bytes, bytes]] = [
        (b"content-type", b"application/octet-stream"),
        (b"inference-header-content-length", str(len(head)).encode()),
    ]
    return Response(200, b"".join([head, *buffers]), headers)


@functools.lru_cache(maxsize=None)
def _docs_page() -> bytes:
    """The API page (shipped in the package: server/docs_static/index.html), read once."""
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs_static", "index.html")
    with open(path, "rb") as f:
        return f.read()
