"""Seldon Core v1's protocol (its Python wrapper's routes), over the same data plane; errors leave in
Seldon's own body."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
import urllib.parse
from typing import Any, Dict

from ...errors import InvalidRequest
from ...protocol.envelope import Passthrough
from ..call import Call
from ..dataplane import DataPlane
from .mlflow import model_hint
from .routing import Request, Response, dumps, json_response, loads

__all__ = ["SeldonHandlers"]


async def seldon_message(request: Request) -> Any:
    """The SeldonMessage of a request, from any body Seldon's wrapper takes: JSON; a form field or query
    parameter ``json``; multipart/form-data (``strData`` as text or file, ``binData`` as a file, every
    other key a JSON value)."""
    ctype = request.content_type
    if ctype == "multipart/form-data":
        return _multipart(request.header(b"content-type") or b"", await request.body())
    if ctype == "application/x-www-form-urlencoded":
        fields = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        if "json" not in fields:
            raise InvalidRequest("the form has no 'json' field holding the SeldonMessage")
        return loads(fields["json"][0])
    query = request.query("json")
    if query is not None:
        return loads(query)
    return await request.json()


def _multipart(content_type: bytes, body: bytes) -> Dict[str, Any]:
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    message = parser.parsebytes(b"Content-Type: " + content_type + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise InvalidRequest("the multipart/form-data body cannot be read (no parts, or no boundary)")
    doc: Dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        raw = payload if isinstance(payload, bytes) else b""
        if name == "binData":
            doc[name] = base64.b64encode(raw).decode("ascii")
        elif name == "strData":
            doc[name] = raw.decode("utf-8", "replace")
        else:
            try:
                doc[name] = json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                raise InvalidRequest("multipart field %r is not JSON" % name) from None
    return doc


class SeldonHandlers:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    def _request_path(self, name: str) -> Dict[str, str]:
        settings = self.dp.settings
        return {settings.predictive_unit_id or name: settings.predictive_unit_image}

    async def _call(self, request: Request, call: Call, kind: str, message: Any) -> Response:
        """One Seldon call, passed to the model's runtime as it arrived (the runtime answers Seldon's JSON:
        built-in runtimes through V2, Seldon model classes as Seldon's wrapper does)."""
        name = call.model = self.dp.pick_model(model_hint(request))
        call.passthrough = Passthrough(
            Passthrough.SELDON, {"call": kind, "request_path": self._request_path(name)}
        )
        response = await self.dp.passthrough(call, name, dumps(message))
        return Response(200, bytes(response.outputs[0].data.ravel()[0]))

    async def predictions(self, request: Request, call: Call) -> Response:
        message = await seldon_message(request)
        if not isinstance(message, dict):
            raise InvalidRequest(
                "the Seldon request must be a JSON object with 'data', 'strData', 'jsonData' or 'binData'"
            )
        return await self._call(request, call, "predict", message)

    async def feedback(self, request: Request, call: Call) -> Response:
        """A model without its own send_feedback answers an empty SeldonMessage, as Seldon's wrapper does."""
        message = await seldon_message(request)
        if not isinstance(message, dict):
            raise InvalidRequest("feedback must be a JSON object (a Seldon Feedback message)")
        return await self._call(request, call, "feedback", message)

    async def ping(self, request: Request, call: Call) -> Response:
        return Response(200, b"pong", [(b"content-type", b"text/html; charset=utf-8")])

    async def status(self, request: Request, call: Call) -> Response:
        ready = self.dp.ready()
        return json_response({"status": "ok" if ready else "not ready"}, 200 if ready else 503)

    async def metadata(self, request: Request, call: Call) -> Response:
        return await self._call(request, call, "metadata", {})
