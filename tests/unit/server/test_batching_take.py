"""BatchingHandle._take: which queued requests join a batch, and that the others keep their order."""

from __future__ import annotations

import asyncio
from collections import deque
from types import SimpleNamespace

import numpy as np

from envserve.server.batching import BatchingHandle


def _item(rows, key, loop, done=False):
    request = SimpleNamespace(inputs=[SimpleNamespace(data=np.zeros((rows, 2)))], tag=(rows, key))
    future = loop.create_future()
    if done:
        future.cancel()
    return (request, future, key)


def test_take_fills_by_rows_skips_other_signatures_and_keeps_order():
    loop = asyncio.new_event_loop()
    try:
        handle = BatchingHandle(
            SimpleNamespace(settings=None), max_batch_size=8, max_batch_time=0.01, max_rows=10
        )
        queue = [
            _item(3, "a", loop),
            _item(1, "b", loop),
            _item(2, "a", loop, done=True),
            _item(4, "a", loop),
        ]
        queue += [_item(5, "a", loop), _item(1, "a", loop), _item(2, "b", loop)]
        handle._queue = deque(queue)
        batch = [_item(2, "a", loop)]
        taken = handle._take("a", batch)
        # 2 + 3 + 4 = 9 rows; the 5-row request does not fit, so taking stops there (FIFO within a key)
        assert taken == 2 and [item[0].tag for item in batch] == [(2, "a"), (3, "a"), (4, "a")]
        # the cancelled request is dropped; the rest keep their order
        assert [item[0].tag for item in handle._queue] == [(1, "b"), (5, "a"), (1, "a"), (2, "b")]
    finally:
        loop.close()


def test_take_looks_past_at_most_max_batch_size_other_requests():
    loop = asyncio.new_event_loop()
    try:
        handle = BatchingHandle(
            SimpleNamespace(settings=None), max_batch_size=3, max_batch_time=0.01, max_rows=100
        )
        others = [_item(1, "b", loop) for _ in range(5)]
        handle._queue = deque([*others, _item(1, "a", loop)])
        batch = [_item(1, "a", loop)]
        assert handle._take("a", batch) == 0 and len(batch) == 1
        assert list(handle._queue)[:5] == others and len(handle._queue) == 6
    finally:
        loop.close()
