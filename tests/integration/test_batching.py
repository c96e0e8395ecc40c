"""Adaptive batching against a real server: merged along the first dimension, split back, errors kept
to their own request, unbatchable requests alone; in process and through a worker."""

from __future__ import annotations

import asyncio
import sys

import httpx
import pytest

from tests.conftest import custom_model


def _model(repo, name, max_batch_time=0.05, **params):
    settings = {"max_batch_size": 16, "max_batch_time": max_batch_time}
    custom_model(repo, name, "RowEcho", settings, **params)


def _body(i, rows=1, width=3, id_=None):
    data = [[float(i * 10 + r) for _ in range(width)] for r in range(rows)]
    doc = {"inputs": [{"name": "x", "shape": [rows, width], "datatype": "FP64", "data": data}]}
    if id_:
        doc["id"] = id_
    return doc


async def _concurrently(url, bodies):
    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(*(client.post(url, json=b) for b in bodies))


@pytest.mark.parametrize("where", ["in-process", "worker"])
def test_batching_merges_splits_and_isolates_errors(tmp_path, start_server, where):
    params = {} if where == "in-process" else {"environment_path": sys.prefix}
    _model(tmp_path, "rows", **params)
    server = start_server(tmp_path, env={"ENVSERVE_ENV_CACHE": str(tmp_path / "cache")})
    url = server.url + "/v2/models/rows/infer"
    bodies = [_body(i, rows=1 + i % 3, id_="r%d" % i) for i in range(24)]
    bodies[5]["inputs"][0]["data"][0][0] = -1.0  # this request alone must fail
    bodies[7] = _body(7, width=5, id_="r7")  # different trailing shape: runs on its own
    responses = asyncio.run(_concurrently(url, bodies))
    batched = 0
    for i, (body, r) in enumerate(zip(bodies, responses)):
        if i == 5:
            assert r.status_code == 500 and "negative value in rows [0]" in r.json()["error"], r.text
            continue
        assert r.status_code == 200, (i, r.text)
        doc = r.json()
        assert doc["id"] == "r%d" % i
        outs = {o["name"]: o for o in doc["outputs"]}
        rows = body["inputs"][0]["shape"][0]
        width = body["inputs"][0]["shape"][1]
        assert outs["double"]["shape"] == [rows, width]
        flat = [v * 2 for row in body["inputs"][0]["data"] for v in row]
        assert outs["double"]["data"] == flat
        batched = max(batched, outs["batch"]["data"][0])
    assert batched > 3, "no request was merged with another"  # 24 concurrent requests: some shared a call
    metrics = httpx.get(server.url + "/metrics").text
    assert 'envserve_batch_size_count{model="rows",version=""}' in metrics


def test_a_lone_client_is_not_delayed(tmp_path, start_server):
    _model(tmp_path, "rows", max_batch_time=5.0)
    server = start_server(tmp_path)
    with server.client() as client:
        import time

        started = time.perf_counter()
        for i in range(20):
            r = client.post("/v2/models/rows/infer", json=_body(i))
            assert r.status_code == 200 and r.json()["outputs"][1]["data"] == [1]
        per_request = (time.perf_counter() - started) / 20
    assert per_request < 2.5  # max_batch_time is 5 s: an idle model does not wait it out
