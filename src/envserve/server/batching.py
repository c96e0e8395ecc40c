"""Adaptive batching: concurrent requests to one model are merged along their first dimension, run
once, and split back.

Enabled per model by ``max_batch_size`` > 1 in model-settings.json (``max_batch_time`` in seconds bounds
how long a request may wait for company). It adapts to load instead of always waiting: a request that
finds the model idle runs at once, after letting the event loop deliver requests that have already
arrived; requests that arrive while a batch runs are merged into the next one. So a lone client pays
almost nothing and a crowd is served in batches.

Only requests with the same input names, datatypes, trailing dimensions, parameters and requested
outputs are merged; any other request runs alone (in its turn). If a merged call fails, or its outputs
cannot be split by rows, each request of the batch is run on its own so every error reaches only the
request it belongs to. Works the same for in-process models and models in worker processes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import Any, AsyncGenerator, AsyncIterator, Deque, Dict, List, Optional, Tuple

import numpy as np

from ..logcontext import REQUEST_ID
from ..protocol.v2 import InferenceRequest, InferenceResponse, RequestInput, ResponseOutput
from ..workers.admission import ClientGone, admit, drop_when_client_leaves
from .handle import ModelHandle

__all__ = ["BatchingHandle"]


# (request, its caller's future, its batch signature, its request id for log lines, when it was queued
# in wall-clock seconds for the traces)
_Item = Tuple[InferenceRequest, "asyncio.Future[InferenceResponse]", Optional[Tuple[Any, ...]], str, float]


def _signature(request: InferenceRequest) -> Optional[Tuple[Any, ...]]:
    """What must match for two requests to share a batch; None when the request cannot be batched."""
    if request.passthrough is not None:
        return None  # a protocol body passed through as it arrived (MLflow's /invocations): alone
    rows = None
    parts: List[Any] = []
    for inp in request.inputs:
        if inp.data.ndim == 0 or inp.data.shape != tuple(inp.shape):  # (strings shaped as MLServer's)
            return None
        n = inp.data.shape[0]
        if rows is None:
            rows = n
        elif n != rows:
            return None
        parts.append((inp.name, inp.datatype, tuple(inp.shape[1:]), _canon(inp.parameters)))
    outputs = tuple((o.name, _canon(o.parameters)) for o in request.outputs)
    return (tuple(parts), _canon(request.parameters), outputs)


def _canon(doc: Dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, default=str) if doc else ""


class BatchingHandle:
    """Wraps a model handle (in process or worker pool) with adaptive batching."""

    def __init__(
        self,
        inner: ModelHandle,
        max_batch_size: int,
        max_batch_time: float,
        max_queue: int = 0,
        max_rows: int = 1024,
    ) -> None:
        #: Rows one merged call may hold (``max_batch_rows``): past this, a bigger batch saves no per-call
        #: overhead worth having and loses cache locality (bench/RESULTS.md).
        self.max_rows = max_rows
        self.inner = inner
        self.settings = inner.settings
        self.max_batch_size = max(1, max_batch_size)
        self.max_batch_time = max(0.0, max_batch_time)
        self.max_queue = max_queue
        self._queue: Deque[_Item] = deque()
        self._worker: Optional[asyncio.Task[None]] = None

    # -- ModelHandle --------------------------------------------------------------------------------------

    async def load(self) -> None:
        await self.inner.load()

    async def unload(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        await self.inner.unload()

    def inline_ok(self, request: InferenceRequest) -> bool:
        return False

    def infer_inline(self, request: InferenceRequest) -> InferenceResponse:
        raise RuntimeError("batched models are called with infer()")

    async def infer(self, request: InferenceRequest, gone: Optional[ClientGone] = None) -> InferenceResponse:
        depth = len(self._queue)
        admit(depth, self.max_queue, self.settings.name)
        future: asyncio.Future[InferenceResponse] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future, _signature(request), REQUEST_ID.get(), time.time()))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._run())
        elif len(self._queue) > 1:  # it waits for a batch: drop it if its client leaves meanwhile
            drop_when_client_leaves(future, gone)
        response = await future
        response.report.queued["batch"] = depth
        return response

    def infer_stream(
        self, requests: AsyncIterator[InferenceRequest], gone: Optional[ClientGone] = None
    ) -> AsyncGenerator[InferenceResponse, None]:
        """Streams are not batched: the model's own handle serves them."""
        return self.inner.infer_stream(requests, gone)

    def metadata(self) -> Dict[str, Any]:
        return dict(self.inner.metadata())

    def capabilities(self) -> Dict[str, Any]:
        return self.inner.capabilities()

    def describe(self) -> Dict[str, Any]:
        info = dict(self.inner.describe())
        info["batching"] = {"max_batch_size": self.max_batch_size, "max_batch_time": self.max_batch_time}
        if "queued" in info:
            info["queued"] += len(self._queue)
        return info

    def problem(self) -> Optional[str]:
        return self.inner.problem()

    # -- batching -----------------------------------------------------------------------------------------

    async def _gather(self) -> List[_Item]:
        """The next batch: the oldest request and the compatible ones behind it."""
        first = self._queue.popleft()
        key = first[2]
        batch = [first]
        if key is None:
            return batch
        deadline = time.monotonic() + self.max_batch_time
        idle_yields = 0
        while len(batch) < self.max_batch_size:
            taken = self._take(key, batch)
            if len(batch) >= self.max_batch_size or time.monotonic() >= deadline:
                break
            # Let requests that have already arrived reach the queue; stop once the loop has nothing more
            # to deliver (two idle passes) rather than waiting out max_batch_time.
            idle_yields = 0 if taken else idle_yields + 1
            if idle_yields >= 2:
                break
            await asyncio.sleep(0)
        return batch

    def _take(self, key: Tuple[Any, ...], batch: List[_Item]) -> int:
        """Move the compatible requests at the front of the queue into ``batch``.

        Stops at the first compatible request that would take the batch past ``max_rows``, and after
        ``max_batch_size`` incompatible ones: under load the queue is long, and this runs on every pass of
        the gather loop, so its cost must not grow with the queue. Requests passed over keep their order.
        """
        queue = self._queue
        taken = 0
        rows = sum(item[0].inputs[0].data.shape[0] for item in batch)
        skipped: List[_Item] = []
        while queue and len(batch) < self.max_batch_size and len(skipped) < self.max_batch_size:
            item = queue[0]
            if item[1].done():  # its caller has gone
                queue.popleft()
                continue
            if item[2] != key:
                skipped.append(queue.popleft())
                continue
            n = item[0].inputs[0].data.shape[0]
            if rows + n > self.max_rows:
                break
            batch.append(queue.popleft())
            rows += n
            taken += 1
        queue.extendleft(reversed(skipped))
        return taken

    async def _run(self) -> None:
        while self._queue:
            batch = [item for item in await self._gather() if not item[1].done()]
            if not batch:
                continue
            if len(batch) == 1:
                await self._one(batch[0])
                continue
            try:
                merged, sizes = _merge([item[0] for item in batch])
                REQUEST_ID.set(",".join(item[3] for item in batch if item[3]))  # this task's own context
                started = time.time()
                response = await self._call(merged)
                parts = _split(response, sizes)
            except Exception:
                parts = None
            if parts is None:  # attribute every error (or an unsplittable answer) to its own request
                for item in batch:
                    await self._one(item)
                continue
            parts[0].report.batch_size = len(batch)
            for (request, future, _, _, queued), part in zip(batch, parts):
                part.id = request.id
                _waited(part, queued, started)
                if not future.done():
                    future.set_result(part)

    async def _call(self, request: InferenceRequest) -> InferenceResponse:
        if self.inner.inline_ok(request):
            return self.inner.infer_inline(request)
        return await self.inner.infer(request)

    async def _one(self, item: _Item) -> None:
        request, future, _, rid, queued = item
        REQUEST_ID.set(rid)
        try:
            started = time.time()
            response = await self._call(request)
            response.report.batch_size = 1
            _waited(response, queued, started)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(response)


