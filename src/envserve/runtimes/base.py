"""The runtime contract: what a model adapter implements, and the one place requests meet it.

A runtime is constructed with the model's :class:`~envserve.settings.ModelSettings`, then:

- ``load()`` reads the artifact (once, before the model turns READY);
- ``predict(request)`` receives an :class:`~envserve.protocol.InferenceRequest` whose inputs already hold
  numpy arrays, and returns one of: a mapping ``output name -> array-like``, a pandas DataFrame (one output
  per column), a single array-like (output named after ``default_output``), or a full
  :class:`~envserve.protocol.InferenceResponse`;
- ``unload()`` releases what ``load`` took (optional);
- ``predict_stream(requests)`` (optional) streams: it gets an iterator of requests (one over REST, the
  client's messages over gRPC) and yields, once per chunk, what ``predict`` would return.

``decode_request``/``decode_input`` apply the content types (``np``, ``str``, ``base64``, ``pd``) so a
runtime sees numpy arrays, string lists or a DataFrame. :meth:`Runtime.infer` wraps ``predict`` with the
protocol rules (requested outputs, request id, model name and version) and is what both the in-process data
plane and the worker processes call, so a model behaves the same wherever it runs.

Worker import closure: standard library and numpy, Python 3.6+.
"""

import os
from typing import Any, Dict, Generator, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..codecs import decode_input, decode_request, encode_outputs, input_content_types
from ..errors import InferenceError, InvalidRequest, ModelLoadError
from ..protocol.envelope import Passthrough
from ..protocol.v2 import (
    InferenceRequest,
    InferenceResponse,
    MetadataTensor,
    RequestInput,
    ResponseOutput,
    shaped,
)
from ..settings.model import ModelSettings

__all__ = ["Runtime", "user_code_error"]


