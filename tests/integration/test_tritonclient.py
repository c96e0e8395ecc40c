"""A real third-party V2 client (tritonclient.http) against envserve."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import write_model

tritonhttp = pytest.importorskip(
    "tritonclient.http", reason="tritonclient[http] is a dev dependency: scripts/setup"
)


def test_tritonclient_metadata_and_infer(tmp_path, start_server, digits_model_file, digits):
    import joblib

    write_model(
        tmp_path,
        "mnist-svm",
        {"name": "mnist-svm", "implementation": "mlserver_sklearn.SKLearnModel"},
        digits_model_file,
    )
    server = start_server(tmp_path)
    client = tritonhttp.InferenceServerClient(url=server.url.replace("http://", ""))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("mnist-svm")
        assert client.get_server_metadata()["name"] == "envserve"
        assert client.get_model_metadata("mnist-svm")["platform"] == "sklearn"
        index = client.get_model_repository_index()
        assert [(m["name"], m["state"]) for m in index] == [("mnist-svm", "READY")]

        x, _ = digits
        rows = x[100:108].astype(np.float32)
        inp = tritonhttp.InferInput("predict", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows, binary_data=False)
        result = client.infer(
            "mnist-svm",
            [inp],
            request_id="triton-1",
            outputs=[tritonhttp.InferRequestedOutput("predict", binary_data=False)],
        )
        expected = joblib.load(digits_model_file).predict(rows)
        np.testing.assert_array_equal(
            result.as_numpy("predict"), expected.reshape(-1, 1)
        )  # MLServer's [N, 1]
        assert result.get_response()["id"] == "triton-1"

        client.unload_model("mnist-svm")
        assert not client.is_model_ready("mnist-svm")
        client.load_model("mnist-svm")
        assert client.is_model_ready("mnist-svm")
    finally:
        client.close()
