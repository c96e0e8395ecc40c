"""The dispatcher driven with fake workers (no processes, no sockets): which worker a call goes to, the
bounded queue, answers and errors from the worker's frames, deadlines, a stuck worker's pipelined calls,
and calls whose client has gone."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional

import numpy as np
import orjson
import pytest

from envserve.errors import InferenceTimeout, Overloaded, WorkerUnavailable
from envserve.protocol.v2 import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput
from envserve.workers import ipc
from envserve.workers.dispatch import DEPTH, Dispatcher
from envserve.workers.link import FrameReader
from envserve.workers.process import WorkerState


class FakeLink:
    def __init__(self) -> None:
        self.sent: List[bytes] = []
        self.paused = False

    def send(self, payload: bytes) -> None:
        self.sent.append(payload)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False


class FakeWorker:
    """What the dispatcher reads and writes of a WorkerProcess."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.pid = 1000 + index
        self.state = WorkerState.READY
        self.inflight: Dict[int, Any] = {}
        self.link = FakeLink()
        self.ping_sent: Optional[float] = None
        self.killed = 0

    @property
    def takes_calls(self) -> bool:
        return self.state is WorkerState.READY

    @property
    def streaming(self) -> bool:
        return any(c.chunks is not None for c in self.inflight.values())

    def kill(self) -> None:
        self.killed += 1

    def call_ids(self) -> List[int]:
        """The ids of the calls sent to this worker, in order, read back from the frames."""
        return [header["id"] for header in self.frames()]

    def frames(self) -> List[Dict[str, Any]]:
        """The headers of every frame sent to this worker, in order."""
        reader = FrameReader(orjson.loads)
        for payload in self.link.sent:
            reader.feed(payload)
        return [header for header, _ in reader.frames()]


def _request(value: int = 1) -> InferenceRequest:
    return InferenceRequest([RequestInput("x", [1], "INT64", np.array([value], dtype=np.int64))])


def _result(call_id: int, value: int, op: str = ipc.Op.RESULT) -> Any:
    """A ``result`` (or ``chunk``) frame as the worker sends it, as (header, body)."""
    response = InferenceResponse("m", [ResponseOutput("y", [1], "INT64", np.array([value], dtype=np.int64))])
    response.report.timings = {"predict": [10.0, 11.0]}
    reader = FrameReader(orjson.loads)
    frame = ipc.encode_response(call_id, response, op)
    reader.feed(b"".join(bytes(memoryview(p).cast("B")) for p in frame))
    return next(reader.frames())


def _dispatcher(workers: List[FakeWorker], timeout: float = 60.0, max_queue: int = 0) -> Dispatcher:
    return Dispatcher("m", timeout, max_queue, lambda: workers)  # type: ignore[arg-type, return-value]


def test_calls_go_to_the_least_busy_worker_with_room_then_wait_in_a_bounded_queue():
    async def scenario():
        workers = [FakeWorker(0), FakeWorker(1)]
        dispatcher = _dispatcher(workers, max_queue=2)
        futures = [dispatcher.submit(_request(), None) for _ in range(2 * DEPTH)]
        assert [len(w.inflight) for w in workers] == [DEPTH, DEPTH]  # spread evenly, up to DEPTH each
        assert workers[0].call_ids() == list(range(1, 2 * DEPTH, 2))  # alternating: least busy first
        queued = [dispatcher.submit(_request(), None) for _ in range(2)]
        assert len(dispatcher.queue) == 2
        with pytest.raises(Overloaded, match="'m' has 2 requests waiting, its limit"):
            dispatcher.submit(_request(), None)
        # an answer frees a place: the worker that answered takes the oldest queued call
        header, body = _result(1, 7)
        dispatcher.answered(workers[0], header, body)
        dispatcher.feed(workers[0])
        answer = await futures[0]
        assert answer.outputs[0].data.tolist() == [7]
        assert set(answer.report.timings) == {"predict", "queue", "ipc"}  # the server's stages added
        assert len(dispatcher.queue) == 1 and workers[0].call_ids()[-1] == 2 * DEPTH + 1
        for future in futures[1:] + queued:
            future.cancel()

    asyncio.run(scenario())


