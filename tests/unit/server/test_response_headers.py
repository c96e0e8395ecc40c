"""Headers a model sets in its response's parameters: taken out of the body, and only the safe ones."""

from __future__ import annotations

from envserve.protocol.v2 import InferenceResponse
from envserve.server.dataplane import take_response_headers


def test_response_headers_are_taken_out_and_filtered():
    response = InferenceResponse(
        model_name="m",
        outputs=[],
        parameters={
            "content_type": "np",
            "headers": {
                "X-Answered-By": "model",
                "x-count": 3,
                "content-length": "0",  # would break the framing
                "grpc-status": "0",  # would forge a status
                "x-split": "a\r\nset-cookie: evil=1",  # header injection
                "bad name": "x",
            },
        },
    )
    assert take_response_headers(response) == {"x-answered-by": "model", "x-count": "3"}
    assert response.parameters == {"content_type": "np"}
    assert take_response_headers(InferenceResponse(model_name="m", outputs=[])) == {}
