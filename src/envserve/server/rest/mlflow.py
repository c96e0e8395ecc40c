"""MLflow's scoring-server protocol (``mlflow models serve``): ``/invocations``, ``/ping``, ``/health``,
``/version``, over the same data plane."""

from __future__ import annotations

from ... import __version__
from ...errors import InvalidRequest
from ...protocol import mlflow_scoring
from ..dataplane import DataPlane
from .routing import Request, Response, json_response

__all__ = ["MLflowHandlers", "model_hint"]


def model_hint(request: Request) -> str | None:
    """The model a protocol without model names in its paths addresses: ``X-Model-Name`` or ``?model=``."""
    value = request.header(b"x-model-name")
    if value:
        return value.decode("latin-1")
    return request.query("model") or None


class MLflowHandlers:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    async def ping(self, request: Request) -> Response:
        ready = self.dp.ready()  # 200 when the model(s) can serve
        return json_response({"status": "ok" if ready else "not ready"}, 200 if ready else 503)

    async def version(self, request: Request) -> Response:
        return json_response(__version__)

    async def invocations(self, request: Request) -> Response:
        if request.content_type == "text/csv":
            raw = await request.body()
            try:
                doc = mlflow_scoring.from_csv(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidRequest("the CSV body is not UTF-8") from None
        else:
            doc = mlflow_scoring.from_json(await request.json())
        name = self.dp.pick_model(model_hint(request))
        response = await self.dp.infer(name, None, doc, protocol="mlflow", gone=request.gone)
        return json_response(mlflow_scoring.to_predictions(response))
