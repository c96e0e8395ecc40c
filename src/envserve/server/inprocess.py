"""A model whose runtime lives in the server process.

Where a call runs is decided per call, from what the model's calls have cost so far:

- **on the event loop** (``infer_inline``), when the model is idle and the call is predicted to take less
  than :data:`INLINE_BUDGET`: no thread hand-off, the lowest latency (what the bench floor does);
- **on the model's own thread** otherwise (the first calls, slow models, unusually large requests): the
  event loop keeps answering health probes and other models while it computes. Calls of one model run
  one at a time, in order, as they would inline; the ones waiting are bounded by ``max_queue_size``.

The prediction scales the model's typical call time by the request's rows against its typical rows, so a
model that answers one row in 0.3 ms still sends a 100,000-row request to its thread. A model whose time
varies without a visible cause (a rare slow call of the same size) can still hold the loop once before
the average moves; docs/lifecycle.md says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncGenerator, AsyncIterator, Dict, Iterator, Optional

from ..errors import EnvserveError, InferenceError, ModelLoadError, ModelNotReady
from ..protocol.v2 import InferenceRequest, InferenceResponse
from ..runtimes import Runtime, create_runtime
from ..settings import ModelSettings
from ..workers.admission import ClientGone, admit, drop_when_client_leaves

__all__ = ["INLINE_BUDGET", "CallCost", "InProcessModel"]

#: Longest predicted call (seconds) that may run on the event loop itself.
INLINE_BUDGET = 0.002
#: Weight of the newest call in the running averages.
_SMOOTHING = 0.2


class CallCost:
    """Running averages of one model's call time and rows, and the time they predict for a request."""

    __slots__ = ("rows", "seconds")

    def __init__(self) -> None:
        self.seconds: Optional[float] = None
        self.rows = 1.0

    def predict(self, rows: int) -> Optional[float]:
        """Predicted seconds for a call of ``rows`` rows; None before the first call."""
        if self.seconds is None:
            return None
        return self.seconds * max(1.0, rows / self.rows)

    def observe(self, seconds: float, rows: int) -> None:
        rows = max(rows, 1)
        if self.seconds is None:
            self.seconds, self.rows = seconds, float(rows)
        else:
            self.seconds += _SMOOTHING * (seconds - self.seconds)
            self.rows += _SMOOTHING * (rows - self.rows)


def _rows(request: InferenceRequest) -> int:
    data = request.inputs[0].data if request.inputs else None
    return int(data.shape[0]) if data is not None and data.ndim else 1


_LOAD_LOCK = threading.Lock()

#: Chunks of a stream that may wait for its consumer before the runtime's generator waits too.
STREAM_AHEAD = 16
_END = object()


