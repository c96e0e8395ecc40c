"""Hostile input against a real server: property-based bodies, oversized and deeply nested JSON, huge
declared shapes, non-UTF-8 BYTES. Every answer is a 4xx with a JSON error (or a 200), never a 500 or a
crash, and the server's memory stays bounded."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from tests.conftest import ServerProcess, custom_model
from tests.unit.protocol.test_fuzz import documents


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("hostile")
    custom_model(repo, "echo", "Echo")
    proc = ServerProcess(repo, ["--max-request-size", str(4 * 1024 * 1024)])
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


def _rss_mb(pid):
    with open("/proc/%d/statm" % pid) as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_property_based_bodies_never_get_a_500(server):
    client = httpx.Client(base_url=server.url, timeout=30)
    seen = {}

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(documents)
    def check(doc):
        try:
            body = json.dumps(doc).encode()
        except (ValueError, OverflowError):
            return
        r = client.post("/v2/models/echo/infer", content=body, headers={"content-type": "application/json"})
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code in (200, 400), (r.status_code, r.text, body[:300])
        assert set(r.json()) == (
            {"error"} if r.status_code == 400 else {"model_name", "outputs"} | set(r.json())
        )

    try:
        check()
    finally:
        client.close()
    assert seen.get(400, 0) > 50  # the generator really produced bad input
    assert server.proc.poll() is None


@pytest.mark.parametrize(
    "body,status,message",
    [
        (b"[" * 5000 + b"]" * 5000, 400, "not valid JSON"),  # nesting deeper than the parser allows
        (
            b'{"inputs":[{"name":"x","shape":[4294967296,4294967296,4294967296],"datatype":"FP64","data":[1]}]}',
            400,
            "declares more than",
        ),
        (
            b'{"inputs":[{"name":"x","shape":[0,4294967296,4294967296],"datatype":"FP64","data":[]}]}',
            400,
            "declares more than",
        ),
        (
            b'{"inputs":[{"name":"x","shape":[9223372036854775808],"datatype":"FP64","data":[1]}]}',
            400,
            "declares more than",
        ),
        (
            b'{"inputs":[{"name":"x","shape":[-9223372036854775809],"datatype":"FP64","data":[1]}]}',
            400,
            "non-negative",
        ),
        (b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP64","data":[NaN]}]}', 400, "not valid JSON"),
        (b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP64","data":[Infinity]}]}', 400, "not valid JSON"),
        (
            b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1e39]}]}',
            400,
            "too large for datatype",
        ),
        (
            b'{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["\xff\xfe"]}]}',
            400,
            "not valid JSON",
        ),
        (
            b'{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["\\udc80"],'
            b'"parameters":{"content_type":"str"}}]}',
            400,
            "not valid JSON",
        ),
    ],
    ids=[
        "deep-nesting",
        "huge-shape",
        "huge-shape-with-zero",
        "overflowing-dim",
        "negative-overflow",
        "nan",
        "inf",
        "fp32-overflow",
        "bad-utf8",
        "lone-surrogate",
    ],
)
def test_hostile_bodies(server, body, status, message):
    before = _rss_mb(server.proc.pid)
    r = httpx.post(
        server.url + "/v2/models/echo/infer", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == status and message in r.json()["error"], r.text
    assert _rss_mb(server.proc.pid) - before < 50  # nothing was allocated from a declared shape


def test_binary_bytes_that_are_not_utf8_with_str_content_type(server):
    head = (
        b'{"inputs":[{"name":"s","shape":[1],"datatype":"BYTES","parameters":'
        b'{"binary_data_size":6,"content_type":"str"}}]}'
    )
    r = httpx.post(
        server.url + "/v2/models/echo/infer",
        content=head + b"\x02\x00\x00\x00\xff\xfe",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 400 and "not valid UTF-8" in r.json()["error"]


def test_oversized_body_is_refused_before_reading_it(server):
    r = httpx.post(server.url + "/v2/models/echo/infer", content=b" " * (5 * 1024 * 1024))
    assert r.status_code == 413


RESERVED_CASES = [
    # the control keys envserve once read from a request's parameters: each would have turned a plain V2
    # request into an MLflow, Seldon or model-route call of the model
    ({"parameters": {"envserve_mlflow_scoring": "text/csv"}}, "parameters.envserve_mlflow_scoring"),
    ({"parameters": {"envserve_seldon": "predict"}}, "parameters.envserve_seldon"),
    ({"parameters": {"envserve_handler": {"name": "x"}}}, "parameters.envserve_handler"),
    (
        {"outputs": [{"name": "echo", "parameters": {"envserve_timings": 1}}]},
        "output 'echo' parameters.envserve_timings",
    ),
]


@pytest.mark.parametrize("extra, where", RESERVED_CASES)
def test_reserved_parameters_are_refused_on_rest_json_and_binary(server, extra, where):
    """(gRPC: tests/vectors/v2_requests.json's reserved cases drive both transports.)"""
    body = {"inputs": [{"name": "body", "shape": [1], "datatype": "BYTES", "data": ["a,b\n1,2"]}], **extra}
    r = httpx.post(server.url + "/v2/models/echo/infer", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(where + ": parameters beginning with 'envserve_' are reserved")
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [1], "datatype": "INT32", "parameters": {"binary_data_size": 4}}
            ],
            **extra,
        }
    ).encode()
    r = httpx.post(
        server.url + "/v2/models/echo/infer",
        content=header + b"\x01\x00\x00\x00",
        headers={
            "inference-header-content-length": str(len(header)),
            "content-type": "application/octet-stream",
        },
        timeout=30,
    )
    assert r.status_code == 400 and where in r.json()["error"], r.text
