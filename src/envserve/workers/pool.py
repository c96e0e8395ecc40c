"""The registry's handle for a model that runs in its own environment: its workers and their supervision.

- ``load()`` prepares the environment through the cache (extract/build once), starts
  ``parallel_workers`` processes (:mod:`.process`) with the environment's interpreter and waits until
  each has loaded the model (or reports why it could not);
- ``infer()`` hands the call to :mod:`.dispatch` (least busy worker, bounded queue, deadlines);
- a worker that exits is restarted with exponential backoff; the calls it had in flight fail at once with
  :class:`~envserve.errors.WorkerUnavailable` (503); queued calls wait for the next worker;
- an idle worker is pinged every second and killed (then restarted) when it stops answering for
  ``PING_TIMEOUT``; a busy one is bounded by ``inference_timeout`` instead (504, worker recycled);
- with a memory limit, a worker over it takes no new calls, finishes its own, and is restarted;
- ``unload()`` stops the workers (``stop``, then SIGKILL after a grace period).

Workers die with the server even when it is SIGKILLed (PR_SET_PDEATHSIG and a parent watchdog in
the worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any, AsyncGenerator, AsyncIterator, Dict, List, Optional, Set

from ..environments import Environment, EnvironmentCache, EnvironmentSource, runtime_env
from ..errors import InvalidRequest, ModelLoadError, ModelNotReady, WorkerUnavailable
from ..protocol.v2 import InferenceRequest, InferenceResponse
from ..settings.model import ModelSettings
from .admission import ClientGone
from .dispatch import DEPTH, Dispatcher, settle
from .ipc import Op
from .process import (
    PendingCall,
    WorkerLink,
    WorkerProcess,
    WorkerState,
    exit_text,
    send_frame,
    worker_code_dir,
)

__all__ = ["DEPTH", "WorkerPool", "worker_code_dir"]

logger = logging.getLogger("envserve.workers")

PING_INTERVAL = 1.0
PING_TIMEOUT = 10.0
STOP_GRACE = 5.0
LOAD_TIMEOUT = 600.0
BACKOFF_FIRST, BACKOFF_MAX, STABLE_AFTER = 0.05, 10.0, 30.0


class WorkerPool:
    def __init__(
        self,
        settings: ModelSettings,
        source: EnvironmentSource,
        cache: EnvironmentCache,
        socket_dir: str,
        workers: int = 1,
        inference_timeout: float = 60.0,
        memory_limit_mb: int = 0,
        max_queue: int = 0,
    ) -> None:
        self.settings = settings
        self.source = source
        self.cache = cache
        self.size = max(1, workers)
        self.memory_limit_mb = memory_limit_mb
        self.environment: Optional[Environment] = None
        self.restarts = 0
        self.recycles = 0
        self.workers: List[WorkerProcess] = []
        self.dispatcher = Dispatcher(settings.name, inference_timeout, max_queue, lambda: self.workers)
        self._server: Optional[asyncio.AbstractServer] = None
        self._socket = os.path.join(socket_dir, "%s-%x.sock" % (settings.name[:40], id(self) & 0xFFFFFF))
        self._stopping = False
        self._metadata: Dict[str, Any] = {}
        self._capabilities: Dict[str, Any] = {}
        self._runtime = ""
        self._supervisor: Optional[asyncio.Task[Any]] = None
        self._problem: Optional[str] = None
        self._restarting: Set[asyncio.Task[Any]] = set()

    # -- ModelHandle --------------------------------------------------------------------------------------

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        self.environment = await loop.run_in_executor(
            None, self.cache.prepare, self.source, self.settings.name
        )
        self._server = await loop.create_unix_server(
            lambda: WorkerLink(self._on_frame, self._on_lost, "model %s" % self.settings.name),
            path=self._socket,
        )
        self.workers = [WorkerProcess(i) for i in range(self.size)]
        try:
            await asyncio.gather(*(self._start(w) for w in self.workers))
        except BaseException:
            await self.unload()
            raise
        self._supervisor = asyncio.ensure_future(self._supervise())

    async def unload(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        for task in list(self._restarting):
            task.cancel()
        await asyncio.gather(*(self._stop(w) for w in self.workers), return_exceptions=True)
        self.dispatcher.close(
            ModelNotReady("model %r was unloaded" % self.settings.name, model=self.settings.name)
        )
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._socket)
        if self.environment is not None:
            self.environment.release()

    def inline_ok(self, request: InferenceRequest) -> bool:
        return False

    def infer_inline(self, request: InferenceRequest) -> InferenceResponse:
        raise RuntimeError("models in worker processes are called with infer()")

    async def infer(self, request: InferenceRequest, gone: Optional[ClientGone] = None) -> InferenceResponse:
        if self._stopping:
            raise ModelNotReady("model %r is unloading" % self.settings.name, model=self.settings.name)
        return await self.dispatcher.submit(request, gone)

    async def infer_stream(
        self, requests: AsyncIterator[InferenceRequest], gone: Optional[ClientGone] = None
    ) -> AsyncGenerator[InferenceResponse, None]:
        """A stream on a worker of its own: the requests go to it as they come, its chunks come back as it
        sends them; each chunk must come within the inference timeout (else the worker is stuck: 504, and
        it is recycled). Leaving the loop early cancels the stream in the worker."""
        if self._stopping:
            raise ModelNotReady("model %r is unloading" % self.settings.name, model=self.settings.name)
        try:
            first = await requests.__anext__()
        except StopAsyncIteration:
            raise InvalidRequest("a stream needs a request") from None
        dispatcher = self.dispatcher
        call = dispatcher.stream(first)
        forwarding = asyncio.ensure_future(self._forward(call, requests))
        chunks = call.chunks
        assert chunks is not None
        try:
            while True:
                # asyncio.wait, not wait_for: Python 3.11's wait_for can swallow the consumer's cancellation
                # when a chunk arrives at the same moment, and the stream would then run on to its end
                getter = asyncio.ensure_future(chunks.get())
                try:
                    await asyncio.wait({getter}, timeout=dispatcher.timeout)
                finally:
                    if not getter.done():
                        getter.cancel()
                if getter.cancelled():
                    dispatcher.expire_stream(call)
                    continue
                item = getter.result()
                dispatcher.stream_taken(call)
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            forwarding.cancel()
            if not call.future.done():
                dispatcher.stream_cancel(call)

    async def _forward(self, call: PendingCall, requests: AsyncIterator[InferenceRequest]) -> None:
        """The client's further requests to the worker, then their end; a request that cannot be read
        fails the stream."""
        try:
            async for request in requests:
                self.dispatcher.stream_more(call, request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            settle(call, exc=exc)
            self.dispatcher.stream_cancel(call)
            return
        self.dispatcher.stream_more(call, None)

    def metadata(self) -> Dict[str, Any]:
        return dict(self._metadata)

    def capabilities(self) -> Dict[str, Any]:
        return self._capabilities

    def problem(self) -> Optional[str]:
        return self._problem

    def describe(self) -> Dict[str, Any]:
        env = self.environment
        return {
            "runtime": self._runtime,
            "environment": None
            if env is None
            else {
                "hash": env.digest,
                "kind": env.kind,
                "source": env.source,
                "python": env.python_version,
                "path": env.root,
                "size": env.record.get("size"),
            },
            "workers": [
                {
                    "index": w.index,
                    "pid": w.pid,
                    "alive": w.state in (WorkerState.READY, WorkerState.RECYCLING),
                    "state": w.state.value,
                    "inflight": len(w.inflight),
                }
                for w in self.workers
            ],
            "restarts": self.restarts,
            "recycles": self.recycles,
            "queued": sum(not c.future.done() for c in self.dispatcher.queue),
            "streams": sum(c.chunks is not None for w in self.workers for c in w.inflight.values()),
        }

    # -- frames from workers ------------------------------------------------------------------------------

    def _on_frame(self, link: WorkerLink, header: Dict[str, Any], body: bytes) -> None:
        worker = link.worker
        op = header.get("op")
        if worker is None:  # a new connection: the first frame says which worker it is
            index = header.get("worker")
            if op != Op.HELLO or not isinstance(index, int) or not 0 <= index < len(self.workers):
                link.close()
                return
            worker = self.workers[index]
            if worker.connected.done():
                link.close()
                return
            link.worker, worker.link = worker, link
            worker.connected.set_result(header)
            return
        if op == Op.RESULT or op == Op.ERROR or op == Op.CHUNK or op == Op.DONE:
            self.dispatcher.answered(worker, header, body)
            if worker.state is WorkerState.RECYCLING and not worker.inflight:
                worker.kill()  # its last call is answered: now restart it
            self.dispatcher.feed(worker)
        elif op == Op.PONG:
            worker.ping_sent = None
        elif op == Op.LOADED and not worker.handshake.done():
            worker.handshake.set_result(header)

    def _on_lost(self, link: WorkerLink) -> None:
        worker = link.worker
        if worker is None:
            return
        if not worker.handshake.done():
            worker.handshake.set_result(
                {"op": Op.LOADED, "ok": False, "error": "the worker closed its connection"}
            )
        if worker.state is not WorkerState.DEAD and worker.state is not WorkerState.STARTING:
            task = asyncio.ensure_future(self._on_death(worker))
            self._restarting.add(task)
            task.add_done_callback(self._restarting.discard)

    # -- starting and stopping ----------------------------------------------------------------------------

    async def _start(self, worker: WorkerProcess) -> None:
        env = self.environment
        assert env is not None
        await worker.spawn(
            env.python,
            worker_code_dir(self.cache.root),
            self._socket,
            runtime_env(env.root),
            self.settings.folder,
        )
        assert worker.proc is not None
        worker.pump = asyncio.ensure_future(worker.pump_output(self.settings.name))
        exited = asyncio.ensure_future(worker.proc.wait())
        try:
            waiters: Set[asyncio.Future[Any]] = {worker.connected, exited}
            done, _ = await asyncio.wait(waiters, timeout=LOAD_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            if worker.connected not in done:
                worker.kill()
                await worker.proc.wait()
                await asyncio.wait({worker.pump}, timeout=1)  # let its last output arrive
                raise ModelLoadError(
                    "model %r: worker %s before loading the model (Python %s from %s)%s"
                    % (
                        self.settings.name,
                        exit_text(worker.proc.returncode)
                        if exited.done()
                        else "did not connect within %d s" % LOAD_TIMEOUT,
                        env.python_version,
                        env.python,
                        worker.tail(),
                    ),
                    model=self.settings.name,
                )
            hello = worker.info = worker.connected.result()
            send_frame(
                worker.link,
                {
                    "op": Op.LOAD,
                    "settings": self.settings.to_dict(),
                    "folder": self.settings.folder,
                    "source": self.settings.source,
                },
            )
            waiters = {worker.handshake, exited}
            await asyncio.wait(waiters, timeout=LOAD_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not exited.done():
                exited.cancel()
        header: Dict[str, Any] = (
            worker.handshake.result() if worker.handshake.done() else {"error": "no answer"}
        )
        if not header.get("ok"):
            worker.kill()
            await asyncio.wait({worker.pump}, timeout=1)
            raise ModelLoadError(
                "model %r failed to load in its environment (Python %s): %s%s"
                % (
                    self.settings.name,
                    hello.get("python"),
                    header.get("error", "no answer"),
                    "" if header.get("kind") else worker.tail(),
                ),
                model=self.settings.name,
            )
        self._metadata = dict(header.get("metadata") or {})
        self._capabilities = dict(header.get("capabilities") or {})
        self._runtime = str(header.get("runtime", ""))
        worker.state = WorkerState.READY
        logger.info(
            "model %s: worker %d ready (pid %s, Python %s, %s)",
            self.settings.name,
            worker.index,
            worker.pid,
            hello.get("python"),
            hello.get("prefix"),
        )
        self.dispatcher.feed(worker)

    async def _stop(self, worker: WorkerProcess) -> None:
        worker.state = WorkerState.DEAD
        with contextlib.suppress(Exception):
            send_frame(worker.link, {"op": Op.STOP})
        if worker.proc is not None and worker.proc.returncode is None:
            try:
                await asyncio.wait_for(worker.proc.wait(), STOP_GRACE)
            except asyncio.TimeoutError:
                worker.kill()
                await worker.proc.wait()
        self.dispatcher.fail_inflight(
            worker, ModelNotReady("model %r was unloaded" % self.settings.name, model=self.settings.name)
        )
        if worker.link is not None:
            worker.link.close()

    async def _on_death(self, worker: WorkerProcess) -> None:
        recycled = worker.state is WorkerState.RECYCLING
        worker.state = WorkerState.DEAD
        worker.kill()
        code = await worker.proc.wait() if worker.proc is not None else None
        if self._stopping:
            return
        what = "was recycled (memory limit)" if recycled else exit_text(code)
        if not recycled:
            self.restarts += 1
        self.dispatcher.fail_inflight(
            worker,
            WorkerUnavailable(
                "the worker serving model %r %s while handling this request; it is being restarted, "
                "retry shortly" % (self.settings.name, what),
                model=self.settings.name,
            ),
        )
        logger.warning(
            "model %s: worker %d (pid %s) %s; restarting", self.settings.name, worker.index, worker.pid, what
        )
        await self._restart(worker)

    async def _restart(self, old: WorkerProcess) -> None:
        delay = BACKOFF_FIRST if time.monotonic() - old.started < STABLE_AFTER else 0.0
        while not self._stopping:
            if delay:
                await asyncio.sleep(delay)
            fresh = WorkerProcess(old.index)
            self.workers[old.index] = fresh
            try:
                await self._start(fresh)
                self._problem = None
                return
            except Exception as exc:
                self._problem = "worker %d cannot restart: %s" % (old.index, exc)
                logger.error("model %s: %s", self.settings.name, self._problem)
            fresh.state = WorkerState.DEAD
            fresh.kill()
            delay = min(BACKOFF_MAX, max(delay * 2, BACKOFF_FIRST))

    async def _supervise(self) -> None:
        while not self._stopping:
            await asyncio.sleep(PING_INTERVAL)
            now = time.monotonic()
            for worker in list(self.workers):
                if self.memory_limit_mb and worker.state is WorkerState.READY:
                    rss = worker.rss_mb()
                    if rss > self.memory_limit_mb:
                        logger.warning(
                            "model %s: worker %d (pid %s) uses %.0f MiB, over its limit of %d MiB; "
                            "recycling it",
                            self.settings.name,
                            worker.index,
                            worker.pid,
                            rss,
                            self.memory_limit_mb,
                        )
                        worker.state = WorkerState.RECYCLING
                        self.recycles += 1
                        if not worker.inflight:
                            worker.kill()
                        continue
                if worker.state is not WorkerState.READY or worker.link is None or worker.inflight:
                    continue
                if worker.ping_sent is None:
                    worker.ping_sent = now
                    send_frame(worker.link, {"op": Op.PING, "id": 0})
                elif now - worker.ping_sent > PING_TIMEOUT:
                    logger.warning(
                        "model %s: idle worker %d (pid %s) has not answered a ping for %.0f s; killing it",
                        self.settings.name,
                        worker.index,
                        worker.pid,
                        now - worker.ping_sent,
                    )
                    worker.kill()
