"""The data plane and the registry in process: loading, states, reasons, versions, unload and reload."""

from __future__ import annotations

import pytest

from envserve.errors import InvalidRequest, ModelNotFound, ModelNotReady
from envserve.protocol.v2 import parse_inference_request
from envserve.server.call import Call, Protocol
from envserve.server.inprocess import INLINE_BUDGET, CallCost
from tests.conftest import custom_model
from tests.inprocess.conftest import served

V2 = Protocol.V2_REST


def body():  # a fresh document each time: the data plane releases a document's data once parsed
    return {"inputs": [{"name": "x", "shape": [2], "datatype": "INT64", "data": [1, 2]}]}


def test_states_reasons_and_transport_neutral_errors(tmp_path, arun):
    custom_model(tmp_path, "echo", "Echo")
    custom_model(tmp_path, "broken", "BrokenLoad")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model-settings.json").write_text("{nope")
    for version in ("1", "2"):
        custom_model(
            tmp_path / "v", "echo-%s" % version, "Echo", settings={"name": "versioned"}, version=version
        )

    async def scenario():
        async with served(tmp_path) as server:
            dp = server.dataplane
            rows = {(r["name"], r.get("version")): r for r in dp.repository_index()}
            assert rows[("echo", None)]["state"] == "READY"
            assert rows[("broken", None)]["state"] == "UNAVAILABLE"
            assert "weights file is corrupt" in rows[("broken", None)]["reason"]
            assert (
                rows[("bad", None)]["state"] == "UNAVAILABLE"
                and "not valid JSON" in rows[("bad", None)]["reason"]
            )
            assert dp.ready()  # failed models do not hold readiness back
            response = await dp.infer(Call(V2), "echo", None, body())
            assert response.outputs[0].data.tolist() == [1, 2]
            highest = await dp.infer(Call(V2), "versioned", None, body())
            assert highest.model_version == "2"  # the highest by default
            assert (await dp.infer(Call(V2), "versioned", "1", body())).model_version == "1"
            with pytest.raises(ModelNotFound) as info:
                await dp.infer(Call(V2), "missing", None, body())
            assert "/v2" not in str(info.value)  # the same text reaches REST, gRPC and CLI users
            with pytest.raises(InvalidRequest):
                await dp.infer(Call(V2), "echo", None, {"inputs": []})
            await dp.unload("echo")
            with pytest.raises(ModelNotReady) as info:
                await dp.infer(Call(V2), "echo", None, body())
            assert "unloaded" in str(info.value) and "/v2" not in str(info.value)
            await dp.load("echo")
            assert (await dp.infer(Call(V2), "echo", None, body())).outputs[0].data.tolist() == [1, 2]

    arun(scenario())


def test_in_process_calls_learn_their_cost_and_go_inline_when_fast(tmp_path, arun):
    custom_model(tmp_path, "rows", "PerRow", extra={"seconds_per_row": 0.0001})

    def one_row():
        return {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [[1]]}]}

    async def scenario():
        async with served(tmp_path) as server:
            handle = server.registry.get("rows").ready_handle()
            first = parse_inference_request(one_row())
            assert not handle.inline_ok(first)  # nothing known yet: the model's thread
            for _ in range(5):
                await server.dataplane.infer(Call(V2), "rows", None, one_row())
            learnt = handle.cost.predict(1)
            assert learnt is not None and learnt > 0  # learnt from the calls (how fast: the machine's load)
            # the decision, from a known cost (a measured one would make the test depend on the load)
            handle.cost = CallCost()
            handle.cost.observe(INLINE_BUDGET / 20, 1)
            assert handle.inline_ok(parse_inference_request(one_row()))  # fast enough for the loop
            big = {"inputs": [{"name": "x", "shape": [50000, 1], "datatype": "FP32", "data": [[1]] * 50000}]}
            assert not handle.inline_ok(parse_inference_request(big))  # predicted from its rows
            handle.cost.observe(INLINE_BUDGET * 50, 1)  # the model turned slow: off the loop again
            assert not handle.inline_ok(parse_inference_request(one_row()))

    arun(scenario())
