"""The worker-side code (protocol, codecs, runtimes, IPC, entry point) on every supported Python.

One server; one model per Python version, each in a venv that envserve builds from a requirements file
holding only numpy. Every datatype goes through the IPC framing and back.
"""

from __future__ import annotations

import pytest

from tests.conftest import custom_model

pytestmark = pytest.mark.slow

VERSIONS = ("3.6", "3.7", "3.8", "3.9", "3.10", "3.12", "3.13")

CASES = [
    ("BOOL", [True, False]),
    ("UINT8", [0, 255]),
    ("UINT64", [0, 18446744073709551615]),
    ("INT8", [-128, 127]),
    ("INT64", [-(2**63), 2**63 - 1]),
    ("FP16", [0.5, -2.0]),
    ("FP32", [0.25, -1.5]),
    ("FP64", [0.1, -1e300]),
    ("BYTES", ["héllo", ""]),
]


def test_worker_runs_on_every_supported_python(tmp_path, start_server):
    for version in VERSIONS:
        folder = custom_model(
            tmp_path, "echo-" + version, "Echo", environment="requirements.txt", environment_python=version
        )
        (folder / "requirements.txt").write_text("numpy\n")
    server = start_server(tmp_path, env={"ENVSERVE_ENV_CACHE": str(tmp_path / "cache")})
    with server.client() as client:
        status = {m["name"]: m for m in client.get("/envserve/models").json()}
        inputs = [{"name": dt.lower(), "shape": [2], "datatype": dt, "data": data} for dt, data in CASES]
        for version in VERSIONS:
            model = status["echo-" + version]
            assert model["state"] == "READY", model
            assert model["environment"]["python"].startswith(version + "."), model
            r = client.post("/v2/models/echo-%s/infer" % version, json={"id": version, "inputs": inputs})
            assert r.status_code == 200, r.text
            doc = r.json()
            assert doc["id"] == version
            got = {o["name"]: (o["datatype"], o["shape"], o["data"]) for o in doc["outputs"]}
            assert got == {dt.lower(): (dt, [2], data) for dt, data in CASES}
            # an error inside the worker comes back as the right status with the model's message
            r = client.post(
                "/v2/models/echo-%s/infer" % version, json={"inputs": inputs, "outputs": [{"name": "nope"}]}
            )
            assert r.status_code == 400 and "has no output 'nope'" in r.json()["error"]
