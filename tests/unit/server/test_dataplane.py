"""The data plane's one pipeline, driven in process with fake model handles and a call made by hand:
one look-up, admission, reserved parameters, headers in and out, the model call (inline or awaited),
what the layers report, metrics in one vocabulary for every protocol, and the call's stages traced."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from envserve.errors import (
    InferenceError,
    InferenceTimeout,
    InvalidRequest,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
)
from envserve.protocol.envelope import Passthrough
from envserve.protocol.v2 import InferenceResponse, ResponseOutput
from envserve.server.call import Call, Protocol
from tests.unit.server.fakes import Assembled, RecordingTracer, echo, model, raising, v2_body


def run(coro):
    return asyncio.run(coro)


def test_a_call_looks_its_model_up_once_whatever_happens(tmp_path):
    async def scenario():
        server = Assembled(tmp_path, {"m": model(), "bad": model(raising(InferenceError("no")))})
        await server.load("m")
        await server.load("bad")
        looked = []
        get = server.registry.get
        server.registry.get = lambda name, version=None: looked.append(name) or get(name, version)
        await server.dataplane.infer(Call(Protocol.V2_REST), "m", None, v2_body())
        with pytest.raises(InferenceError):
            await server.dataplane.infer(Call(Protocol.V2_REST), "bad", None, v2_body())
        with pytest.raises(ModelNotFound):
            await server.dataplane.infer(Call(Protocol.V2_REST), "nobody", None, v2_body())
        assert looked == ["m", "bad", "nobody"]

    run(scenario())


def test_admission_refuses_a_model_not_ready_and_a_call_past_its_deadline_before_the_model(tmp_path):
    async def scenario():
        server = Assembled(tmp_path, {"m": model()})
        handle = await server.load("m")
        late = Call(Protocol.V2_GRPC, deadline=time.monotonic() - 1)
        with pytest.raises(InferenceTimeout, match="deadline passed before model 'm' was called"):
            await server.dataplane.infer(late, "m", None, v2_body())
        ahead = Call(Protocol.V2_GRPC, deadline=time.monotonic() + 60)
        assert (await server.dataplane.infer(ahead, "m", None, v2_body())).outputs[0].data.tolist() == [1, 2]
        await server.dataplane.unload("m")
        with pytest.raises(ModelNotReady, match="'m' is UNAVAILABLE: unloaded; load it again"):
            await server.dataplane.infer(Call(Protocol.V2_REST), "m", None, v2_body())
        assert len(handle.requests) == 1  # only the call that was admitted reached the model

    run(scenario())


@pytest.mark.parametrize(
    "body, where",
    [
        (v2_body(parameters={"envserve_mlflow_scoring": "text/csv"}), "parameters.envserve_mlflow_scoring"),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1],
                        "datatype": "INT64",
                        "data": [1],
                        "parameters": {"envserve_seldon": "predict"},
                    }
                ]
            },
            "input 'x' parameters.envserve_seldon",
        ),
        (
            v2_body(outputs=[{"name": "out", "parameters": {"envserve_handler": {}}}]),
            "output 'out' parameters.envserve_handler",
        ),
    ],
)
def test_reserved_parameters_are_refused_naming_them_and_never_reach_the_model(tmp_path, body, where):
    async def scenario():
        server = Assembled(tmp_path, {"m": model()})
        handle = await server.load("m")
        with pytest.raises(InvalidRequest) as info:
            await server.dataplane.infer(Call(Protocol.V2_REST), "m", None, body)
        assert str(info.value).startswith(where + ": parameters beginning with 'envserve_' are reserved")
        assert handle.requests == []
        assert server.requests("rest", "400") == 1

    run(scenario())


def test_headers_go_in_for_models_that_read_them_and_what_models_set_comes_out_filtered(tmp_path):
    def answer_with_headers(settings):
        def answer(request):
            response = echo(settings)(request)
            response.parameters["headers"] = {
                "X-Served-By": "fake",
                "content-length": "1",  # framing: never the model's
                "grpc-status": "0",  # a status: never the model's
                "x-bad": "a\r\nb",  # a control character: dropped
            }
            return response

        return answer

    async def scenario():
        server = Assembled(
            tmp_path,
            {"reads": model(answer_with_headers, {"headers": True}), "plain": model(answer_with_headers)},
        )
        reads = await server.load("reads")
        plain = await server.load("plain")
        rest = Call(Protocol.V2_REST, headers=[(b"X-Tenant", b"a"), (b"x-tenant", b"b")])
        await server.dataplane.infer(rest, "reads", None, v2_body())
        assert reads.requests[0].parameters["headers"] == {"x-tenant": "a, b"}
        assert rest.response_headers == {"x-served-by": "fake"}
        grpc = Call(Protocol.V2_GRPC, headers=[("x-tenant", "c"), ("trace-bin", "\x00")])
        await server.dataplane.infer(grpc, "reads", None, v2_body())
        assert reads.requests[1].parameters["headers"] == {"x-tenant": "c"}  # binary metadata is not text
        await server.dataplane.infer(
            Call(Protocol.V2_REST, headers=[(b"x-tenant", b"a")]), "plain", None, v2_body()
        )
        assert "headers" not in plain.requests[0].parameters

    run(scenario())


def test_inline_when_the_handle_says_so_else_awaited_with_the_clients_disconnection(tmp_path):
    async def gone():
        await asyncio.sleep(3600)

    async def scenario():
        server = Assembled(tmp_path, {"fast": model(inline=True), "slow": model()})
        fast, slow = await server.load("fast"), await server.load("slow")
        await server.dataplane.infer(Call(Protocol.V2_REST, gone=gone), "fast", None, v2_body())
        await server.dataplane.infer(Call(Protocol.V2_REST, gone=gone), "slow", None, v2_body())
        assert (fast.inline_calls, fast.gone) == (1, [])
        assert (slow.inline_calls, slow.gone) == (0, [gone])

    run(scenario())


def test_metrics_count_every_protocol_in_one_vocabulary(tmp_path):
    async def scenario():
        server = Assembled(
            tmp_path,
            {
                "m": model(),
                "full": model(raising(Overloaded("queue full"))),
                "fails": model(raising(InferenceError("boom"))),
            },
        )
        for name in ("m", "full", "fails"):
            await server.load(name)
        for protocol in Protocol:
            await server.dataplane.infer(Call(protocol), "m", None, v2_body())
            for name, error in (("full", Overloaded), ("fails", InferenceError)):
                with pytest.raises(error):
                    await server.dataplane.infer(Call(protocol), name, None, v2_body())
            with pytest.raises(ModelNotFound):
                await server.dataplane.infer(Call(protocol), "random-%s" % protocol.value, None, v2_body())
        for protocol in ("rest", "grpc", "kserve-v1", "mlflow", "seldon"):
            assert server.requests(protocol, "200") == 1, protocol
            assert server.requests(protocol, "503", "full") == 1, protocol
            assert server.requests(protocol, "500", "fails") == 1, protocol
            assert server.requests(protocol, "404", "") == 1, protocol  # a name from a request is no label

    run(scenario())


def test_a_call_cancelled_while_the_model_works_is_counted_499(tmp_path):
    async def scenario():
        server = Assembled(tmp_path, {"m": model()})
        await server.load("m")
        task = asyncio.ensure_future(server.dataplane.infer(Call(Protocol.V2_GRPC), "m", None, v2_body()))
        await asyncio.sleep(0)  # the fake model yields once before it answers
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert server.requests("grpc", "499") == 1

    run(scenario())


def test_what_the_layers_report_becomes_spans_model_metrics_and_batch_sizes(tmp_path):
    def reporting(settings):
        def answer(request):
            response = echo(settings)(request)
            response.report.timings = {"queue": [1.0, 2.0], "predict": [2.0, 3.0]}
            response.report.metrics = [{"type": "COUNTER", "key": "fake_calls", "value": 1}]
            response.report.batch_size = 3
            return response

        return answer

    async def scenario():
        tracer = RecordingTracer()
        server = Assembled(tmp_path, {"m": model(reporting)}, tracer=tracer)
        await server.load("m")
        call = Call(Protocol.V2_REST, tracer=tracer)
        response = await server.dataplane.infer(call, "m", None, v2_body())
        assert tracer.stages == ["parse", "model"]
        assert tracer.timings == [{"queue": [1.0, 2.0], "predict": [2.0, 3.0]}]
        assert (
            server.metrics.registry.get_sample_value("fake_calls_total", {"model": "m", "version": ""}) == 1
        )
        assert (
            server.metrics.registry.get_sample_value(
                "envserve_batch_size_count", {"model": "m", "version": ""}
            )
            == 1
        )
        assert (
            server.metrics.registry.get_sample_value("envserve_batch_size_sum", {"model": "m", "version": ""})
            == 3
        )
        assert response.parameters == {}  # nothing of the report is in what the client gets

    run(scenario())


def test_mlserver_shapes_for_the_v2_protocols_only(tmp_path):
    async def scenario():
        server = Assembled(tmp_path, {"m": model()})
        await server.load("m", implementation="mlserver_sklearn.SKLearnModel")
        for protocol, shape in (
            (Protocol.V2_REST, [2, 1]),
            (Protocol.V2_GRPC, [2, 1]),
            (Protocol.KSERVE_V1, [2]),
        ):
            response = await server.dataplane.infer(Call(protocol), "m", None, v2_body())
            assert response.outputs[0].shape == shape, protocol

    run(scenario())


def test_a_passthrough_body_goes_to_the_model_beside_the_request_not_in_its_parameters(tmp_path):
    def scoring(settings):
        def answer(request):
            assert request.parameters == {}
            data = np.empty(1, dtype=object)
            data[0] = b"scored " + bytes(request.inputs[0].data[0])
            return InferenceResponse(settings.name, [ResponseOutput("predictions", [1], "BYTES", data)])

        return answer

    async def scenario():
        server = Assembled(tmp_path, {"m": model(scoring)})
        handle = await server.load("m")
        call = Call(Protocol.MLFLOW)
        with pytest.raises(ValueError, match="names what it passes through"):
            await server.dataplane.passthrough(call, "m", b"a,b\n1,2")
        call.passthrough = Passthrough(Passthrough.MLFLOW, {"media_type": "text/csv"})
        response = await server.dataplane.passthrough(call, "m", b"a,b\n1,2")
        assert response.outputs[0].data[0] == b"scored a,b\n1,2"
        sent = handle.requests[0]
        assert sent.passthrough is call.passthrough and sent.passthrough.options == {"media_type": "text/csv"}
        assert server.requests("mlflow", "200") == 1

    run(scenario())
