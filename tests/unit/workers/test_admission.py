"""Admission to a model's queue: the bound, and dropping a waiting call whose client has gone."""

from __future__ import annotations

import asyncio

import pytest

from envserve.errors import Overloaded
from envserve.workers.admission import admit, drop_when_client_leaves


def test_the_bound_sheds_at_the_limit_and_zero_is_no_bound():
    admit(0, 2, "m")
    admit(1, 2, "m")
    with pytest.raises(Overloaded) as info:
        admit(2, 2, "m")
    assert str(info.value) == "model 'm' has 2 requests waiting, its limit (max_queue_size); retry shortly"
    assert info.value.model == "m"
    admit(10**6, 0, "m")


def test_a_waiting_call_is_cancelled_when_its_client_leaves_and_only_while_it_waits():
    async def scenario():
        loop = asyncio.get_running_loop()
        left = asyncio.Event()
        waiting = loop.create_future()
        drop_when_client_leaves(waiting, left.wait)
        answered = loop.create_future()
        drop_when_client_leaves(answered, left.wait)
        answered.set_result("done")
        await asyncio.sleep(0)
        left.set()
        await asyncio.sleep(0.01)
        assert waiting.cancelled()
        assert answered.result() == "done"  # answered before the client left: kept
        untracked = loop.create_future()
        drop_when_client_leaves(untracked, None)  # no way to know (gRPC cancels its task instead)
        assert not untracked.done() and len(asyncio.all_tasks()) == 1  # no watcher left running

    asyncio.run(scenario())
