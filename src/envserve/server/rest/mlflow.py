"""MLflow's scoring-server protocol (``mlflow models serve``): ``/invocations``, ``/ping``, ``/health``,
``/version``, over the same data plane."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any, Dict, Optional

from ... import __version__
from ...errors import InvalidRequest, UnsupportedMediaType
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


PARQUET = "application/vnd.apache.parquet"


def parquet_as_json(body: bytes) -> bytes:
    """A Parquet body read by the server, with its own current pandas and pyarrow, and handed on as
    MLflow's ``dataframe_split`` JSON (dates as ISO strings, binary columns base64, as MLflow's JSON
    carries them): a model's environment never parses a client's Parquet with whatever pyarrow it has
    (pyarrow 14.0.0 ran code from a crafted file, CVE-2023-47248)."""
    try:
        import pandas as pd
    except ImportError:
        raise UnsupportedMediaType(
            "Parquet bodies are read by the server, whose environment has no pandas: install "
            "'envserve[pandas]' (with pyarrow) there, or send JSON or CSV"
        ) from None
    try:
        frame = pd.read_parquet(io.BytesIO(body))
    except ImportError as exc:
        raise UnsupportedMediaType(
            "Parquet bodies need pyarrow in the server's environment: %s" % exc
        ) from None
    except Exception as exc:
        raise InvalidRequest(
            "Failed to parse input as a Pandas DataFrame. Ensure that the input is a valid Parquet Pandas "
            "DataFrame produced using the `pandas.DataFrame.to_parquet()` method. Error: '%s'" % exc
        ) from None
    for column in frame.columns:
        values = frame[column]
        if values.dtype == object and any(isinstance(v, (bytes, bytearray)) for v in values):
            frame[column] = [_base64(v) for v in values]
    split: Dict[str, Any] = json.loads(frame.to_json(orient="split", date_format="iso", date_unit="ns"))
    return json.dumps({"dataframe_split": {"columns": split["columns"], "data": split["data"]}}).encode()


def _base64(value: Any) -> Any:
    return base64.b64encode(bytes(value)).decode("ascii") if isinstance(value, (bytes, bytearray)) else value


class MLflowHandlers:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    async def ping(self, request: Request, call: Call) -> Response:
        ready = self.dp.ready()  # 200 when the model(s) can serve
        return json_response({"status": "ok" if ready else "not ready"}, 200 if ready else 503)

    async def version(self, request: Request, call: Call) -> Response:
        return json_response(__version__)

    async def invocations(self, request: Request, call: Call) -> Response:
        """JSON and CSV bodies go to the model as they arrived: its runtime parses them as MLflow would
        (with the model's signature) and answers MLflow's JSON. Parquet is decoded here first."""
        mime = media_type(request)
        body = await request.body()
        if mime == PARQUET:  # decoded here, off the event loop; the model gets MLflow's JSON
            body = await asyncio.get_running_loop().run_in_executor(None, parquet_as_json, body)
            mime = "application/json"
        name = call.model = self.dp.pick_model(model_hint(request))
        call.passthrough = Passthrough(Passthrough.MLFLOW, {"media_type": mime})
        response = await self.dp.passthrough(call, name, body)
        out = response.outputs[0] if response.outputs else None
        if out is not None and out.name == "predictions" and out.datatype == "BYTES":
            return Response(200, bytes(out.data.ravel()[0]))
        return json_response(
            mlflow_scoring.to_predictions(response)
        )  # pragma: no cover - every runtime answers
