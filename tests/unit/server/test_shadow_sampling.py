"""Shadow sampling: an exact share of requests, spread evenly, the first one included."""

from __future__ import annotations

import numpy as np
import pytest

from envserve.protocol.v2 import InferenceRequest, RequestInput
from envserve.server.shadow import Shadow


def _request() -> InferenceRequest:
    return InferenceRequest([RequestInput("x", [1, 2], "FP64", np.zeros((1, 2)))])


CASES = [
    (0.1, [0, 10, 20, 30]),
    (0.25, [0, 4, 8, 12, 16, 20, 24, 28, 32, 36]),
    (1.0, list(range(40))),
    (0.0, []),
]


@pytest.mark.parametrize(("sample", "taken"), CASES)
def test_an_exact_share_is_mirrored_evenly(sample, taken):
    shadow = Shadow("m", "server", sample)
    shadow.state = "READY"
    assert [i for i in range(40) if shadow.take(_request()) is not None] == taken


def test_nothing_is_mirrored_before_the_shadow_is_ready():
    shadow = Shadow("m", "server", 1.0)
    assert shadow.take(_request()) is None
    shadow.state = "READY"
    copy = shadow.take(_request())
    assert copy is not None and copy.inputs[0].data.shape == (1, 2)
