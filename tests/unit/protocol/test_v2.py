from __future__ import annotations

import numpy as np
import pytest

from envserve.errors import DatatypeMismatch, InvalidRequest, ShapeMismatch
from envserve.protocol import InferenceResponse, ResponseOutput, parse_inference_request
from envserve.protocol.v2 import array_from_data


def _req(**inp):
    return {"inputs": [{"name": "x", **inp}]}


def test_nested_and_flat_data_give_the_same_array():
    nested = parse_inference_request(_req(shape=[2, 3], datatype="INT16", data=[[1, 2, 3], [4, 5, 6]]))
    flat = parse_inference_request(_req(shape=[2, 3], datatype="INT16", data=[1, 2, 3, 4, 5, 6]))
    for request in (nested, flat):
        arr = request.inputs[0].data
        assert arr.dtype == np.int16 and arr.shape == (2, 3) and arr[1, 2] == 6


def test_scalar_data_and_empty_tensors():
    assert parse_inference_request(_req(shape=[1], datatype="FP64", data=2.5)).inputs[0].data.tolist() == [
        2.5
    ]
    empty = parse_inference_request(_req(shape=[0, 4], datatype="FP32", data=[])).inputs[0].data
    assert empty.shape == (0, 4) and empty.dtype == np.float32


def test_shape_is_checked_without_allocating_it():
    with pytest.raises(ShapeMismatch, match="needs 1000000000000000000000000 elements but data has 2"):
        array_from_data([1, 2], [10**12, 10**12], "FP32", "input 'x'")


@pytest.mark.parametrize("shape", [[True], [1.0], ["2"], [-3], [1] * 40])
def test_bad_shapes(shape):
    with pytest.raises(InvalidRequest, match="shape"):
        parse_inference_request(_req(shape=shape, datatype="FP32", data=[1]))


def test_large_unsigned_values_are_exact():
    arr = array_from_data([[0, 2**64 - 1], [1, 2]], [2, 2], "UINT64", "x")
    assert arr.dtype == np.uint64 and int(arr[0, 1]) == 2**64 - 1
    with pytest.raises(DatatypeMismatch, match="outside the range of INT64"):
        array_from_data([2**63], [1], "INT64", "x")
    with pytest.raises(DatatypeMismatch, match="outside the range of UINT64"):
        array_from_data([2**64], [1], "UINT64", "x")


def test_bytes_become_utf8_bytes():
    arr = array_from_data(["a", "é"], [2], "BYTES", "x")
    assert arr.dtype == object and arr.tolist() == [b"a", "é".encode()]


def test_request_fields_are_kept():
    request = parse_inference_request(
        {
            "id": "7",
            "parameters": {"content_type": "pd"},
            "outputs": [{"name": "p", "parameters": {"a": 1}}],
            "inputs": [
                {"name": "x", "shape": [1], "datatype": "BOOL", "data": [True], "parameters": {"k": "v"}}
            ],
        }
    )
    assert request.id == "7" and request.content_type == "pd"
    assert request.outputs[0].name == "p" and request.outputs[0].parameters == {"a": 1}
    assert request.input("x").parameters == {"k": "v"}
    with pytest.raises(InvalidRequest, match="no input named 'y'"):
        request.input("y")


def test_response_document_is_flat_and_marks_binary_bytes():
    response = InferenceResponse(
        "m",
        [
            ResponseOutput("a", [2, 2], "FP16", np.array([[1, 2], [3, 4]], dtype=np.float16)),
            ResponseOutput("t", [2], "BYTES", np.array([b"ok", "ü".encode()], dtype=object)),
            ResponseOutput("b", [1], "BYTES", np.array([b"\xff"], dtype=object)),
        ],
        model_version="3",
        id="r",
    )
    doc = response.to_dict()
    assert doc["model_name"] == "m" and doc["model_version"] == "3" and doc["id"] == "r"
    a, t, b = doc["outputs"]
    assert a["data"].tolist() == [1.0, 2.0, 3.0, 4.0] and a["shape"] == [2, 2]
    assert t["data"] == ["ok", "ü"] and "parameters" not in t
    assert b["data"] == ["/w=="] and b["parameters"] == {"content_type": "base64"}
