"""Seldon v1 messages to V2 and back, as Seldon's wrapper hands them to a model and answers them."""

from __future__ import annotations

import numpy as np

from envserve.protocol import seldon
from envserve.protocol.v2 import InferenceResponse, ResponseOutput, parse_inference_request


def _answer(values, datatype="INT64"):
    data = np.asarray(values, dtype=object if datatype == "BYTES" else None)
    return InferenceResponse("m", [ResponseOutput("predict", list(data.shape), datatype, data)])


def test_jsondata_rows_reach_the_model_as_numbers_and_answer_as_data():
    """Seldon's wrapper passes jsonData to predict() as it is: rows of numbers are a matrix to a
    scikit-learn model, and a numeric answer to a request without 'data' is a tensor."""
    doc, kind, names = seldon.to_v2_request({"jsonData": [[1.5, 2.0], [3.0, 4.0]], "meta": {"puid": "p"}})
    request = parse_inference_request(doc)
    assert request.inputs[0].datatype == "FP64" and request.inputs[0].data.tolist() == [
        [1.5, 2.0],
        [3.0, 4.0],
    ]
    assert request.id == "p" and names == []
    answered = seldon.to_seldon_response(_answer([[7], [8]]), kind, {"puid": "p"})
    assert answered == {
        "meta": {"puid": "p"},
        "data": {"names": ["t:0"], "tensor": {"shape": [2, 1], "values": [7.0, 8.0]}},
    }
    labels = seldon.to_seldon_response(_answer([b"cat", b"dog"], "BYTES"), kind, {})
    assert labels["data"]["ndarray"] == ["cat", "dog"]


def test_other_jsondata_reaches_the_model_as_json_text_and_answers_as_jsondata():
    for value in ({"a": 1}, ["a", "b"], [[1], [2, 3]], "text", []):
        doc, kind, _ = seldon.to_v2_request({"jsonData": value})
        assert kind == "jsonData" and doc["inputs"][0]["datatype"] == "BYTES", value