def test_an_error_frame_fails_its_call_and_a_broken_frame_is_the_workers_fault():
    async def scenario():
        worker = FakeWorker(0)
        dispatcher = _dispatcher([worker])
        first, second = dispatcher.submit(_request(), None), dispatcher.submit(_request(), None)
        dispatcher.answered(
            worker, {"op": ipc.Op.ERROR, "id": 1, "kind": "InvalidRequest", "error": "bad x"}, b""
        )
        with pytest.raises(Exception) as info:
            await first
        assert type(info.value).__name__ == "InvalidRequest" and str(info.value) == "bad x"
        dispatcher.answered(worker, {"op": ipc.Op.RESULT, "id": 2, "response": {}}, b"")
        with pytest.raises(WorkerUnavailable, match="bad answer from the worker"):
            await second
        dispatcher.answered(worker, {"op": ipc.Op.RESULT, "id": 99}, b"")  # unknown: ignored
        assert worker.inflight == {}

    asyncio.run(scenario())


def test_a_call_past_its_deadline_fails_504_and_its_stuck_worker_hands_back_the_calls_behind_it():
    async def scenario():
        stuck, other = FakeWorker(0), FakeWorker(1)
        other.state = WorkerState.STARTING  # not taking calls yet
        dispatcher = _dispatcher([stuck, other], timeout=0.2)
        running = dispatcher.submit(_request(), None)
        await asyncio.sleep(0.05)
        assert not running.done()
        await asyncio.sleep(0.95)  # call 1 expired long ago; the calls submitted now have 0.2 s each
        behind = [dispatcher.submit(_request(), None) for _ in range(2)]
        assert running.done() and stuck.state is WorkerState.STUCK and stuck.killed == 1
        with pytest.raises(InferenceTimeout, match=r"within 0\.2 s .*its worker is being restarted"):
            await running
        assert list(stuck.inflight) == [] and list(dispatcher.queue) != []  # a stuck worker takes nothing
        other.state = WorkerState.READY
        dispatcher.feed(other)
        assert other.call_ids() == [2, 3]
        for call_id in (2, 3):
            header, body = _result(call_id, call_id)
            dispatcher.answered(other, header, body)
        assert [(await f).outputs[0].data.tolist() for f in behind] == [[2], [3]]
        dispatcher.close(WorkerUnavailable("closed"))

    asyncio.run(scenario())


def test_calls_pipelined_behind_a_stuck_call_go_to_the_next_worker_unless_their_own_time_is_up():
    async def scenario():
        stuck, other = FakeWorker(0), FakeWorker(1)
        other.state = WorkerState.STARTING
        dispatcher = _dispatcher([stuck, other], timeout=60.0)
        first, expired_too, later = (dispatcher.submit(_request(), None) for _ in range(3))
        assert list(stuck.inflight) == [1, 2, 3]
        other.state = WorkerState.READY
        now = asyncio.get_running_loop().time()
        stuck.inflight[1].deadline = stuck.inflight[2].deadline = now - 1  # their time is up; call 3's is not
        dispatcher._sweep()
        with pytest.raises(InferenceTimeout, match="its worker is being restarted"):
            await first
        with pytest.raises(InferenceTimeout) as info:
            await expired_too
        assert "restarted" not in str(info.value)  # it never started: no worker is blamed for it
        assert stuck.killed == 1 and other.killed == 0 and other.state is WorkerState.READY
        assert other.call_ids() == [3]  # the one with time left runs on the healthy worker
        header, body = _result(3, 3)
        dispatcher.answered(other, header, body)
        assert (await later).outputs[0].data.tolist() == [3]
        dispatcher.close(WorkerUnavailable("closed"))

    asyncio.run(scenario())


def test_a_queued_call_whose_client_leaves_is_dropped_before_any_worker_sees_it():
    async def scenario():
        worker = FakeWorker(0)
        worker.state = WorkerState.STARTING
        dispatcher = _dispatcher([worker])
        left = asyncio.Event()
        waiting = dispatcher.submit(_request(), left.wait)
        left.set()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        worker.state = WorkerState.READY
        dispatcher.feed(worker)
        assert worker.link.sent == [] and worker.inflight == {}

    asyncio.run(scenario())


def test_a_dying_worker_fails_its_calls_and_closing_fails_the_queue():
    async def scenario():
        worker = FakeWorker(0)
        dispatcher = _dispatcher([worker])
        sent = [dispatcher.submit(_request(), None) for _ in range(DEPTH + 1)]
        dispatcher.fail_inflight(worker, WorkerUnavailable("the worker died"))
        dispatcher.close(WorkerUnavailable("unloaded"))
        messages = []
        for future in sent:
            with pytest.raises(WorkerUnavailable) as info:
                await future
            messages.append(str(info.value))
        assert messages == ["the worker died"] * DEPTH + ["unloaded"]

    asyncio.run(scenario())


