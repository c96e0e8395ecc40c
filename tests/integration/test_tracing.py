"""OpenTelemetry traces from a real server to an OTLP/HTTP receiver on loopback (the spans decoded with
OpenTelemetry's own protobuf messages): the caller's traceparent continued over REST and gRPC, and the
span tree of a request to a model in a worker process, whose predict span comes from the worker's timings."""

from __future__ import annotations

import http.server
import sys
import threading
import time

import grpc
import httpx
import pytest

from tests.conftest import ServerProcess, custom_model

try:  # a missing dependency fails the module (never a silent skip)
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_service
except ImportError as exc:
    raise ImportError("opentelemetry-proto comes with envserve[tracing]: run scripts/setup") from exc

BODY = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]}
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces with an ExportTraceServiceRequest (protobuf)."""

    def __init__(self):
        self.spans = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                ok = self.path == "/v1/traces" and self.headers["content-type"] == "application/x-protobuf"
                if ok:
                    request = trace_service.ExportTraceServiceRequest.FromString(body)
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            receiver.spans.extend(scope.spans)
                answer = trace_service.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 400)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id, count):
        """The spans of one trace, once at least ``count`` have arrived."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = [s for s in list(self.spans) if s.trace_id.hex() == trace_id]
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(
            "trace %s: %d spans arrived: %s" % (trace_id, len(found), [s.name for s in found])
        )


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, receiver):
    repo = tmp_path_factory.mktemp("tracing")
    custom_model(repo, "worker-echo", "Echo", environment_path=sys.prefix)
    custom_model(repo, "echo", "Echo")
    custom_model(
        repo,
        "batched",
        "RowEcho",
        settings={"max_batch_size": 4, "max_batch_time": 0.01},
        environment_path=sys.prefix,
    )
    env = {"ENVSERVE_TRACING_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    proc = ServerProcess(repo, [], env=env)
    try:
        yield proc.wait_ready(120)
    finally:
        proc.stop()


def _tree(spans):
    by_id = {s.span_id: s for s in spans}
    children = {}
    for s in spans:
        children.setdefault(s.parent_span_id, []).append(s)
    roots = [s for s in spans if s.parent_span_id not in by_id]
    assert len(roots) == 1, [(s.name, s.parent_span_id.hex()) for s in roots]
    return roots[0], lambda span: sorted(c.name for c in children.get(span.span_id, []))


def _only(spans, name):
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def test_a_worker_request_is_one_trace_under_the_callers_span(server, receiver):
    traceparent = "00-%s-%s-01" % (TRACE, PARENT)
    r = httpx.post(
        server.url + "/v2/models/worker-echo/infer",
        json=BODY,
        headers={"traceparent": traceparent},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert "envserve_timings" not in r.text  # the stages' timings never leave the server
    spans = receiver.trace(TRACE, 7)
    root, names = _tree(spans)
    assert root.parent_span_id.hex() == PARENT and root.name == "POST /v2/models/worker-echo/infer"
    assert root.kind == root.SPAN_KIND_SERVER
    assert names(root) == ["encode", "model", "parse"]
    model = _only(spans, "model")
    assert names(model) == ["ipc", "queue"]
    ipc = _only(spans, "ipc")
    assert names(ipc) == ["predict"]
    predict = _only(spans, "predict")
    # the worker's predict lies within the round trip, which lies within the model's call
    assert ipc.start_time_unix_nano <= predict.start_time_unix_nano <= predict.end_time_unix_nano
    assert predict.end_time_unix_nano <= ipc.end_time_unix_nano <= model.end_time_unix_nano
    assert (
        root.start_time_unix_nano <= model.start_time_unix_nano
        and model.end_time_unix_nano <= root.end_time_unix_nano
    )
    attributes = {a.key: a.value for a in model.attributes}
    assert attributes["envserve.model"].string_value == "worker-echo"
    status = {a.key: a.value for a in root.attributes}["http.response.status_code"]
    assert status.int_value == 200


def test_in_process_models_and_grpc_calls_continue_the_trace_and_bad_traceparents_start_one(server, receiver):
    trace = "0af7651916cd43dd8448eb211c80319c"
    r = httpx.post(
        server.url + "/v2/models/echo/infer",
        json=BODY,
        headers={"traceparent": "00-%s-b7ad6b7169203331-01" % trace},
        timeout=60,
    )
    assert r.status_code == 200
    spans = receiver.trace(trace, 5)
    root, names = _tree(spans)
    assert names(_only(spans, "model")) == ["predict"]  # in the server's process: no queue, no IPC

    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    grpc_trace = "11112222333344445555666677778888"
    with grpc.insecure_channel(server.grpc_address) as channel:
        request = pb.ModelInferRequest(model_name="worker-echo")
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[2])
        tensor.contents.fp32_contents.extend([1.0, 2.0])
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, metadata=[("traceparent", "00-%s-1111222233334444-01" % grpc_trace)], timeout=60
        )
    spans = receiver.trace(grpc_trace, 7)
    root, names = _tree(spans)
    assert root.name == "/inference.GRPCInferenceService/ModelInfer"
    assert root.parent_span_id.hex() == "1111222233334444"
    assert names(root) == ["encode", "model", "parse"] and names(_only(spans, "ipc")) == ["predict"]

    batch_trace = "99998888777766665555444433332222"
    r = httpx.post(
        server.url + "/v2/models/batched/infer",
        json={"inputs": [{"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [1.0, 2.0]}]},
        headers={"traceparent": "00-%s-1111222233334444-01" % batch_trace},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    spans = receiver.trace(batch_trace, 8)
    root, names = _tree(spans)
    assert names(_only(spans, "model")) == ["batch", "ipc", "queue"]  # waited for a batch to form

    for bad in ("00-xyz-b7ad6b7169203331-01", "garbage", "00-%s-0000000000000000-01" % ("0" * 32)):
        before = {s.trace_id for s in receiver.spans}
        r = httpx.post(
            server.url + "/v2/models/echo/infer", json=BODY, headers={"traceparent": bad}, timeout=60
        )
        assert r.status_code == 200, (bad, r.text)  # ignored, never an error
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            new = [s for s in list(receiver.spans) if s.trace_id not in before and s.name.startswith("POST")]
            if new:
                break
            time.sleep(0.05)
        assert new and not new[0].parent_span_id, bad  # a fresh trace, rooted here
