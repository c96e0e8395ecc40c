"""The generate extension's bodies to V2 and back."""

from __future__ import annotations

import numpy as np
import pytest

from envserve.errors import InvalidRequest
from envserve.protocol.generate import from_generate, is_generate, to_generate
from envserve.protocol.v2 import InferenceResponse, ResponseOutput, parse_inference_request


def test_fields_become_inputs_and_outputs_become_fields():
    doc = {"text_input": "Hello", "max_tokens": 16, "temperature": 0.5, "stream": False, "stop": ["a", "b"]}
    doc["parameters"] = {"seed": 7}
    assert is_generate(doc) and not is_generate({"inputs": []})
    request = parse_inference_request(from_generate(doc))
    got = {i.name: (i.datatype, i.data.tolist()) for i in request.inputs}
    assert got == {
        "text_input": ("BYTES", [b"Hello"]),
        "max_tokens": ("INT64", [16]),
        "temperature": ("FP64", [0.5]),
        "stream": ("BOOL", [False]),
        "stop": ("BYTES", [b"a", b"b"]),
    }
    assert request.parameters == {"seed": 7}
    text = np.empty(1, dtype=object)
    text[0] = b"Hi there"
    answer = InferenceResponse(
        "llm",
        [
            ResponseOutput("text_output", [1], "BYTES", text),
            ResponseOutput("tokens", [3], "INT64", np.array([1, 2, 3])),
        ],
        "2",
    )
    assert to_generate(answer) == {
        "model_name": "llm",
        "model_version": "2",
        "text_output": "Hi there",
        "tokens": [1, 2, 3],
    }


@pytest.mark.parametrize(
    "doc, message",
    [
        ({}, "names no input"),
        ({"parameters": {"a": 1}}, "names no input"),
        ({"x": []}, "field 'x' is an empty list"),
        ({"x": {"a": 1}}, "field 'x' must be a string, a number"),
        ({"x": ["a", 1]}, "field 'x' must be a string, a number"),
        ({"x": "a", "parameters": [1]}, "'parameters' must be a JSON object"),
    ],
)
def test_what_cannot_be_an_input_is_refused_naming_the_field(doc, message):
    with pytest.raises(InvalidRequest, match=message):
        from_generate(doc)
