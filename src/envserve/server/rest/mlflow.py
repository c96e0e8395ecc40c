"""MLflow's scoring-server protocol (``mlflow models serve``): ``/invocations``, ``/ping``, ``/health``,
``/version``, over the same data plane."""

from __future__ import annotations

from typing import Dict, Optional

from ... import __version__
from ...errors import UnsupportedMediaType
from ...protocol import mlflow_scoring
from ...protocol.envelope import Passthrough
from ..call import Call
from ..dataplane import DataPlane
from .routing import Request, Response, json_response

__all__ = ["MLflowHandlers", "model_hint"]

#: The media types MLflow's scoring server takes
MEDIA_TYPES = ("text/csv", "application/json", "application/vnd.apache.parquet")


def model_hint(request: Request) -> Optional[str]:
    """The model a protocol without model names in its paths addresses: ``X-Model-Name`` or ``?model=``."""
    value = request.header(b"x-model-name")
    if value:
        return value.decode("latin-1")
    return request.query("model") or None


def media_type(request: Request) -> str:
    """The body's media type, checked as MLflow checks it (UTF-8 only, no parameter but charset)."""
    raw = request.header(b"content-type")
    text = raw.decode("latin-1") if raw else ""
    parts = [p.strip() for p in text.split(";")]
    mime = parts[0].lower()
    params: Dict[str, str] = {}
    for part in parts[1:]:
        key, _, value = part.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    if params.get("charset", "utf-8").lower() != "utf-8":
        raise UnsupportedMediaType("The scoring server only supports UTF-8 (Content-Type: %s)" % text)
    unexpected = sorted(set(params) - {"charset"})
    if unexpected:
        raise UnsupportedMediaType("Unrecognized content type parameters: %s" % ", ".join(unexpected))
    if mime not in MEDIA_TYPES:
        raise UnsupportedMediaType(
            "This predictor only supports the following content types: %s. Got %r."
            % (", ".join(MEDIA_TYPES), text)
        )
    return mime


class MLflowHandlers:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    async def ping(self, request: Request, call: Call) -> Response:
        ready = self.dp.ready()  # 200 when the model(s) can serve
        return json_response({"status": "ok" if ready else "not ready"}, 200 if ready else 503)

    async def version(self, request: Request, call: Call) -> Response:
        return json_response(__version__)

    async def invocations(self, request: Request, call: Call) -> Response:
        """The body goes to the model as it arrived: its runtime parses it as MLflow would (with the
        model's signature) and answers MLflow's JSON."""
        mime = media_type(request)
        body = await request.body()
        name = call.model = self.dp.pick_model(model_hint(request))
        call.passthrough = Passthrough(Passthrough.MLFLOW, {"media_type": mime})
        response = await self.dp.passthrough(call, name, body)
        out = response.outputs[0] if response.outputs else None
        if out is not None and out.name == "predictions" and out.datatype == "BYTES":
            return Response(200, bytes(out.data.ravel()[0]))
        return json_response(
            mlflow_scoring.to_predictions(response)
        )  # pragma: no cover - every runtime answers
