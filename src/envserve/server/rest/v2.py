"""Open Inference Protocol V2 over REST: health, metadata, inference (JSON and binary tensors), repository."""

from __future__ import annotations

import functools
import os
from typing import Any, List, Optional, Tuple

from ... import __version__
from ...errors import InvalidRequest
from ..dataplane import DataPlane, take_response_headers
from . import openapi
from .routing import Request, Response, dumps, json_response, loads

__all__ = ["V2Handlers"]


class V2Handlers:
    def __init__(self, dataplane: DataPlane, protocol: str = "rest") -> None:  # the metrics' label
        self.dp = dataplane
        self.protocol = protocol

    async def server_metadata(self, request: Request) -> Response:
        return json_response(self.dp.server_metadata())

    async def live(self, request: Request) -> Response:
        live = self.dp.live()
        return json_response({"live": live}, 200 if live else 400)

    async def ready(self, request: Request) -> Response:
        ready = self.dp.ready()
        return json_response({"ready": ready}, 200 if ready else 400)

    async def model_metadata(self, request: Request) -> Response:
        return json_response(self.dp.model_metadata(request.params["name"], request.params.get("version")))

    async def model_ready(self, request: Request) -> Response:
        name = request.params["name"]
        ready = self.dp.model_ready(name, request.params.get("version"))
        return json_response({"name": name, "ready": ready}, 200 if ready else 400)

    async def infer(self, request: Request) -> Response:
        name, version = request.params["name"], request.params.get("version")
        header_length = _header_length(request)
        if header_length is None:
            doc = await request.json()
            binary = None
        else:  # binary tensor extension: a JSON header, then the inputs' raw bytes
            body = await request.body()
            if header_length > len(body):
                raise InvalidRequest(
                    "Inference-Header-Content-Length %d is more than the %d-byte body"
                    % (header_length, len(body))
                )
            doc = loads(body[:header_length])
            binary = memoryview(body)[header_length:]
        if isinstance(doc, dict) and self.dp.wants_headers(name, version):
            # MLServer runtimes read the HTTP headers as parameters.headers (replacing any sent there)
            params = doc.get("parameters")
            doc["parameters"] = dict(params if isinstance(params, dict) else {}, headers=request.headers())
        response = await self.dp.infer(
            name, version, doc, binary, protocol=self.protocol, gone=request.gone, mlserver_shapes=True
        )
        extra = take_response_headers(response)  # MLServer runtimes set them as parameters.headers
        if self.dp.tracing is not None:
            with self.dp.tracing.span("encode"):
                answer = _binary_response(response, doc)
        else:
            answer = _binary_response(response, doc)  # plain JSON unless binary outputs were asked for
        if extra:
            answer.headers = answer.headers + [
                (k.encode("ascii"), v.encode("ascii")) for k, v in extra.items()
            ]
        return answer

    async def docs(self, request: Request) -> Response:
        return json_response(openapi.dataplane(__version__))

    async def model_docs(self, request: Request) -> Response:
        metadata = self.dp.model_metadata(request.params["name"], None)
        return json_response(openapi.for_model(__version__, metadata))

    async def docs_page(self, request: Request) -> Response:
        return Response(200, _docs_page(), [(b"content-type", b"text/html; charset=utf-8")])

    async def repository_index(self, request: Request) -> Response:
        return json_response(self.dp.repository_index(await _object_body(request, "index")))

    async def load(self, request: Request) -> Response:
        await _object_body(request, "load")
        await self.dp.load(request.params["name"])
        return Response(200, b"{}")

    async def unload(self, request: Request) -> Response:
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


def _binary_response(response: Any, doc: Any) -> Response:
    params = doc.get("parameters") if isinstance(doc, dict) else None
    binary_all = bool(isinstance(params, dict) and params.get("binary_data_output"))
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
