"""A worker pool in process (its workers are real processes, in the server's own venv): calls, states,
a killed worker, the bounded queue, unload."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from envserve.errors import Overloaded, WorkerUnavailable
from envserve.protocol.v2 import parse_inference_request
from envserve.workers.pool import DEPTH
from tests.conftest import custom_model
from tests.inprocess.conftest import served


def _request(seconds=0.0):
    return parse_inference_request(
        {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [seconds]}]}
    )


def test_calls_a_killed_worker_and_the_bounded_queue(tmp_path, arun):
    custom_model(
        tmp_path,
        "slow",
        "Slow",
        extra={"seconds": 0.3},
        environment_path=sys.prefix,
        max_queue_size=2,
    )

    async def scenario():
        async with served(tmp_path, environments_dir=str(tmp_path / "cache")) as server:
            pool = server.registry.get("slow").ready_handle()
            (worker,) = pool.describe()["workers"]
            assert worker["state"] == "ready" and worker["alive"]
            assert (await pool.infer(_request())).outputs[0].data.tolist() == [0.3]
            # DEPTH calls in flight, 2 waiting, the next one shed
            calls = [asyncio.ensure_future(pool.infer(_request())) for _ in range(DEPTH + 2)]
            await asyncio.sleep(0)
            with pytest.raises(Overloaded):
                await pool.infer(_request())
            assert pool.describe()["queued"] == 2
            os.kill(worker["pid"], signal.SIGKILL)
            results = await asyncio.gather(*calls, return_exceptions=True)
            failed = [r for r in results if isinstance(r, WorkerUnavailable)]
            assert failed and all("was killed by SIGKILL" in str(r) for r in failed)
            assert len(failed) <= DEPTH  # the queued calls waited for the restarted worker
            assert all(not isinstance(r, BaseException) for r in results[DEPTH:]), results[DEPTH:]
            assert pool.describe()["restarts"] == 1

    arun(scenario())