class _Failed:
    """What the model's thread raised while streaming, handed to the event loop."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _model_error(settings: ModelSettings, exc: BaseException) -> BaseException:
    if isinstance(exc, EnvserveError):
        return exc
    error = InferenceError(
        "model %r raised %s: %s" % (settings.name, type(exc).__name__, exc),
        model=settings.name,
        version=settings.version,
    )
    error.__cause__ = exc
    return error


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class InProcessModel:
    def __init__(self, settings: ModelSettings, max_queue: int = 0) -> None:
        self.settings = settings
        self.max_queue = max_queue
        self.runtime: Optional[Runtime] = None
        self.cost = CallCost()
        self._pending = 0  # calls submitted to the model's thread and not yet answered
        self._capabilities: Dict[str, Any] = {}
        self._streams = 0  # streams being answered
        self._executor: Optional[ThreadPoolExecutor] = None

    async def load(self) -> None:
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="envserve-%s" % self.settings.name[:20])
        runtime = await loop.run_in_executor(self._executor, self._create_and_load)
        self._capabilities = runtime.capabilities()  # declared once: the data plane asks on every call
        self.runtime = runtime

    def _create_and_load(self) -> Runtime:
        """Import the runtime and load the model, one in-process model at a time: importing a model
        folder's module puts that folder first on the process-wide ``sys.path``, where another model's
        imports of the same names (its ``runtimes``, ``utils``, ...) would find it. Loads in worker
        processes still run in parallel."""
        with _LOAD_LOCK:
            runtime = create_runtime(self.settings)
            try:
                runtime.load()
            except EnvserveError:
                raise
            except Exception as exc:
                raise ModelLoadError(
                    "%s.load() failed: %s: %s" % (type(runtime).__name__, type(exc).__name__, exc),
                    model=self.settings.name,
                ) from exc
        return runtime

    async def unload(self) -> None:
        runtime, self.runtime = self.runtime, None
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if runtime is not None:  # after the calls already queued on its thread
            await asyncio.wrap_future(executor.submit(runtime.unload))
        executor.shutdown(wait=False)

    # -- calls ----------------------------------------------------------------------------------------

    def inline_ok(self, request: InferenceRequest) -> bool:
        """True when this call may run on the event loop now: the model is idle and the call is fast."""
        if self._pending or not getattr(self.runtime, "inline_safe", True):
            return False
        predicted = self.cost.predict(_rows(request))
        return predicted is not None and predicted <= INLINE_BUDGET

    def infer_inline(self, request: InferenceRequest) -> InferenceResponse:
        started = time.perf_counter()
        response = self._call(request)
        self.cost.observe(time.perf_counter() - started, _rows(request))
        return response

    async def infer(self, request: InferenceRequest, gone: Optional[ClientGone] = None) -> InferenceResponse:
        executor = self._executor
        if executor is None or self.runtime is None:
            raise ModelNotReady("model %r is not loaded" % self.settings.name, model=self.settings.name)
        admit(self._pending - 1, self.max_queue, self.settings.name)  # one call runs, the rest wait
        self._pending += 1
        try:
            # in the request's context, so the model's log lines carry its request id
            context = contextvars.copy_context()
            future = asyncio.get_running_loop().run_in_executor(
                executor, context.run, self._timed_call, request
            )
            if self._pending > 1:  # it waits behind others: drop it if its client leaves meanwhile
                drop_when_client_leaves(future, gone)
            return await future
        finally:
            self._pending -= 1

    async def infer_stream(
        self, requests: AsyncIterator[InferenceRequest], gone: Optional[ClientGone] = None
    ) -> AsyncGenerator[InferenceResponse, None]:
        """A stream on the model's thread: the requests go to it as they come, each chunk comes back as the
        runtime yields it. At most :data:`STREAM_AHEAD` chunks wait for the consumer; beyond that the
        runtime waits (a slow client slows its model, it does not fill memory). Leaving the loop early
        stops the runtime's generator at its next chunk."""
        executor, runtime = self._executor, self.runtime
        if executor is None or runtime is None:
            raise ModelNotReady("model %r is not loaded" % self.settings.name, model=self.settings.name)
        admit(self._pending - 1, self.max_queue, self.settings.name)
        loop = asyncio.get_running_loop()
        inbox: queue.Queue[Any] = queue.Queue()
        outbox: asyncio.Queue[Any] = asyncio.Queue()
        room = threading.Semaphore(STREAM_AHEAD)
        stop = threading.Event()

        def incoming() -> Iterator[InferenceRequest]:
            while True:
                item = inbox.get()
                if item is _END:
                    return
                yield item

        def produce() -> None:
            chunks = None
            try:
                chunks = runtime.infer_stream(incoming())
                for chunk in chunks:
                    while not room.acquire(timeout=0.1):
                        if stop.is_set():
                            return
                    if stop.is_set():
                        return
                    loop.call_soon_threadsafe(outbox.put_nowait, chunk)
                loop.call_soon_threadsafe(outbox.put_nowait, _END)
            except BaseException as exc:
                loop.call_soon_threadsafe(outbox.put_nowait, _Failed(exc))
            finally:
                if chunks is not None:
                    with contextlib.suppress(Exception):
                        chunks.close()

        async def forward() -> None:
            try:
                async for request in requests:
                    inbox.put(request)
            except Exception as exc:
                loop.call_soon(outbox.put_nowait, _Failed(exc))
            finally:
                inbox.put(_END)

        self._pending += 1
        self._streams += 1
        context = contextvars.copy_context()
        running = loop.run_in_executor(executor, context.run, produce)
        forwarding = asyncio.ensure_future(forward())
        try:
            while True:
                item = await outbox.get()
                room.release()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise _model_error(self.settings, item.exc)
                yield item
        finally:
            stop.set()
            inbox.put(_END)
            forwarding.cancel()
            self._pending -= 1
            self._streams -= 1
            running.add_done_callback(_retrieve)

    def _timed_call(self, request: InferenceRequest) -> InferenceResponse:
        started = time.perf_counter()
        try:
            return self._call(request)
        finally:
            self.cost.observe(time.perf_counter() - started, _rows(request))

    def _call(self, request: InferenceRequest) -> InferenceResponse:
        runtime = self.runtime
        if runtime is None:
            raise ModelNotReady("model %r is not loaded" % self.settings.name, model=self.settings.name)
        try:
            started = time.time()
            response = runtime.infer(request)
            response.report.timings["predict"] = [started, time.time()]
            return response
        except EnvserveError:
            raise
        except Exception as exc:
            raise _model_error(self.settings, exc) from exc

    # -- description ----------------------------------------------------------------------------------

    def metadata(self) -> Dict[str, Any]:
        assert self.runtime is not None
        return self.runtime.metadata()

    def capabilities(self) -> Dict[str, Any]:
        return self._capabilities

    def describe(self) -> Dict[str, Any]:
        predicted = self.cost.predict(1)
        return {
            "runtime": type(self.runtime).__name__ if self.runtime else None,
            "environment": None,
            "queued": max(self._pending - 1, 0),
            "streams": self._streams,
            "call_seconds": None if predicted is None else round(predicted, 6),
        }

    def problem(self) -> Optional[str]:
        return None
