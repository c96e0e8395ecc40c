"""Server side of worker processes: start, feed, watch and restart the workers of one model.

A :class:`WorkerPool` is the registry's handle for a model that runs in its own environment:

- ``load()`` prepares the environment through the cache (extract/build once), starts
  ``parallel_workers`` processes with the environment's interpreter and waits until each has loaded the
  model (or reports why it could not);
- ``infer()`` hands the call to the least busy worker with room (at most ``DEPTH`` calls in flight each:
  one running, the others waiting in its socket), or queues it; a worker takes the next queued call as
  soon as it answers one. Frames are parsed in an :class:`asyncio.Protocol`, with no task per call, and
  one timer sweeps expired calls instead of one timer per call;
- a worker that exits is restarted with exponential backoff; the calls it had in flight fail at once with
  :class:`~envserve.errors.WorkerUnavailable` (503); queued calls wait for the next worker, up to the
  inference timeout;
- an idle worker is pinged every second and killed (then restarted) when it stops answering for
  ``PING_TIMEOUT``; a busy one is bounded by ``inference_timeout`` instead: a call that exceeds it fails
  with :class:`~envserve.errors.InferenceTimeout` (504) and its worker is recycled (a stuck ``predict``
  cannot be interrupted any other way);
- ``unload()`` stops the workers (``stop``, then SIGKILL after a grace period).

Workers die with the server even when it is SIGKILLed (PR_SET_PDEATHSIG and a parent watchdog in
the worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Set

import orjson

from ..environments import Environment, EnvironmentCache, EnvironmentSource, runtime_env
from ..errors import EnvserveError, InferenceTimeout, ModelLoadError, ModelNotReady, WorkerUnavailable
from ..protocol.v2 import InferenceRequest, InferenceResponse
from ..settings.model import ModelSettings
from . import ipc
from .admission import ClientGone, admit, drop_when_client_leaves

__all__ = ["WorkerPool", "worker_code_dir"]

logger = logging.getLogger("envserve.workers")

#: Calls one worker may have in flight (one running, the others waiting in its socket buffer). Pipelining
#: several lets the worker answer a run of calls per wake-up, which is what matters when it shares a core
#: with the server (measured: 2 -> 0.60x, 4 -> 0.70x, 8 -> 0.78x of in-process at 8 connections); the
#: price is that a worker that dies fails up to this many calls (503) instead of fewer.
DEPTH = 8
PING_INTERVAL = 1.0
PING_TIMEOUT = 10.0
STOP_GRACE = 5.0
LOAD_TIMEOUT = 600.0
BACKOFF_FIRST, BACKOFF_MAX, STABLE_AFTER = 0.05, 10.0, 30.0


def worker_code_dir(cache_root: str) -> str:
    """A directory holding only a link to envserve's package, for the worker's ``sys.path``.

    Putting the package's parent directory on the path instead could expose the server's whole
    site-packages (numpy for another Python, ...) to the model's environment.
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = os.path.join(cache_root, "code", "%x" % (hash(package) & 0xFFFFFFFF))
    link = os.path.join(code, "envserve")
    if os.path.realpath(link) != package:
        os.makedirs(code, exist_ok=True)
        tmp = link + ".%d" % os.getpid()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(package, tmp)
        os.replace(tmp, link)
    return code


_BOOTSTRAP = "import sys; sys.path.insert(0, %r); from envserve.workers.entry import main; main()"


class _Call:
    __slots__ = ("deadline", "future", "id", "payload", "worker")

    def __init__(
        self, call_id: int, payload: bytes, future: asyncio.Future[InferenceResponse], deadline: float
    ) -> None:
        self.id = call_id
        self.payload = payload
        self.future = future
        self.deadline = deadline
        self.worker: Optional[_Worker] = None


def _orjson_dumps(header: Dict[str, Any]) -> bytes:
    options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    return orjson.dumps(header, default=ipc.json_default, option=options)


