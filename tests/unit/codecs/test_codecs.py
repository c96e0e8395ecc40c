from __future__ import annotations

import numpy as np
import pytest

from envserve.codecs import decode_request, encode_outputs, input_content_types
from envserve.errors import InvalidRequest, UnknownContentType
from envserve.protocol import parse_inference_request


def _request(*inputs, **params):
    return parse_inference_request({"inputs": list(inputs), "parameters": params})


def test_content_type_precedence():
    request = _request(
        {
            "name": "a",
            "shape": [1],
            "datatype": "BYTES",
            "data": ["x"],
            "parameters": {"content_type": "base64"},
        },
        {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["x"]},
        {"name": "c", "shape": [1], "datatype": "BYTES", "data": ["x"]},
        content_type="str",
    )
    types = input_content_types(request, {"b": "np"}, model_default="base64")
    assert types == {"a": "base64", "b": "np", "c": "str"}
    # a request-level "pd" is not an input codec: inputs fall back to the model default
    request.parameters["content_type"] = "pd"
    assert input_content_types(request, {}, model_default="str")["c"] == "str"


def test_unknown_content_type_names_the_known_ones():
    request = _request({"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}, content_type="arrow")
    with pytest.raises(UnknownContentType, match="known content types are base64, np, pd, str"):
        input_content_types(request, {})


def test_decode_request_single_input_and_pd():
    one = _request({"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]})
    assert decode_request(one, {"a": None}).shape == (2, 2)
    two = _request(
        {"name": "a", "shape": [2], "datatype": "INT64", "data": [1, 2]},
        {"name": "b", "shape": [2], "datatype": "BYTES", "data": ["x", "y"]},
        content_type="pd",
    )
    frame = decode_request(two, {"a": None, "b": None})
    assert list(frame.columns) == ["a", "b"] and frame["b"].tolist() == ["x", "y"] and frame["a"].sum() == 3
    two.parameters.clear()
    with pytest.raises(InvalidRequest, match="takes one input"):
        decode_request(two, {})


def test_encode_outputs_from_common_return_values():
    import pandas as pd

    (arr,) = encode_outputs(np.array([[1, 2]], dtype=np.int8), "predict")
    assert (arr.name, arr.datatype, arr.shape) == ("predict", "INT8", [1, 2])
    (strs,) = encode_outputs(["cat", "dog"], "predict")
    assert strs.datatype == "BYTES" and strs.parameters == {"content_type": "str"}
    labels = encode_outputs({"labels": np.array(["a", "b"]), "score": [0.5, 0.25]}, "predict")
    assert [(o.name, o.datatype) for o in labels] == [("labels", "BYTES"), ("score", "FP64")]
    frame = encode_outputs(pd.DataFrame({"x": [1.0, 2.0], "y": ["u", "v"]}), "predict")
    assert [(o.name, o.datatype, o.shape) for o in frame] == [("x", "FP64", [2, 1]), ("y", "BYTES", [2, 1])]
