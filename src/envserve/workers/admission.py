"""Admission to a model's queue: the bound beyond which requests are shed, and dropping waiting calls whose
client has gone. Shared by every handle that queues calls (in-process models, worker pools, batching).

A queue without a bound turns overload into ever longer waits until every client times out; a bounded one
answers the excess at once (503 with Retry-After, gRPC UNAVAILABLE) and keeps latency normal for the
requests it accepts. A call whose client has disconnected while it waited is cancelled before the model
runs it: gRPC cancels the call's task when its stream is reset; REST hands a ``ClientGone`` (an awaitable
that completes on disconnect), watched only while the call waits.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Optional

from ..errors import Overloaded

__all__ = ["ClientGone", "admit", "drop_when_client_leaves"]

#: Completes when the client of a request disconnects.
ClientGone = Callable[[], Awaitable[Any]]


def admit(waiting: int, limit: int, model: str) -> None:
    """Raise :class:`~envserve.errors.Overloaded` when ``waiting`` calls already fill the queue."""
    if limit and waiting >= limit:
        raise Overloaded(
            "model %r has %d requests waiting, its limit (max_queue_size); retry shortly" % (model, waiting),
            model=model,
        )


def drop_when_client_leaves(future: asyncio.Future[Any], gone: Optional[ClientGone]) -> None:
    """While ``future`` is pending, cancel it as soon as the client disconnects."""
    if gone is None or future.done():
        return

    async def watch() -> None:
        await gone()
        if not future.done():
            future.cancel()

    watcher = asyncio.ensure_future(watch())
    future.add_done_callback(lambda _: watcher.cancel())
