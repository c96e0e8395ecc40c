"""Where a model runs: the one place that decides, for every model version the server (or
``envserve env check-upgrade``) loads.

A model runs **in process** (:class:`~envserve.server.inprocess.InProcessModel`) unless it names an
environment of its own, or the server has a default one (``env_tarball``): then it runs in **worker
processes** on that environment's interpreter (:class:`~envserve.workers.pool.WorkerPool`). With
``max_batch_size`` > 1, adaptive batching (:class:`~envserve.server.batching.BatchingHandle`) wraps either.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from typing import Optional

from ..environments import EnvironmentCache, EnvironmentSource, environment_source
from ..settings.model import ModelSettings
from ..settings.server import ServerSettings
from ..workers.pool import WorkerPool
from .batching import BatchingHandle
from .handle import ModelHandle
from .inprocess import InProcessModel

__all__ = ["Placement"]


class Placement:
    """Makes the handle of each model version from the server's settings and its environment cache.

    Worker pools listen on unix sockets in one temporary directory, made when the first pool is and
    removed by :meth:`close`.
    """

    def __init__(self, settings: ServerSettings, environments: EnvironmentCache) -> None:
        self.settings = settings
        self.environments = environments
        self._socket_dir: Optional[str] = None

    def source(self, model: ModelSettings) -> Optional[EnvironmentSource]:
        """The environment the model runs in; None: the server's own, in process."""
        return environment_source(model, self.settings.env_tarball or None)

    def make(self, model: ModelSettings, batching: bool = True) -> ModelHandle:
        server = self.settings
        source = self.source(model)
        max_queue = int(model.parameters.get("max_queue_size") or server.max_queue_size)
        handle: ModelHandle
        if source is None:
            handle = InProcessModel(model, max_queue)
        else:
            memory = int(model.parameters.get("worker_memory_limit") or server.worker_memory_limit)
            handle = WorkerPool(
                model,
                source,
                self.environments,
                self._sockets(),
                max(1, server.parallel_workers if model.parallel_workers is None else model.parallel_workers),
                server.inference_timeout,
                memory,
                max_queue,
            )
        if batching and model.max_batch_size > 1:
            handle = BatchingHandle(
                handle, model.max_batch_size, model.max_batch_time, max_queue, server.max_batch_rows
            )
        return handle

    def _sockets(self) -> str:
        if self._socket_dir is None:
            self._socket_dir = tempfile.mkdtemp(prefix="envserve-")
        return self._socket_dir

    def close(self) -> None:
        if self._socket_dir is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self._socket_dir)
            self._socket_dir = None
