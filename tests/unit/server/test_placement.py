"""Where a model runs, decided in one place: in process, in worker processes (how many), batched."""

from __future__ import annotations

import sys

import pytest

from envserve.environments import EnvironmentCache
from envserve.server.batching import BatchingHandle
from envserve.server.inprocess import InProcessModel
from envserve.server.placement import Placement
from envserve.settings import ModelSettings, ServerSettings
from envserve.workers.pool import WorkerPool


def _placement(tmp_path, **settings):
    return Placement(ServerSettings(**settings), EnvironmentCache(str(tmp_path / "envs")))


def _model(**fields):
    return ModelSettings(name="m", **fields)


def test_in_process_unless_an_environment_is_named_or_the_server_has_one(tmp_path):
    placement = _placement(tmp_path)
    assert isinstance(placement.make(_model()), InProcessModel)
    assert isinstance(placement.make(_model(parameters={"environment": "server"})), InProcessModel)
    in_env = placement.make(_model(parameters={"environment_path": sys.prefix}))
    assert isinstance(in_env, WorkerPool) and in_env.source.kind == "path"
    tarball = _placement(tmp_path, env_tarball=str(tmp_path / "env.tar.gz")).make(_model())
    assert isinstance(tarball, WorkerPool) and tarball.source.location == str(tmp_path / "env.tar.gz")
    placement.close()


@pytest.mark.parametrize(
    "server, model, size",
    [(1, None, 1), (3, None, 3), (3, 2, 2), (0, None, 1), (2, 0, 1)],  # 0 is MLServer's "main process"
)
def test_worker_counts_come_from_the_model_else_the_server_and_are_at_least_one(
    tmp_path, server, model, size
):
    placement = _placement(tmp_path, parallel_workers=server)
    pool = placement.make(_model(parameters={"environment_path": sys.prefix}, parallel_workers=model))
    assert isinstance(pool, WorkerPool) and pool.size == size


def test_batching_wraps_either_kind_when_asked_and_can_be_left_out(tmp_path):
    placement = _placement(tmp_path, max_queue_size=7)
    batched = placement.make(_model(max_batch_size=4, max_batch_time=0.01))
    assert isinstance(batched, BatchingHandle) and isinstance(batched.inner, InProcessModel)
    assert batched.max_queue == 7 and batched.inner.max_queue == 7
    assert isinstance(placement.make(_model(max_batch_size=4), batching=False), InProcessModel)
    pooled = placement.make(_model(max_batch_size=4, parameters={"environment_path": sys.prefix}))
    assert isinstance(pooled, BatchingHandle) and isinstance(pooled.inner, WorkerPool)