def _waited(response: InferenceResponse, queued: float, started: float) -> None:
    """Report the request's wait for its batch beside the model call's own timings."""
    response.report.timings["batch"] = [queued, started]


def _merge(requests: List[InferenceRequest]) -> Tuple[InferenceRequest, List[int]]:
    first = requests[0]
    sizes = [r.inputs[0].data.shape[0] for r in requests]
    total = sum(sizes)
    inputs = []
    for i, inp in enumerate(first.inputs):
        data = np.concatenate([r.inputs[i].data for r in requests], axis=0)
        inputs.append(
            RequestInput(inp.name, [total] + list(inp.shape[1:]), inp.datatype, data, inp.parameters)
        )
    return InferenceRequest(inputs, None, first.parameters, first.outputs), sizes


def _split(response: InferenceResponse, sizes: List[int]) -> Optional[List[InferenceResponse]]:
    total = sum(sizes)
    for out in response.outputs:
        if not out.shape or out.shape[0] != total:
            return None
    parts: List[InferenceResponse] = []
    start = 0
    for n in sizes:
        outputs = [
            ResponseOutput(
                o.name, [n] + list(o.shape[1:]), o.datatype, o.data[start : start + n], o.parameters
            )
            for o in response.outputs
        ]
        part = InferenceResponse(
            response.model_name, outputs, response.model_version, None, dict(response.parameters)
        )
        part.report.timings = dict(response.report.timings)
        if not parts:  # the model's own metrics describe the one call: reported once, with the first part
            part.report.metrics = response.report.metrics
        parts.append(part)
        start += n
    return parts
