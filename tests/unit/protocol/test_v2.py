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


def test_strings_shaped_as_mlservers_clients_shape_them_are_read_as_the_strings_sent():
    """MLServer's clients and docs send a string's length as its shape ([11] for "hello world"), a bare
    string as data, [2, 11] for two strings; MLServer reads the strings whatever the shape says. The input
    keeps the declared shape (an MLServer runtime sees it as under MLServer) and holds the strings flat."""
    from envserve.protocol.v2 import shaped

    doc = {
        "inputs": [
            {"name": "b", "shape": [11], "datatype": "BYTES", "data": "hello world"},
            {"name": "d", "shape": [2, 11], "datatype": "BYTES", "data": ["hello world", "bye bye"]},
            {"name": "e", "shape": [2, 1], "datatype": "BYTES", "data": ["x", "y"]},
        ]
    }
    b, d, e = parse_inference_request(doc).inputs
    assert (b.shape, b.data.tolist()) == ([11], [b"hello world"])
    assert (d.shape, d.data.tolist()) == ([2, 11], [b"hello world", b"bye bye"])
    assert (e.shape, e.data.tolist()) == ([2, 1], [[b"x"], [b"y"]])  # counted right: shaped as declared
    assert shaped(d.data, d.shape).shape == (2,) and shaped(e.data.ravel(), e.shape).shape == (2, 1)
    for datatype, data in (("FP32", [1.0]), ("INT64", [1, 2])):  # numbers are counted as ever
        with pytest.raises(ShapeMismatch, match="needs 11 elements"):
            parse_inference_request(
                {"inputs": [{"name": "x", "shape": [11], "datatype": datatype, "data": data}]}
            )


def test_loosely_shaped_strings_cross_the_worker_link_as_they_are():
    from envserve.workers import ipc
    from envserve.workers.link import FrameReader

    request = parse_inference_request(
        {"inputs": [{"name": "b", "shape": [11], "datatype": "BYTES", "data": ["hello world"]}]}
    )
    reader = FrameReader()
    reader.feed(b"".join(bytes(memoryview(p).cast("B")) for p in ipc.encode_request(1, request)))
    header, body = next(reader.frames())
    (got,) = ipc.decode_request(header, body).inputs
    assert (got.shape, got.data.tolist()) == ([11], [b"hello world"])