def test_a_stream_gets_a_worker_of_its_own_and_its_chunks_flow_with_backpressure():
    from envserve.workers.dispatch import STREAM_HIGH, STREAM_LOW

    async def scenario():
        busy, free = FakeWorker(0), FakeWorker(1)
        dispatcher = _dispatcher([busy, free])
        unary = dispatcher.submit(_request(), None)  # goes to worker 0
        stream = dispatcher.stream(_request(5))
        assert stream.worker is free and [h["op"] for h in free.frames()] == ["stream"]
        assert (
            dispatcher.submit(_request(), None) is not None and len(busy.inflight) == 2
        )  # not to the stream's
        dispatcher.stream_more(stream, _request(6))
        dispatcher.stream_more(stream, None)
        assert [h["op"] for h in free.frames()] == ["stream", "more", "end"]
        for i in range(STREAM_HIGH):
            dispatcher.answered(free, *_result(stream.id, i, ipc.Op.CHUNK))
        assert free.link.paused  # the consumer is behind: the worker's frames wait in its socket
        chunks = stream.chunks
        taken = []
        while chunks.qsize() > STREAM_LOW:
            taken.append((await chunks.get()).outputs[0].data.tolist())
            dispatcher.stream_taken(stream)
            assert free.link.paused == (chunks.qsize() > STREAM_LOW)
        assert not free.link.paused
        dispatcher.answered(free, {"op": ipc.Op.DONE, "id": stream.id}, b"")
        rest = []
        while True:
            item = await chunks.get()
            if item is None:
                break
            rest.append(item.outputs[0].data.tolist())
        assert taken + rest == [[i] for i in range(STREAM_HIGH)]
        assert free.inflight == {} and stream.future.done()
        unary.cancel()

    asyncio.run(scenario())


def test_a_stream_waits_for_an_idle_worker_and_keeps_what_the_client_sends_meanwhile():
    async def scenario():
        worker = FakeWorker(0)
        dispatcher = _dispatcher([worker])
        running = dispatcher.submit(_request(), None)
        stream = dispatcher.stream(_request())
        behind = dispatcher.submit(_request(), None)
        assert stream.worker is None and list(dispatcher.queue) == [stream, dispatcher.queue[1]]
        dispatcher.stream_more(stream, _request(2))
        dispatcher.stream_more(stream, None)
        dispatcher.feed(worker)
        assert worker.call_ids() == [1]  # the stream at the head waits for the worker to be idle
        dispatcher.answered(worker, *_result(1, 1))
        dispatcher.feed(worker)
        assert [h["op"] for h in worker.frames()][1:] == ["stream", "more", "end"]
        assert stream.worker is worker and len(dispatcher.queue) == 1  # and the call behind it still waits
        dispatcher.answered(
            worker, {"op": ipc.Op.ERROR, "id": stream.id, "kind": "InferenceError", "error": "x"}, b""
        )
        failed = await stream.chunks.get()
        assert type(failed).__name__ == "InferenceError" and str(failed) == "x"
        dispatcher.feed(worker)
        assert worker.call_ids()[-1] == 3  # free again: the call behind the stream runs
        await running
        behind.cancel()

    asyncio.run(scenario())


def test_a_cancelled_stream_is_told_to_stop_or_never_starts():
    async def scenario():
        worker = FakeWorker(0)
        dispatcher = _dispatcher([worker])
        stream = dispatcher.stream(_request())
        queued = dispatcher.stream(_request())
        dispatcher.stream_cancel(queued)
        dispatcher.stream_cancel(stream)
        assert [h["op"] for h in worker.frames()] == ["stream", "cancel"]
        dispatcher.answered(worker, *_result(stream.id, 7, ipc.Op.CHUNK))  # sent before it heard: dropped?
        dispatcher.answered(worker, {"op": ipc.Op.DONE, "id": stream.id}, b"")
        dispatcher.feed(worker)
        assert [h["op"] for h in worker.frames()] == ["stream", "cancel"]  # the cancelled one never started
        assert worker.inflight == {}

    asyncio.run(scenario())
