"""The REST binary tensor extension with a real third-party client (tritonclient.http, binary_data=True)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.conftest import custom_model, write_model

tritonhttp = pytest.importorskip(
    "tritonclient.http", reason="tritonclient[http] is a dev dependency: scripts/setup"
)


@pytest.fixture
def server(tmp_path, start_server, digits_model_file):
    write_model(tmp_path, "digits", {"name": "digits", "implementation": "sklearn"}, digits_model_file)
    custom_model(tmp_path, "echo", "Echo")
    return start_server(tmp_path)


def test_tritonclient_binary_inputs_and_outputs(server, digits, digits_model_file):
    import joblib

    client = tritonhttp.InferenceServerClient(url=server.url.replace("http://", ""))
    try:
        x, _ = digits
        rows = x[:16].astype(np.float32)
        inp = tritonhttp.InferInput("predict", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows, binary_data=True)
        out = tritonhttp.InferRequestedOutput("predict", binary_data=True)
        result = client.infer("digits", [inp], outputs=[out])
        np.testing.assert_array_equal(
            result.as_numpy("predict"), joblib.load(digits_model_file).predict(rows)
        )
        assert result.get_output("predict")["parameters"]["binary_data_size"] == 16 * 8

        # every datatype, BYTES length-prefixed, through the echo model, binary both ways
        tensors = {
            "b": np.array([[True, False]]),
            "u8": np.array([[0, 255]], dtype=np.uint8),
            "i64": np.array([[-(2**63), 2**63 - 1]], dtype=np.int64),
            "f16": np.array([[0.5, -2]], dtype=np.float16),
            "f64": np.array([[1e-300, 3.5]]),
            "s": np.array([[b"h\xc3\xa9llo", b"\x00\xff"]], dtype=object),
        }
        dtypes = {"b": "BOOL", "u8": "UINT8", "i64": "INT64", "f16": "FP16", "f64": "FP64", "s": "BYTES"}
        inputs = []
        for name, arr in tensors.items():
            i = tritonhttp.InferInput(name, list(arr.shape), dtypes[name])
            i.set_data_from_numpy(arr, binary_data=True)
            inputs.append(i)
        result = client.infer(
            "echo", inputs, outputs=[tritonhttp.InferRequestedOutput(n, binary_data=True) for n in tensors]
        )
        for name, arr in tensors.items():
            got = result.as_numpy(name)
            assert got.shape == arr.shape and got.tolist() == arr.tolist(), name
        # binary inputs, JSON outputs (binary_data=False)
        result = client.infer(
            "echo", inputs[:2], outputs=[tritonhttp.InferRequestedOutput("u8", binary_data=False)]
        )
        assert result.get_output("u8")["data"] == [0, 255]
    finally:
        client.close()


def test_malformed_binary_requests_get_400(server):
    head = b'{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}'
    url = server.url + "/v2/models/echo/infer"

    def post(header_length, body):
        return httpx.post(url, content=body, headers={"Inference-Header-Content-Length": str(header_length)})

    r = post(len(head), head + b"\x00" * 8)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [0.0, 0.0]
    r = post(len(head), head + b"\x00" * 4)
    assert r.status_code == 400 and "more than the 4 bytes left" in r.json()["error"]
    r = post(len(head), head + b"\x00" * 12)
    assert r.status_code == 400 and "binary part has 12 bytes" in r.json()["error"]
    r = post(len(head) + 100, head)
    assert r.status_code == 400 and "more than the" in r.json()["error"]
    r = post("abc", head)
    assert r.status_code == 400 and "not a number" in r.json()["error"]
    bad_shape = head.replace(b'"shape":[2]', b'"shape":[3]')
    r = post(len(bad_shape), bad_shape + b"\x00" * 8)
    assert r.status_code == 400 and "needs 12 bytes but binary_data_size is 8" in r.json()["error"]
    huge = head.replace(b'"shape":[2]', b'"shape":[100000000000,100000000000]')
    r = post(len(huge), huge + b"\x00" * 8)
    assert r.status_code == 400 and "declares more than" in r.json()["error"]
    strings = b'{"inputs":[{"name":"s","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":9}}]}'
    r = post(len(strings), strings + b"\x05\x00\x00\x00hello")
    assert r.status_code == 400 and "needs 2 elements but the binary data has 1" in r.json()["error"]
    r = post(len(strings), strings + b"\x09\x00\x00\x00hello")
    assert r.status_code == 400 and "runs past binary_data_size" in r.json()["error"]
