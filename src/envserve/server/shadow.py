"""Shadow serving: a model's candidate environment answers a sampled share of live requests, off the
request path, and the answers are compared with the primary's.

A model names ``parameters.shadow_environment`` (a tarball, an environment directory, a spec file, or
``server``); ``parameters.shadow_sample`` is the share of requests mirrored (default 0.1; exactly and
evenly: every tenth request at 0.1, the first one included). The shadow is a
second copy of the model, loaded beside the primary in that environment. After the primary has answered,
a sampled request is sent to the shadow in a task of its own: the client has its answer already, a slow
shadow only delays the comparison, a failing one only counts an error, and at most ``MAX_IN_FLIGHT``
mirrored calls run at once (beyond that a sampled request is skipped, and counted), so a shadow that cannot
keep up never builds a queue. Counts and the largest differences are at
``GET /envserve/models/{name}/shadow``, in ``/metrics`` and in the console.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, List, Optional, Set

from ..protocol.v2 import InferenceRequest, InferenceResponse, RequestInput
from .compare import compare_responses
from .handle import ModelHandle

__all__ = ["MAX_IN_FLIGHT", "Shadow"]

logger = logging.getLogger("envserve.shadow")

MAX_IN_FLIGHT = 4
_LARGEST = 5


class Shadow:
    """The shadow of one model: its handle, its sampling, and what the comparisons found."""

    def __init__(
        self, model: str, environment: str, sample: float, rtol: float = 1e-7, atol: float = 0.0
    ) -> None:
        self.model = model
        self.environment = environment
        self.sample = sample
        self.rtol, self.atol = rtol, atol
        self.handle: Optional[ModelHandle] = None
        self.state = "LOADING"
        self.error = ""
        self.counts = {"mirrored": 0, "compared": 0, "skipped": 0, "errors": 0}
        self.rows = {"identical": 0, "close": 0, "different": 0}
        self.problems = 0
        self.max_abs_diff = 0.0
        self.largest: List[Dict[str, Any]] = []
        self.last_error = ""
        self._tasks: Set[asyncio.Task[Any]] = set()
        self._credit = 1.0 - 1e-9 if sample > 0 else 0.0  # the first request is mirrored

    # -- lifecycle ----------------------------------------------------------------------------------------

    async def load(self, handle: ModelHandle) -> None:
        self.handle = handle
        try:
            await handle.load()
        except Exception as exc:  # the shadow fails alone: the primary serves as before
            self.state, self.error = "UNAVAILABLE", str(exc)
            self.handle = None
            logger.error("shadow of model %s failed to load: %s", self.model, exc)
            return
        self.state = "READY"
        logger.info(
            "shadow of model %s is ready (%s, %g of requests)", self.model, self.environment, self.sample
        )

    async def unload(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        handle, self.handle, self.state = self.handle, None, "UNLOADED"
        if handle is not None:
            await handle.unload()

    # -- the request path ---------------------------------------------------------------------------------

    def take(self, request: InferenceRequest) -> Optional[InferenceRequest]:
        """A copy of the request to mirror, if this one is sampled (before the primary sees it)."""
        if self.state != "READY":
            return None
        # an exact share, spread evenly: each request adds the share to a credit, one whole credit mirrors
        self._credit += self.sample
        if self._credit < 1.0:
            return None
        self._credit -= 1.0
        if request.passthrough is not None:  # a protocol body with its own answer: nothing to compare
            return None
        if len(self._tasks) >= MAX_IN_FLIGHT:
            self.counts["skipped"] += 1
            return None
        return InferenceRequest(
            [
                RequestInput(i.name, list(i.shape), i.datatype, i.data.copy(), dict(i.parameters))
                for i in request.inputs
            ],
            id=request.id,
            parameters=dict(request.parameters),
            outputs=list(request.outputs),
        )

    def mirror(self, request: InferenceRequest, primary: InferenceResponse) -> None:
        """Send the copy to the shadow in a task of its own; the caller does not wait."""
        self.counts["mirrored"] += 1
        task = asyncio.ensure_future(self._run(request, primary))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, request: InferenceRequest, primary: InferenceResponse) -> None:
        handle = self.handle
        if handle is None:  # unloaded since the request was sampled
            return
        try:
            answer = await handle.infer(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.counts["errors"] += 1
            self.last_error = str(exc)
            return
        self.counts["compared"] += 1
        results, problems = compare_responses(primary, answer, self.rtol, self.atol)
        self.problems += len(problems)
        if problems:
            self.last_error = problems[0]
        for r in results:
            self.rows[r.kind] += 1
            if r.kind == "identical":
                continue
            if r.diff != float("inf"):
                self.max_abs_diff = max(self.max_abs_diff, r.diff)
            entry = {
                "request": request.id,
                "output": r.output,
                "row": r.row,
                "max_abs_diff": None if r.diff == float("inf") else r.diff,
                "primary": r.current,
                "shadow": r.candidate,
                "input": r.inputs(request),
            }
            self.largest.append(entry)
            self.largest.sort(key=lambda e: float("inf") if e["max_abs_diff"] is None else e["max_abs_diff"],
                              reverse=True)  # fmt: skip
            del self.largest[_LARGEST:]

    async def settle(self) -> None:
        """Wait for the mirrored calls in flight (tests and shutdown)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def snapshot(self) -> Dict[str, Any]:
        rows = sum(self.rows.values())
        agree = self.rows["identical"] + self.rows["close"]
        return {
            "model": self.model,
            "environment": self.environment,
            "state": self.state,
            "error": self.error,
            "sample": self.sample,
            "tolerance": {"rtol": self.rtol, "atol": self.atol},
            "requests": dict(self.counts, in_flight=len(self._tasks)),
            "rows": dict(self.rows),
            "agreement": None if not rows else agree / rows,
            "max_abs_diff": self.max_abs_diff,
            "largest_differences": list(self.largest),
            "incomparable": self.problems,
            "last_error": self.last_error,
            "shadow": None if self.handle is None else self.handle.describe(),
        }