class Runtime:
    """Base class of every runtime (built-in or a user's own)."""

    #: Name of the output when ``predict`` returns a single array-like.
    default_output = "predict"
    #: Names of outputs this runtime can produce; empty means "whatever predict returns".
    output_names: Sequence[str] = ()
    #: Whether an in-process model may run a fast call on the server's event loop (False for runtimes
    #: that run an event loop of their own).
    inline_safe = True
    #: Whether the runtime reads the HTTP request headers (MLServer's ``parameters.headers``): the REST
    #: edge then puts them in every request's parameters.
    wants_headers = False
    #: Whether the answer holds exactly the outputs a request names (a 400 for one the model cannot
    #: produce); False for runtimes that answer as MLServer's do whatever is named.
    answers_requested_outputs = True

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self._content_types = {t.name: t.parameters.get("content_type") for t in settings.inputs}

    # -- the contract ------------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the model artifact. Raise an exception with a helpful message when that fails."""

    def predict(self, request: InferenceRequest) -> Any:
        if self.streams():
            raise InvalidRequest(
                "model %r answers streams only (its runtime has predict_stream, no predict): call its "
                "infer_stream or generate_stream endpoint" % self.settings.name
            )
        raise NotImplementedError("%s does not implement predict()" % type(self).__name__)

    def unload(self) -> None:
        """Release the model's resources."""

    # -- helpers for runtimes ----------------------------------------------------------------------------

    def content_types(self, request: InferenceRequest) -> Dict[str, Optional[str]]:
        return input_content_types(request, self._content_types, self.settings.content_type)

    def decode_request(self, request: InferenceRequest) -> Any:
        """The request as one value: a DataFrame for content type ``pd``, else the single input decoded."""
        return decode_request(request, self.content_types(request), self.settings.content_type)

    def decode_input(self, inp: RequestInput, request: InferenceRequest) -> Any:
        return decode_input(inp, self.content_types(request).get(inp.name))

    def requested_outputs(self, request: InferenceRequest) -> List[str]:
        """The outputs the client asked for (checked against ``output_names``), else the default one."""
        names = [o.name for o in request.outputs]
        if not names:
            return [self.default_output]
        if self.output_names:
            unknown = [n for n in names if n not in self.output_names]
            if unknown:
                raise InvalidRequest(
                    "model %r has no output %s; it can produce %s"
                    % (self.settings.name, ", ".join(repr(n) for n in unknown), ", ".join(self.output_names))
                )
        return names

    def check_features(self, features: Any, expected: Optional[int], request: InferenceRequest) -> None:
        """A client's mistake found before the model runs (a 400 naming the input, never the model's 500):
        the framework takes rows of ``expected`` features, so the input must be two-dimensional with that
        many columns. ``expected`` None: the model does not say how many."""
        shape = getattr(features, "shape", None)
        if shape is None:
            return
        where = "input %r" % request.inputs[0].name if len(request.inputs) == 1 else "the request's columns"
        if len(shape) != 2:
            raise InvalidRequest(
                "model %r takes a two-dimensional input (rows of %s features); %s has shape %s"
                % (self.settings.name, expected if expected is not None else "its", where, list(shape))
            )
        if expected is not None and shape[1] != expected:
            raise InvalidRequest(
                "model %r expects %d features per row; %s has %d (shape %s)"
                % (self.settings.name, expected, where, shape[1], list(shape))
            )

    def find_artifact(self, candidates: Sequence[str]) -> str:
        """The model file: ``parameters.uri`` when it names a file, else the first candidate in the folder."""
        path = self.settings.model_path
        if path is None:
            raise ModelLoadError("model %r has no folder and no parameters.uri" % self.settings.name)
        if os.path.isfile(path):
            return path
        if not os.path.isdir(path):
            raise ModelLoadError("model %r: %s does not exist" % (self.settings.name, path))
        for name in candidates:
            candidate = os.path.join(path, name)
            if os.path.isfile(candidate):
                return candidate
        raise ModelLoadError(
            "model %r: none of %s found in %s; put the artifact there or point parameters.uri at it"
            % (self.settings.name, ", ".join(candidates), path)
        )

    def pickle_policy(self, frameworks: Sequence[str] = ("sklearn",)) -> Any:
        """What this model's pickles may build (:class:`~envserve.runtimes.pickles.Policy`): the
        frameworks' classes, numpy/scipy/pandas types and the operator's ``pickle_allow``, which the server
        hands the runtime in ``parameters`` (a model's own settings cannot widen it); ``pickle_code``
        (the operator's ``pickle_scan=false``) lets pickles name anything."""
        from .pickles import Policy

        params = self.settings.parameters
        rules = params.get("pickle_allow") or []
        try:
            return Policy.for_model(
                frameworks,
                [rules] if isinstance(rules, str) else rules,
                code=params.get("pickle_code") is True,
            )
        except ModelLoadError as exc:
            raise type(exc)("model %r: %s" % (self.settings.name, exc), model=self.settings.name) from None

    def load_pickle(self, path: str, frameworks: Sequence[str] = ("sklearn",)) -> Any:
        """Unpickle a model file with envserve's restricted loader (:mod:`~envserve.runtimes.pickles`): what
        the policy refuses makes the model UNAVAILABLE naming the global and the file, with nothing
        from the file run."""
        from .pickles import load_pickle

        try:
            return load_pickle(path, self.pickle_policy(frameworks))
        except ModelLoadError as exc:
            raise type(exc)("model %r: %s" % (self.settings.name, exc), model=self.settings.name) from None

    def unpickling_restricted(self, frameworks: Sequence[str] = ("sklearn",)) -> Any:
        """While a user's class or a framework's loader loads: ``pickle.load(s)``, ``joblib.load`` and
        ``cloudpickle.load(s)`` go through the restricted loader, allowed the folder's own modules too."""
        from .pickles import local_modules, restricted_loaders

        return restricted_loaders(self.pickle_policy(list(frameworks) + local_modules(self.settings.folder)))

    def metadata(self) -> Dict[str, Any]:
        """V2 model metadata (``GET /v2/models/{name}``)."""
        s = self.settings
        doc: Dict[str, Any] = {
            "name": s.name,
            "versions": [s.version] if s.version is not None else [],
            "platform": s.platform or self.platform(),
            "inputs": [t.to_dict() for t in self.metadata_inputs()],
            "outputs": [t.to_dict() for t in self.metadata_outputs()],
        }
        if s.content_type:
            doc["parameters"] = {"content_type": s.content_type}
        return doc

    def platform(self) -> str:
        return ""

    def custom_handlers(self) -> List[Dict[str, str]]:
        """Extra REST routes the model answers itself: ``[{"name", "method", "path"}]``; none by default."""
        return []

    def call_handler(self, name: str, body: bytes, call: Dict[str, Any]) -> Tuple[int, Dict[str, str], bytes]:
        """Answer one of :meth:`custom_handlers` (``call`` holds the method, path, query and headers):
        status, headers and body."""
        raise InvalidRequest("model %r has no REST route %r" % (self.settings.name, name))

    def capabilities(self) -> Dict[str, Any]:
        """What the server must know of the loaded model beyond its metadata (sent once, at load)."""
        return {"handlers": self.custom_handlers(), "headers": self.wants_headers, "stream": self.streams()}

    def metadata_inputs(self) -> List[MetadataTensor]:
        return list(self.settings.inputs)

    def metadata_outputs(self) -> List[MetadataTensor]:
        return list(self.settings.outputs)

    # -- the protocol wrapper (not for overriding) -------------------------------------------------------

    def score_mlflow(self, body: bytes, mime: str) -> bytes:
        """Answer an MLflow ``/invocations`` body with MLflow's JSON. Runtimes without a signature: the
        body becomes a V2 request (DataFrame formats as ``pd`` columns, tensors as one input), as MLflow
        feeds a pyfunc without a signature."""
        from ..codecs.mlflow import predictions
        from ..protocol.mlflow_scoring import from_csv, from_json
        from ..protocol.v2 import parse_inference_request

        if mime == "text/csv":
            try:
                doc = from_csv(body.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise InvalidRequest(
                    "Ensure that input is a valid UTF-8 encoded string. Error: %s" % exc
                ) from None
        elif mime == "application/json":
            import json

            try:
                parsed = json.loads(body.decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidRequest(
                    "Ensure that input is a valid JSON formatted string. Error: %s" % exc
                ) from None
            doc = from_json(parsed)
        else:
            raise InvalidRequest("model %r takes JSON or CSV bodies, not %s" % (self.settings.name, mime))
        response = self._infer(parse_inference_request(doc))
        values = [shaped(o.data, o.shape) for o in response.outputs]
        if len(values) == 1:
            return predictions(values[0])
        return predictions({o.name: v for o, v in zip(response.outputs, values)})

    def score_seldon(
        self, message: Dict[str, Any], call: str, request_path: Dict[str, str]
    ) -> Dict[str, Any]:
        """Answer a Seldon v1 call with the response SeldonMessage (a JSON-able dict). Built-in runtimes:
        the message becomes a V2 request (``parameters.extra.method`` names the output to answer, as
        Seldon's SKLEARN_SERVER), and the answer has the request's kind and ``meta``."""
        from ..protocol import seldon
        from ..protocol.v2 import parse_inference_request

        if call == "feedback":
            return {"data": {"names": [], "ndarray": []}, "meta": {"requestPath": request_path}}
        if call == "metadata":
            meta = self.metadata()
            return {k: meta.get(k, []) for k in ("name", "versions", "platform", "inputs", "outputs")}
        doc, kind, _ = seldon.to_v2_request(message)
        method = self.settings.extra.get("method")
        if isinstance(method, str) and method:
            doc["outputs"] = [{"name": method}]
        response = self._infer(parse_inference_request(doc))
        meta = seldon.response_meta(message.get("meta"), request_path)
        return seldon.to_seldon_response(response, kind, meta)

    def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Answer one request: V2 tensors through :meth:`predict`, or a protocol body passed through as it
        arrived (``request.passthrough``) in that protocol."""
        passthrough = request.passthrough
        if passthrough is None:
            response = self._infer(request)
            self.report_metrics(response)
            return response
        body = bytes(request.inputs[0].data.ravel()[0])
        options = passthrough.options
        if passthrough.kind == Passthrough.MLFLOW:
            return self._raw_answer("predictions", self.score_mlflow(body, str(options.get("media_type"))))
        if passthrough.kind == Passthrough.HANDLER:
            status, headers, content = self.call_handler(str(options.get("name")), body, options)
            response = self._raw_answer("body", content)
            response.report.handler = {"status": status, "headers": headers}
            return response
        if passthrough.kind == Passthrough.SELDON:
            import json

            message = json.loads(body.decode("utf-8"))
            path = options.get("request_path")
            answer = self.score_seldon(
                message, str(options.get("call")), path if isinstance(path, dict) else {}
            )
            response = self._raw_answer("seldon", json.dumps(answer, default=_json_default).encode("utf-8"))
            self.report_metrics(response)
            return response
        raise InvalidRequest("model %r cannot answer a %r call" % (self.settings.name, passthrough.kind))

    def custom_metrics(self) -> List[Dict[str, Any]]:
        """Metrics the model reports after each call (Seldon's ``metrics()`` format); none by default."""
        return []

    def report_metrics(self, response: InferenceResponse) -> None:
        metrics = self.custom_metrics()
        if metrics:
            response.report.metrics = metrics

    def _raw_answer(self, name: str, answer: bytes) -> InferenceResponse:
        s = self.settings
        data = np.empty(1, dtype=object)
        data[0] = answer
        return InferenceResponse(s.name, [ResponseOutput(name, [1], "BYTES", data)], s.version)

    def infer_stream(self, requests: Iterator[InferenceRequest]) -> Generator[InferenceResponse, None, None]:
        """Answer a stream: the runtime's ``predict_stream`` gets the requests as they come (one for REST,
        the client's messages for gRPC) and yields what ``predict`` would return, once per chunk; each
        chunk is answered as ``predict``'s answer is (outputs encoded, the first request's id and
        requested outputs). Closing this generator closes the runtime's."""
        predict_stream = getattr(self, "predict_stream", None)
        if not callable(predict_stream):
            raise InvalidRequest(
                "model %r does not stream: its runtime (%s) has no predict_stream; use infer"
                % (self.settings.name, type(self).__name__)
            )
        seen = _First(requests)
        chunks = predict_stream(seen)
        try:
            for result in chunks:
                response = self._respond(result, seen.first or InferenceRequest([]))
                self.report_metrics(response)
                yield response
        finally:
            close = getattr(chunks, "close", None)
            if callable(close):
                close()

    def streams(self) -> bool:
        """Whether the runtime answers streams (has ``predict_stream``)."""
        return callable(getattr(self, "predict_stream", None))

    def _infer(self, request: InferenceRequest) -> InferenceResponse:
        return self._respond(self.predict(request), request)

    def _respond(self, result: Any, request: InferenceRequest) -> InferenceResponse:
        """What ``predict`` returned, as the response to ``request``."""
        s = self.settings
        if isinstance(result, InferenceResponse):
            response = result
            response.model_name = s.name
            response.model_version = s.version
        else:
            response = InferenceResponse(s.name, encode_outputs(result, self.default_output), s.version)
        if request.id is not None:
            response.id = request.id
        if request.outputs and self.answers_requested_outputs:
            wanted = {o.name: o for o in request.outputs}
            produced = {o.name for o in response.outputs}
            missing = [n for n in wanted if n not in produced]
            if missing:
                raise InvalidRequest(
                    "model %r has no output %s; it produced %s"
                    % (s.name, ", ".join(repr(n) for n in missing), ", ".join(sorted(produced)) or "nothing")
                )
            response.outputs = [o for o in response.outputs if o.name in wanted]
            for out in response.outputs:
                params = wanted[out.name].parameters
                if params:
                    out.parameters = dict(out.parameters, **params)
        return response


class _First:
    """The requests of a stream, remembering the first (its id and requested outputs answer every chunk)."""

    def __init__(self, requests: Iterator[InferenceRequest]) -> None:
        self._requests = iter(requests)
        self.first: Optional[InferenceRequest] = None

    def __iter__(self) -> "_First":
        return self

    def __next__(self) -> InferenceRequest:
        request = next(self._requests)
        if self.first is None:
            self.first = request
        return request


def user_code_error(settings: ModelSettings, label: str, method: str, exc: BaseException) -> Exception:
    """The error for what a user's class raised (Seldon model classes, MLServer runtimes): a 400 when the
    exception carries a 4xx ``status_code`` (Seldon's and MLServer's errors do), else a 500; both name the
    model, the class, the method and the exception."""
    status = getattr(exc, "status_code", None)
    message = "model %r: %s.%s raised %s: %s" % (
        settings.name,
        label,
        method,
        type(exc).__name__,
        getattr(exc, "message", None) or exc,
    )
    if isinstance(status, int) and 400 <= status < 500:
        return InvalidRequest(message)
    return InferenceError(message)


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays inside a model's JSON answer (Seldon models return them in jsonData)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError("%s is not JSON serialisable" % type(value).__name__)
