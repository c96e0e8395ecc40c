"""Server side of worker processes: start, feed, watch and restart the workers of one model.

A :class:`WorkerPool` is the registry's handle for a model that runs in its own environment:

- ``load()`` prepares the environment through the cache (extract/build once), starts
  ``parallel_workers`` processes with the environment's interpreter and waits until each has loaded the
  model (or reports why it could not);
- ``infer()`` queues the call; each worker takes calls from the shared queue, at most ``DEPTH`` at a
  time, so a busy worker is not handed more while an idle one waits;
- a worker that exits or stops answering pings is restarted with exponential backoff; the calls it had
  in flight fail at once with :class:`~envserve.errors.WorkerUnavailable` (503); queued calls wait for
  the next worker, up to the inference timeout;
- a call that exceeds ``inference_timeout`` fails with :class:`~envserve.errors.InferenceTimeout` (504)
  and its worker is recycled (a stuck ``predict`` cannot be interrupted any other way);
- ``unload()`` stops the workers (``stop``, then SIGKILL after a grace period).

Workers die with the server even when it is SIGKILLed (PR_SET_PDEATHSIG and a parent watchdog in
the worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Set

from ..environments import Environment, EnvironmentCache, EnvironmentSource, runtime_env
from ..errors import (
    EnvserveError,
    InferenceTimeout,
    ModelLoadError,
    ModelNotReady,
    WorkerUnavailable,
)
from ..protocol.v2 import InferenceRequest, InferenceResponse
from ..settings.model import ModelSettings
from . import ipc

__all__ = ["WorkerPool", "worker_code_dir"]

logger = logging.getLogger("envserve.workers")

#: Calls one worker may have in flight (one running, one waiting in its socket buffer).
DEPTH = 2
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
    __slots__ = ("future", "id", "pieces", "worker")

    def __init__(self, call_id: int, pieces: List[Any], future: asyncio.Future[InferenceResponse]) -> None:
        self.id = call_id
        self.pieces = pieces
        self.future = future
        self.worker: Optional[_Worker] = None


class _Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None
        self.connected: asyncio.Future[Dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.inflight: Dict[int, _Call] = {}
        self.capacity = asyncio.Semaphore(DEPTH)
        self.tasks: List[asyncio.Task[Any]] = []
        self.last_pong = time.monotonic()
        self.started = time.monotonic()
        self.output: Deque[str] = deque(maxlen=40)
        self.alive = False
        self.info: Dict[str, Any] = {}

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


class WorkerPool:
    inline = False

    def __init__(
        self,
        settings: ModelSettings,
        source: EnvironmentSource,
        cache: EnvironmentCache,
        socket_dir: str,
        workers: int = 1,
        inference_timeout: float = 60.0,
    ) -> None:
        self.settings = settings
        self.source = source
        self.cache = cache
        self.socket_dir = socket_dir
        self.size = max(1, workers)
        self.inference_timeout = inference_timeout
        self.environment: Optional[Environment] = None
        self.restarts = 0
        self._workers: List[_Worker] = []
        self._queue: asyncio.Queue[_Call] = asyncio.Queue()
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
        self._server = await asyncio.start_unix_server(self._on_connect, path=self._socket)
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
        await asyncio.gather(*(self._stop_worker(w) for w in self._workers), return_exceptions=True)
        while not self._queue.empty():
            call = self._queue.get_nowait()
            if not call.future.done():
                call.future.set_exception(
                    ModelNotReady("model %r was unloaded" % self.settings.name, model=self.settings.name)
                )
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._socket)
        if self.environment is not None:
            self.environment.release()

    def infer_inline(self, request: InferenceRequest) -> InferenceResponse:
        raise RuntimeError("models in worker processes are called with infer()")

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        if self._stopping:
            raise ModelNotReady("model %r is unloading" % self.settings.name, model=self.settings.name)
        call_id = next(self._ids)
        future: asyncio.Future[InferenceResponse] = asyncio.get_running_loop().create_future()
        call = _Call(call_id, ipc.encode_request(call_id, request), future)
        self._queue.put_nowait(call)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.inference_timeout)
        except asyncio.TimeoutError:
            worker = call.worker
            if not future.done():
                future.cancel()
            if worker is not None and call.id in worker.inflight:
                logger.warning(
                    "model %s: call %d exceeded %.1f s; recycling worker %d (pid %s)",
                    self.settings.name,
                    call.id,
                    self.inference_timeout,
                    worker.index,
                    worker.pid,
                )
                worker.kill()
            raise InferenceTimeout(
                "model %r did not answer within %g s (inference_timeout)%s"
                % (
                    self.settings.name,
                    self.inference_timeout,
                    "; its worker is being restarted" if worker is not None else "",
                ),
                model=self.settings.name,
            ) from None

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
        }

    def worker_pids(self) -> List[int]:
        return [w.pid for w in self._workers if w.alive and w.pid is not None]

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
        worker.connected = asyncio.get_running_loop().create_future()
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
        worker.tasks = [asyncio.ensure_future(self._pump_output(worker))]
        exited = asyncio.ensure_future(worker.proc.wait())
        try:
            waiters: Set[asyncio.Future[Any]] = {worker.connected, exited}
            done, _ = await asyncio.wait(waiters, timeout=LOAD_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            if worker.connected not in done:
                worker.kill()
                await worker.proc.wait()
                await asyncio.sleep(0.05)  # let the output pump drain
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
        finally:
            if not exited.done():
                exited.cancel()
        hello = worker.connected.result()
        worker.info = hello
        assert worker.reader is not None and worker.writer is not None
        await _send(
            worker.writer,
            ipc.encode_frame(
                {
                    "op": "load",
                    "settings": self.settings.to_dict(),
                    "folder": self.settings.folder,
                    "source": self.settings.source,
                }
            ),
        )
        header, _ = await _read_frame(worker.reader)
        if header.get("op") != "loaded" or not header.get("ok"):
            worker.kill()
            raise ModelLoadError(
                "model %r failed to load in its environment (Python %s): %s"
                % (self.settings.name, hello.get("python"), header.get("error", "no answer")),
                model=self.settings.name,
            )
        self._metadata = header.get("metadata") or {}
        self._runtime = header.get("runtime", "")
        worker.alive = True
        worker.last_pong = time.monotonic()
        worker.tasks += [
            asyncio.ensure_future(self._read_loop(worker)),
            asyncio.ensure_future(self._send_loop(worker)),
        ]
        logger.info(
            "model %s: worker %d ready (pid %s, Python %s, %s)",
            self.settings.name,
            worker.index,
            worker.pid,
            hello.get("python"),
            hello.get("prefix"),
        )

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            header, _ = await _read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            writer.close()
            return
        index = header.get("worker")
        if header.get("op") != "hello" or not isinstance(index, int) or not 0 <= index < len(self._workers):
            writer.close()
            return
        worker = self._workers[index]
        if worker.connected.done():
            writer.close()
            return
        worker.reader, worker.writer = reader, writer
        worker.connected.set_result(header)

    async def _stop_worker(self, worker: _Worker) -> None:
        worker.alive = False
        if worker.writer is not None:
            with contextlib.suppress(Exception):
                await _send(worker.writer, ipc.encode_frame({"op": "stop"}))
        if worker.proc is not None and worker.proc.returncode is None:
            try:
                await asyncio.wait_for(worker.proc.wait(), STOP_GRACE)
            except asyncio.TimeoutError:
                worker.kill()
                await worker.proc.wait()
        self._fail_inflight(
            worker, ModelNotReady("model %r was unloaded" % self.settings.name, model=self.settings.name)
        )
        for task in worker.tasks:
            task.cancel()
        if worker.writer is not None:
            worker.writer.close()

    # -- running ------------------------------------------------------------------------------------------

    async def _send_loop(self, worker: _Worker) -> None:
        assert worker.writer is not None
        writer = worker.writer
        while worker.alive:
            await worker.capacity.acquire()
            call = await self._queue.get()
            if call.future.done() or not worker.alive:
                worker.capacity.release()
                if not call.future.done():
                    self._queue.put_nowait(call)  # this worker died meanwhile: leave it for the next
                continue
            call.worker = worker
            worker.inflight[call.id] = call
            writer.writelines(call.pieces)
            if writer.transport.get_write_buffer_size() > 1 << 20:
                await writer.drain()

    async def _read_loop(self, worker: _Worker) -> None:
        assert worker.reader is not None
        reader = worker.reader
        try:
            while True:
                header, body = await _read_frame(reader)
                op = header.get("op")
                if op == "pong":
                    worker.last_pong = time.monotonic()
                    continue
                call = worker.inflight.pop(header.get("id"), None)
                if call is None:
                    continue
                worker.capacity.release()
                if call.future.done():
                    continue
                if op == "result":
                    try:
                        call.future.set_result(ipc.decode_response(header, body))
                    except Exception as exc:  # a malformed frame is a worker bug, not the caller's
                        call.future.set_exception(WorkerUnavailable("bad answer from the worker: %s" % exc))
                else:
                    call.future.set_exception(ipc.error_from_wire(header, self.settings.name))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        await self._on_death(worker)

    async def _pump_output(self, worker: _Worker) -> None:
        assert worker.proc is not None and worker.proc.stdout is not None
        async for raw in worker.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            worker.output.append(line)
            logger.info("[%s worker %d] %s", self.settings.name, worker.index, line)

    async def _on_death(self, worker: _Worker) -> None:
        if not worker.alive:
            return
        worker.alive = False
        worker.kill()
        code = await worker.proc.wait() if worker.proc is not None else None
        if self._stopping:
            return
        self.restarts += 1
        what = _exit_text(code)
        self._fail_inflight(
            worker,
            WorkerUnavailable(
                "the worker serving model %r %s while handling this request; it is being restarted, "
                "retry shortly" % (self.settings.name, what),
                model=self.settings.name,
            ),
        )
        for task in worker.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if worker.writer is not None:
            worker.writer.close()
        logger.warning(
            "model %s: worker %d (pid %s) %s; restarting", self.settings.name, worker.index, worker.pid, what
        )
        task = asyncio.ensure_future(self._restart(worker))
        self._restarting.add(task)
        task.add_done_callback(self._restarting.discard)

    def _fail_inflight(self, worker: _Worker, exc: EnvserveError) -> None:
        calls, worker.inflight = worker.inflight, {}
        for call in calls.values():
            worker.capacity.release()
            if not call.future.done():
                call.future.set_exception(exc)

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
            except ModelLoadError as exc:
                self._problem = "worker %d cannot restart: %s" % (old.index, exc)
                logger.error("model %s: %s", self.settings.name, self._problem)
            except Exception as exc:
                self._problem = "worker %d cannot restart: %s: %s" % (old.index, type(exc).__name__, exc)
                logger.exception("model %s: restarting worker %d failed", self.settings.name, old.index)
            fresh.kill()
            delay = min(BACKOFF_MAX, max(delay * 2, BACKOFF_FIRST))

    async def _supervise(self) -> None:
        while not self._stopping:
            await asyncio.sleep(PING_INTERVAL)
            now = time.monotonic()
            for worker in list(self._workers):
                if not worker.alive or worker.writer is None:
                    continue
                if now - worker.last_pong > PING_TIMEOUT:
                    logger.warning(
                        "model %s: worker %d (pid %s) missed pings for %.0f s; killing it",
                        self.settings.name,
                        worker.index,
                        worker.pid,
                        now - worker.last_pong,
                    )
                    worker.kill()
                    continue
                with contextlib.suppress(Exception):
                    worker.writer.write(b"".join(bytes(p) for p in ipc.encode_frame({"op": "ping", "id": 0})))


def _tail(lines: Deque[str]) -> str:
    text = "\n".join(list(lines)[-15:]).strip()
    return ("; its output:\n" + text) if text else ""


async def _send(writer: asyncio.StreamWriter, pieces: List[Any]) -> None:
    writer.writelines(pieces)
    await writer.drain()


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    head_len, body_len = ipc.split_prefix(await reader.readexactly(ipc.PREFIX.size))
    header = json.loads(await reader.readexactly(head_len))
    body = await reader.readexactly(body_len) if body_len else b""
    return header, body