class _FrameProtocol(asyncio.Protocol):
    """Parses frames from a worker's socket and hands them to the pool."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.buffer = bytearray()
        self.transport: Optional[asyncio.Transport] = None
        self.worker: Optional[_Worker] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.outgoing: List[bytes] = []

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        prefix = ipc.PREFIX.size
        while len(buf) >= prefix:
            head_len, body_len = ipc.PREFIX.unpack_from(buf)
            end = prefix + head_len + body_len
            if len(buf) < end:
                return
            try:
                header = orjson.loads(buf[prefix : prefix + head_len])
            except ValueError:
                logger.error("model %s: unreadable frame from a worker; closing it", self.pool.settings.name)
                assert self.transport is not None
                self.transport.close()
                return
            body = bytes(buf[prefix + head_len : end])
            del buf[:end]
            self.pool._on_frame(self, header, body)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.worker is not None:
            self.pool._on_disconnect(self.worker)

    def send(self, payload: bytes) -> None:
        # Frames written in the same event-loop iteration leave in one write (see entry.Connection).
        if not self.outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self.outgoing.append(payload)

    def _flush(self) -> None:
        payload, self.outgoing = self.outgoing, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(payload[0] if len(payload) == 1 else b"".join(payload))


class _Worker:
    def __init__(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        self.index = index
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.link: Optional[_FrameProtocol] = None
        self.connected: asyncio.Future[Dict[str, Any]] = loop.create_future()
        self.handshake: asyncio.Future[Dict[str, Any]] = loop.create_future()
        self.inflight: Dict[int, _Call] = {}
        self.ping_sent: Optional[float] = None
        self.started = time.monotonic()
        self.output: Deque[str] = deque(maxlen=40)
        self.alive = False
        self.dead = False
        self.recycling = False  # over its memory limit: takes no new calls, restarts once idle
        self.stuck = False  # killed for exceeding the inference timeout: takes no new calls
        self.info: Dict[str, Any] = {}
        self.pump: Optional[asyncio.Task[Any]] = None

    @property
    def takes_calls(self) -> bool:
        return self.alive and not self.recycling and not self.stuck

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)


def _exit_text(code: Optional[int]) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return "was killed by %s" % signal.Signals(-code).name
        except ValueError:
            return "was killed by signal %d" % -code
    return "exited with code %d" % code


def _frame_bytes(pieces: List[Any]) -> bytes:
    return b"".join(pieces)


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
        self.memory_limit_mb = memory_limit_mb
        self.max_queue = max_queue
        self.recycles = 0
        self.settings = settings
        self.source = source
        self.cache = cache
        self.socket_dir = socket_dir
        self.size = max(1, workers)
        self.inference_timeout = inference_timeout
        self.environment: Optional[Environment] = None
        self.restarts = 0
        self._workers: List[_Worker] = []
        self._queue: Deque[_Call] = deque()
        # Every call in creation order, for the deadline sweep (one timeout for all, so deadlines are in
        # the same order); answered calls are dropped from the front as new calls come in.
        self._deadlines: Deque[_Call] = deque()
        self._sweeper: Optional[asyncio.TimerHandle] = None
        self._ids = itertools.count(1)
        self._server: Optional[asyncio.AbstractServer] = None
        self._socket = os.path.join(socket_dir, "%s-%x.sock" % (settings.name[:40], id(self) & 0xFFFFFF))
        self._stopping = False
        self._metadata: Dict[str, Any] = {}
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
        self._server = await loop.create_unix_server(lambda: _FrameProtocol(self), path=self._socket)
        self._workers = [_Worker(i) for i in range(self.size)]
        try:
            await asyncio.gather(*(self._start(w) for w in self._workers))
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
        await asyncio.gather(*(self._stop_worker(w) for w in self._workers), return_exceptions=True)
        gone = ModelNotReady("model %r was unloaded" % self.settings.name, model=self.settings.name)
        while self._queue:
            self._settle(self._queue.popleft(), exc=gone)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._deadlines.clear()
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
        worker = self._idle_worker()
        if worker is None:
            admit(len(self._queue), self.max_queue, self.settings.name)
        loop = asyncio.get_running_loop()
        call_id = next(self._ids)
        call = _Call(
            call_id,
            _frame_bytes(ipc.encode_request(call_id, request, _orjson_dumps)),
            loop.create_future(),
            loop.time() + self.inference_timeout,
        )
        deadlines = self._deadlines
        while deadlines and deadlines[0].future.done():
            deadlines.popleft()
        deadlines.append(call)
        if self._sweeper is None:
            self._sweeper = loop.call_at(deadlines[0].deadline, self._sweep)
        if worker is not None:
            self._dispatch(worker, call)
        else:
            self._queue.append(call)
            drop_when_client_leaves(call.future, gone)  # it waits for a worker: drop it if its client leaves
        return await call.future

    def metadata(self) -> Dict[str, Any]:
        return dict(self._metadata)

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
                {"index": w.index, "pid": w.pid, "alive": w.alive, "inflight": len(w.inflight)}
                for w in self._workers
            ],
            "restarts": self.restarts,
            "recycles": self.recycles,
            "queued": len(self._queue),
        }

    # -- dispatching --------------------------------------------------------------------------------------

    def _idle_worker(self) -> Optional[_Worker]:
        best: Optional[_Worker] = None
        for w in self._workers:
            if (
                w.takes_calls
                and len(w.inflight) < DEPTH
                and (best is None or len(w.inflight) < len(best.inflight))
            ):
                best = w
        return best

    def _dispatch(self, worker: _Worker, call: _Call) -> None:
        assert worker.link is not None
        call.worker = worker
        worker.inflight[call.id] = call
        worker.ping_sent = None  # busy: liveness is the inference timeout's job now
        worker.link.send(call.payload)

    def _feed(self, worker: _Worker) -> None:
        queue = self._queue
        while queue and worker.takes_calls and len(worker.inflight) < DEPTH:
            call = queue.popleft()
            if not call.future.done():
                self._dispatch(worker, call)

    def _sweep(self) -> None:
        """Expire every call past its deadline, then sleep until the oldest unanswered one's."""
        self._sweeper = None
        deadlines = self._deadlines
        loop = asyncio.get_running_loop()
        now = loop.time()
        while deadlines and (deadlines[0].future.done() or deadlines[0].deadline <= now):
            call = deadlines.popleft()
            if not call.future.done():
                self._expire(call)
        if deadlines:
            self._sweeper = loop.call_at(deadlines[0].deadline, self._sweep)

    @staticmethod
    def _settle(call: _Call, result: Any = None, exc: Optional[BaseException] = None) -> None:
        if call.future.done():
            return
        if exc is not None:
            call.future.set_exception(exc)
        else:
            call.future.set_result(result)

    def _expire(self, call: _Call) -> None:
        worker = call.worker
        running = worker is not None and call.id in worker.inflight
        self._settle(
            call,
            exc=InferenceTimeout(
                "model %r did not answer within %g s (inference_timeout)%s"
                % (
                    self.settings.name,
                    self.inference_timeout,
                    "; its worker is being restarted" if running else "",
                ),
                model=self.settings.name,
            ),
        )
        if running:
            assert worker is not None
            logger.warning(
                "model %s: call %d exceeded %g s; recycling worker %d (pid %s)",
                self.settings.name,
                call.id,
                self.inference_timeout,
                worker.index,
                worker.pid,
            )
            worker.inflight.pop(call.id, None)
            # A worker runs its calls in the order it received them, so the ones sent after the stuck call
            # have not started: they go back to the front of the queue for the next worker instead of
            # failing with the recycled one.
            behind = sorted((c for c in worker.inflight.values() if c.id > call.id), key=lambda c: c.id)
            for waiting in reversed(behind):
                del worker.inflight[waiting.id]
                waiting.worker = None
                self._queue.appendleft(waiting)
            worker.stuck = True  # takes nothing more; its exit is seen and it is restarted
            worker.kill()
            for other in self._workers:
                self._feed(other)

    def _on_frame(self, link: _FrameProtocol, header: Dict[str, Any], body: bytes) -> None:
        worker = link.worker
        op = header.get("op")
        if worker is None:  # a new connection: the first frame says which worker it is
            index = header.get("worker")
            if op != "hello" or not isinstance(index, int) or not 0 <= index < len(self._workers):
                assert link.transport is not None
                link.transport.close()
                return
            worker = self._workers[index]
            if worker.connected.done():
                assert link.transport is not None
                link.transport.close()
                return
            link.worker, worker.link = worker, link
            worker.connected.set_result(header)
            return
        if op == "result" or op == "error":
            call = worker.inflight.pop(header.get("id"), None)  # type: ignore[arg-type]
            if call is not None:
                if op == "result":
                    try:
                        self._settle(call, ipc.decode_response(header, body))
                    except Exception as exc:  # a malformed frame is a worker bug, not the caller's
                        self._settle(call, exc=WorkerUnavailable("bad answer from the worker: %s" % exc))
                else:
                    self._settle(call, exc=ipc.error_from_wire(header, self.settings.name))
            if worker.recycling and not worker.inflight:
                worker.kill()  # its last call is answered: now restart it
            self._feed(worker)
        elif op == "pong":
            worker.ping_sent = None
        elif op == "loaded" and not worker.handshake.done():
            worker.handshake.set_result(header)

    def _on_disconnect(self, worker: _Worker) -> None:
        if not worker.handshake.done():
            worker.handshake.set_result(
                {"op": "loaded", "ok": False, "error": "the worker closed its connection"}
            )
        if worker.alive:
            task = asyncio.ensure_future(self._on_death(worker))
            self._restarting.add(task)
            task.add_done_callback(self._restarting.discard)

    # -- starting and stopping ----------------------------------------------------------------------------

    async def _start(self, worker: _Worker) -> None:
        env = self.environment
        assert env is not None
        code = worker_code_dir(self.cache.root)
        argv = [
            env.python,
            "-s",
            "-c",
            _BOOTSTRAP % code,
            "--socket",
            self._socket,
            "--worker",
            str(worker.index),
        ]
        worker.started = time.monotonic()
        worker.proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=runtime_env(env.root),
            cwd=self.settings.folder or None,
            start_new_session=True,
        )
        worker.pump = asyncio.ensure_future(self._pump_output(worker))
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
                        _exit_text(worker.proc.returncode)
                        if exited.done()
                        else "did not connect within %d s" % LOAD_TIMEOUT,
                        env.python_version,
                        env.python,
                        _tail(worker.output),
                    ),
                    model=self.settings.name,
                )
            hello = worker.connected.result()
            worker.info = hello
            assert worker.link is not None
            worker.link.send(
                _frame_bytes(
                    ipc.encode_frame(
                        {
                            "op": "load",
                            "settings": self.settings.to_dict(),
                            "folder": self.settings.folder,
                            "source": self.settings.source,
                        }
                    )
                )
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
                    "" if header.get("kind") else _tail(worker.output),
                ),
                model=self.settings.name,
            )
        self._metadata = dict(header.get("metadata") or {})
        self._runtime = str(header.get("runtime", ""))
        worker.alive = True
        logger.info(
            "model %s: worker %d ready (pid %s, Python %s, %s)",
            self.settings.name,
            worker.index,
            worker.pid,
            hello.get("python"),
            hello.get("prefix"),
        )
        self._feed(worker)

    async def _stop_worker(self, worker: _Worker) -> None:
        worker.alive = False
        if worker.link is not None and worker.link.transport is not None:
            with contextlib.suppress(Exception):
                worker.link.send(_frame_bytes(ipc.encode_frame({"op": "stop"})))
        if worker.proc is not None and worker.proc.returncode is None:
            try:
                await asyncio.wait_for(worker.proc.wait(), STOP_GRACE)
            except asyncio.TimeoutError:
                worker.kill()
                await worker.proc.wait()
        self._fail_inflight(
            worker, ModelNotReady("model %r was unloaded" % self.settings.name, model=self.settings.name)
        )
        if worker.link is not None and worker.link.transport is not None:
            worker.link.transport.close()

    async def _pump_output(self, worker: _Worker) -> None:
        assert worker.proc is not None and worker.proc.stdout is not None
        async for raw in worker.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            worker.output.append(line)
            logger.info("[%s worker %d] %s", self.settings.name, worker.index, line)

    async def _on_death(self, worker: _Worker) -> None:
        if worker.dead:
            return
        worker.dead = True
        worker.alive = False
        worker.kill()
        code = await worker.proc.wait() if worker.proc is not None else None
        if self._stopping:
            return
        what = "was recycled (memory limit)" if worker.recycling else _exit_text(code)
        if not worker.recycling:
            self.restarts += 1
        self._fail_inflight(
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

    def _fail_inflight(self, worker: _Worker, exc: EnvserveError) -> None:
        calls, worker.inflight = worker.inflight, {}
        for call in calls.values():
            self._settle(call, exc=exc)

    async def _restart(self, old: _Worker) -> None:
        delay = BACKOFF_FIRST if time.monotonic() - old.started < STABLE_AFTER else 0.0
        while not self._stopping:
            if delay:
                await asyncio.sleep(delay)
            fresh = _Worker(old.index)
            self._workers[old.index] = fresh
            try:
                await self._start(fresh)
                self._problem = None
                return
            except Exception as exc:
                self._problem = "worker %d cannot restart: %s" % (old.index, exc)
                logger.error("model %s: %s", self.settings.name, self._problem)
            fresh.kill()
            delay = min(BACKOFF_MAX, max(delay * 2, BACKOFF_FIRST))

    async def _supervise(self) -> None:
        ping = _frame_bytes(ipc.encode_frame({"op": "ping", "id": 0}))
        while not self._stopping:
            await asyncio.sleep(PING_INTERVAL)
            now = time.monotonic()
            for worker in list(self._workers):
                if self.memory_limit_mb and worker.alive and not worker.recycling:
                    rss = _rss_mb(worker.pid)
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
                        worker.recycling = True
                        self.recycles += 1
                        if not worker.inflight:
                            worker.kill()
                        continue
                if not worker.alive or worker.link is None or worker.inflight:
                    continue
                if worker.ping_sent is None:
                    worker.ping_sent = now
                    worker.link.send(ping)
                elif now - worker.ping_sent > PING_TIMEOUT:
                    logger.warning(
                        "model %s: idle worker %d (pid %s) has not answered a ping for %.0f s; killing it",
                        self.settings.name,
                        worker.index,
                        worker.pid,
                        now - worker.ping_sent,
                    )
                    worker.kill()


def _rss_mb(pid: Optional[int]) -> float:
    """Resident memory of a process in MiB (0 when it cannot be read)."""
    if pid is None:
        return 0.0
    try:
        with open("/proc/%d/statm" % pid, encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError, TypeError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _tail(lines: Deque[str]) -> str:
    text = "\n".join(list(lines)[-15:]).strip()
    return ("; its output:\n" + text) if text else ""
