"""Calls of one model across its workers: which worker gets a call, the bounded queue, the deadlines.

A call goes to the least busy worker with room (at most :data:`DEPTH` in flight each: one running, the
others waiting in its socket) when none waits before it, else into the queue, bounded by
``max_queue_size`` (beyond it: 503). A worker takes the next queued call as soon as it answers one. A
stream takes a worker with nothing in flight, which then takes nothing else until the stream is done; it
waits at the head of the queue for one, and the calls behind it wait too.

All calls share one timeout, so their deadlines are in creation order and one timer sweeps the expired
ones instead of a timer per call. A call past its deadline fails with 504; if it was running, its worker
is killed (a stuck ``predict`` cannot be interrupted otherwise) and the calls pipelined behind it, which
had not started, go back to the front of the queue for the next worker. A stream's chunks are each bound
by the timeout instead.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional

from ..errors import EnvserveError, InferenceTimeout, WorkerUnavailable
from ..logcontext import REQUEST_ID
from ..protocol.v2 import InferenceRequest, InferenceResponse
from . import ipc
from .admission import ClientGone, admit, drop_when_client_leaves
from .ipc import Op
from .link import encode_frame
from .process import PendingCall, WorkerProcess, WorkerState, send_frame, server_dumps

__all__ = ["DEPTH", "STREAM_HIGH", "STREAM_LOW", "Dispatcher"]

logger = logging.getLogger("envserve.workers")

#: Calls one worker may have in flight (one running, the others waiting in its socket buffer). Pipelining
#: several lets the worker answer a run of calls per wake-up, which is what matters when it shares a core
#: with the server (bench/RESULTS.md has the measurements per depth); the price is that a worker that dies
#: fails up to this many calls (503) instead of fewer.
DEPTH = 8


#: Chunks of a stream that may wait for its consumer before the worker's socket stops being read (the
#: worker then blocks in its send: a slow client slows its model instead of filling the server's memory),
#: and the count below which reading resumes.
STREAM_HIGH, STREAM_LOW = 16, 4


def settle(call: PendingCall, result: Any = None, exc: Optional[BaseException] = None) -> None:
    if call.future.done():
        return
    if exc is not None:
        call.future.set_exception(exc)
    else:
        call.future.set_result(result)
    if call.chunks is not None:  # a stream's consumer reads its end (None) or its error from its chunks
        call.chunks.put_nowait(exc)
        if exc is not None:
            call.future.exception()  # read here: nobody awaits a stream's future


class Dispatcher:
    def __init__(
        self, model: str, timeout: float, max_queue: int, workers: Callable[[], List[WorkerProcess]]
    ) -> None:
        self.model = model
        self.timeout = timeout
        self.max_queue = max_queue
        self.workers = workers  # the pool's current workers
        self.queue: Deque[PendingCall] = deque()
        # Every call in creation order, for the deadline sweep; answered calls are dropped from the front
        # as new calls come in.
        self._deadlines: Deque[PendingCall] = deque()
        self._sweeper: Optional[asyncio.TimerHandle] = None
        self._ids = itertools.count(1)

    def submit(
        self, request: InferenceRequest, gone: Optional[ClientGone]
    ) -> asyncio.Future[InferenceResponse]:
        worker = None if self._waiting() else self._idle_worker()  # first come, first served
        if worker is None:
            admit(len(self.queue), self.max_queue, self.model)
        loop = asyncio.get_running_loop()
        call_id = next(self._ids)
        call = PendingCall(
            call_id,
            b"".join(ipc.encode_request(call_id, request, server_dumps, REQUEST_ID.get())),
            loop.create_future(),
            loop.time() + self.timeout,
        )
        call.depth = len(self.queue) + sum(len(w.inflight) for w in self.workers())
        deadlines = self._deadlines
        while deadlines and deadlines[0].future.done():
            deadlines.popleft()
        deadlines.append(call)
        if self._sweeper is None:
            self._sweeper = loop.call_at(deadlines[0].deadline, self._sweep)
        if worker is not None:
            self._dispatch(worker, call)
        else:
            self._enqueue(call, gone)
        return call.future

    def _waiting(self) -> bool:
        """Whether calls wait in the queue (those whose caller has gone are dropped first)."""
        queue = self.queue
        while queue and queue[0].future.done():
            queue.popleft()
        return bool(queue)

    def _enqueue(self, call: PendingCall, gone: Optional[ClientGone]) -> None:
        self.queue.append(call)
        drop_when_client_leaves(call.future, gone)  # it waits for a worker: drop it if its client leaves
        for worker in self.workers():
            self.feed(worker)

    def stream(self, request: InferenceRequest) -> PendingCall:
        """Open a stream with its first request, on a worker with nothing in flight (it then takes nothing
        else until the stream is done), or in the queue until one is free; its answers come as chunks."""
        worker = None
        if not self._waiting():
            worker = next((w for w in self.workers() if w.takes_calls and not w.inflight), None)
        if worker is None:
            admit(len(self.queue), self.max_queue, self.model)
        loop = asyncio.get_running_loop()
        call_id = next(self._ids)
        frame = ipc.encode_request(call_id, request, server_dumps, REQUEST_ID.get(), ipc.Op.STREAM)
        call = PendingCall(call_id, b"".join(frame), loop.create_future(), 0.0, stream=True)
        if worker is not None:
            self._dispatch(worker, call)
        else:  # not dropped by watching its client: its consumer cancels it (stream_cancel), queued or not
            self._enqueue(call, None)
        return call

    def stream_more(self, call: PendingCall, request: Optional[InferenceRequest]) -> None:
        """The client's next request for a running stream, or (None) its end of requests."""
        if call.future.done():
            return
        if request is None:
            frame = encode_frame({"op": ipc.Op.END, "id": call.id}, (), server_dumps)
        else:
            frame = ipc.encode_request(call.id, request, server_dumps, REQUEST_ID.get(), ipc.Op.MORE)
        worker = call.worker
        if worker is None:  # still queued: it goes with the stream's first request
            call.payload += b"".join(frame)
        elif call.id in worker.inflight and worker.link is not None:
            worker.link.send(b"".join(frame))

    def stream_taken(self, call: PendingCall) -> None:
        """The consumer took a chunk: below the low mark, the worker's socket is read again."""
        worker = call.worker
        chunks = call.chunks
        if chunks is not None and chunks.qsize() <= STREAM_LOW and worker is not None and worker.link:
            worker.link.resume()

    def stream_cancel(self, call: PendingCall) -> None:
        """The consumer has gone: a queued stream never starts; a running one is told to stop (its worker
        is free once it says it is done)."""
        call.cancelled = True
        worker = call.worker
        if worker is None or call.id not in worker.inflight:
            call.future.cancel()
            return
        if worker.link is not None:
            send_frame(worker.link, {"op": ipc.Op.CANCEL, "id": call.id})
            worker.link.resume()  # its last chunks are read and dropped

    def expire_stream(self, call: PendingCall) -> None:
        """A running stream sent no chunk within the inference timeout: its worker is stuck."""
        settle(
            call,
            exc=InferenceTimeout(
                "model %r sent no answer for %g s (inference_timeout); its worker is being restarted"
                % (self.model, self.timeout),
                model=self.model,
            ),
        )
        worker = call.worker
        if worker is not None and call.id in worker.inflight:
            logger.warning(
                "model %s: stream %d sent nothing for %g s; recycling worker %d (pid %s)",
                self.model,
                call.id,
                self.timeout,
                worker.index,
                worker.pid,
            )
            worker.state = WorkerState.STUCK
            worker.kill()

    def _idle_worker(self) -> Optional[WorkerProcess]:
        best: Optional[WorkerProcess] = None
        for w in self.workers():
            if (
                w.takes_calls
                and len(w.inflight) < DEPTH
                and not w.streaming
                and (best is None or len(w.inflight) < len(best.inflight))
            ):
                best = w
        return best

    def _dispatch(self, worker: WorkerProcess, call: PendingCall) -> None:
        assert worker.link is not None
        call.worker = worker
        worker.inflight[call.id] = call
        worker.ping_sent = None  # busy: liveness is the inference timeout's job now
        call.sent = time.time()
        worker.link.send(call.payload)

    def feed(self, worker: WorkerProcess) -> None:
        """Give ``worker`` queued calls while it has room (a stream only when it has nothing in flight)."""
        queue = self.queue
        while queue and worker.takes_calls and len(worker.inflight) < DEPTH and not worker.streaming:
            call = queue[0]
            if call.future.done():
                queue.popleft()
                continue
            if call.chunks is not None and worker.inflight:
                return  # the stream at the head waits for a worker of its own
            queue.popleft()
            self._dispatch(worker, call)

    def answered(self, worker: WorkerProcess, header: Dict[str, Any], body: bytes) -> None:
        """A ``result``, ``error``, ``chunk`` or ``done`` frame from ``worker``."""
        op = header.get("op")
        if op == Op.CHUNK:
            self._chunk(worker, header, body)
            return
        call = worker.inflight.pop(header.get("id"), None)  # type: ignore[arg-type]
        if call is None:
            return
        if op == Op.DONE:
            settle(call)
        elif op == Op.RESULT:
            try:
                response = ipc.decode_response(header, body)
                timings = response.report.timings
                timings["queue"] = [call.submitted, call.sent]
                timings["ipc"] = [call.sent, time.time()]
                response.report.queued["workers"] = call.depth
                settle(call, response)
            except Exception as exc:  # a malformed frame is a worker bug, not the caller's
                settle(call, exc=WorkerUnavailable("bad answer from the worker: %s" % exc))
        else:
            settle(call, exc=ipc.error_from_wire(header, self.model))

    def _chunk(self, worker: WorkerProcess, header: Dict[str, Any], body: bytes) -> None:
        call = worker.inflight.get(header.get("id"))  # type: ignore[arg-type]
        if call is None or call.chunks is None or call.future.done() or call.cancelled:
            return  # a cancelled stream's last chunks
        try:
            call.chunks.put_nowait(ipc.decode_response(header, body))
        except Exception as exc:
            settle(call, exc=WorkerUnavailable("bad answer from the worker: %s" % exc))
            return
        if call.chunks.qsize() >= STREAM_HIGH and worker.link is not None:
            worker.link.pause()

    def fail_inflight(self, worker: WorkerProcess, exc: EnvserveError) -> None:
        calls, worker.inflight = worker.inflight, {}
        for call in calls.values():
            settle(call, exc=exc)

    def close(self, exc: EnvserveError) -> None:
        """Fail every queued call and stop the sweep."""
        while self.queue:
            settle(self.queue.popleft(), exc=exc)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._deadlines.clear()

    def _sweep(self) -> None:
        """Expire every call past its deadline, then sleep until the oldest unanswered one's."""
        self._sweeper = None
        deadlines = self._deadlines
        loop = asyncio.get_running_loop()
        now = loop.time()
        stuck = False
        while deadlines and (deadlines[0].future.done() or deadlines[0].deadline <= now):
            call = deadlines.popleft()
            if not call.future.done():
                stuck = self._expire(call) or stuck
        if stuck:  # the calls a stuck worker handed back, and not expired themselves, go to the others
            for worker in self.workers():
                self.feed(worker)
        if deadlines:
            self._sweeper = loop.call_at(deadlines[0].deadline, self._sweep)

    def _expire(self, call: PendingCall) -> bool:
        """Fail the call with 504; True when it was running, and its worker is now being recycled."""
        worker = call.worker
        running = worker is not None and call.id in worker.inflight
        settle(
            call,
            exc=InferenceTimeout(
                "model %r did not answer within %g s (inference_timeout)%s"
                % (self.model, self.timeout, "; its worker is being restarted" if running else ""),
                model=self.model,
            ),
        )
        if not running:
            return False
        assert worker is not None
        logger.warning(
            "model %s: call %d exceeded %g s; recycling worker %d (pid %s)",
            self.model,
            call.id,
            self.timeout,
            worker.index,
            worker.pid,
        )
        worker.inflight.pop(call.id, None)
        # A worker runs its calls in the order it received them, so the ones sent after the stuck call have
        # not started: they go back to the front of the queue for the next worker instead of failing with it
        # (those whose own deadline has passed too fail in the same sweep, as calls that never started).
        behind = sorted((c for c in worker.inflight.values() if c.id > call.id), key=lambda c: c.id)
        for waiting in reversed(behind):
            del worker.inflight[waiting.id]
            waiting.worker = None
            self.queue.appendleft(waiting)
        worker.state = WorkerState.STUCK  # takes nothing more; its exit is seen and it is restarted
        worker.kill()
        return True
