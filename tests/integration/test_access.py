"""Access control: the admin token guards load/unload (REST and gRPC), never inference; CORS allow-list."""

from __future__ import annotations

import grpc
import httpx
import pytest

from tests.conftest import write_model


@pytest.fixture
def server(tmp_path, start_server, digits_model_file):
    write_model(tmp_path, "digits", {"name": "digits", "implementation": "sklearn"}, digits_model_file)
    return start_server(
        tmp_path,
        env={
            "ENVSERVE_ADMIN_TOKEN": "s3cr3t-token",
            "ENVSERVE_CORS_ORIGINS": "https://console.example, http://localhost:3000",
        },
    )


def test_admin_token_guards_load_and_unload_only(server):
    body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64", "data": [[0.0] * 64]}]}
    with server.client() as client:
        assert client.post("/v2/models/digits/infer", json=body).status_code == 200
        assert client.post("/v2/repository/index").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cr3t-token"}):
            r = client.post("/v2/repository/models/digits/unload", headers=headers)
            assert r.status_code == 401 and "needs the admin token" in r.json()["error"]
        assert client.post("/v2/models/digits/infer", json=body).status_code == 200  # still loaded
        auth = {"Authorization": "Bearer s3cr3t-token"}
        assert client.post("/v2/repository/models/digits/unload", headers=auth).status_code == 200
        assert client.post("/v2/repository/models/digits/load", headers=auth).status_code == 200
    assert "s3cr3t-token" not in server.log

    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="digits"), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stub.RepositoryModelUnload(
            pb.RepositoryModelUnloadRequest(model_name="digits"),
            timeout=10,
            metadata=[("authorization", "Bearer s3cr3t-token")],
        )
        assert not stub.ModelReady(pb.ModelReadyRequest(name="digits"), timeout=10).ready

    # a token of characters grpcio would not send (raw HTTP/2): still UNAUTHENTICATED, never INTERNAL
    from tests.unit.server.test_grpc_transport import RawClient

    port = int(server.grpc_address.rsplit(":", 1)[1])
    raw = RawClient(port)
    try:
        request = pb.RepositoryModelLoadRequest(model_name="digits").SerializeToString()
        path = "/inference.GRPCInferenceService/RepositoryModelLoad"
        raw.call(1, path, request, extra=[("authorization", "Bearer s3cr3t-t\u00f6ken\u2603")])
        _headers, _data, trailers = raw.response(1)
    finally:
        raw.sock.close()
    assert trailers.get("grpc-status") == "16", trailers
    assert "Traceback" not in server.log


def test_cors_allow_list(server):
    url = server.url + "/v2/health/ready"
    r = httpx.get(url, headers={"Origin": "https://console.example"})
    assert r.headers["access-control-allow-origin"] == "https://console.example"
    r = httpx.get(url, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    r = httpx.options(
        server.url + "/v2/models/digits/infer",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
    )
    assert r.status_code == 204 and "POST" in r.headers["access-control-allow-methods"]
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    r = httpx.options(server.url + "/v2/models/digits/infer", headers={"Origin": "https://evil.example"})
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers


def test_allowed_roots_confine_local_model_paths(tmp_path, start_server, digits_model_file):
    inside = tmp_path / "models"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    import shutil

    shutil.copy(digits_model_file, outside / "model.joblib")
    write_model(inside, "ok", {"name": "ok", "implementation": "sklearn"}, digits_model_file)
    write_model(
        inside,
        "escape",
        {
            "name": "escape",
            "implementation": "sklearn",
            "parameters": {"uri": "../../elsewhere/model.joblib"},
        },
    )
    (inside / "ok" / "link.joblib").symlink_to(outside / "model.joblib")
    write_model(
        inside,
        "via-link",
        {"name": "via-link", "implementation": "sklearn", "parameters": {"uri": "../ok/link.joblib"}},
    )
    server = start_server(inside, env={"ENVSERVE_ALLOWED_ROOTS": str(inside)})
    with server.client() as client:
        rows = {r["name"]: r for r in client.post("/v2/repository/index").json()}
    assert rows["ok"]["state"] == "READY"
    for name in ("escape", "via-link"):
        assert rows[name]["state"] == "UNAVAILABLE" and "outside the allowed roots" in rows[name]["reason"]


def _own_address() -> str:
    """This machine's address on its network (not loopback): the address a route out would use."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the interface
        address = probe.getsockname()[0]
    assert not address.startswith("127."), "this test needs a network interface beside loopback"
    return address


def test_without_a_token_only_this_machine_may_change_the_server(tmp_path, start_server, digits_model_file):
    """Listening on every address without admin_token: load/unload from another address is 403 /
    PERMISSION_DENIED naming the settings (inference stays open), from loopback it works; admin_open=true
    opens it."""
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    write_model(tmp_path, "digits", {"name": "digits", "implementation": "sklearn"}, digits_model_file)
    address = _own_address()
    server = start_server(tmp_path, "--host", "0.0.0.0")
    port = int(server.url.rsplit(":", 1)[1])
    grpc_port = int(server.grpc_address.rsplit(":", 1)[1])
    remote = "http://%s:%d" % (address, port)
    r = httpx.post(remote + "/v2/repository/models/digits/unload")
    assert r.status_code == 403 and "admin_token" in r.json()["error"] and "admin_open" in r.json()["error"]
    body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64", "data": [[0.0] * 64]}]}
    assert httpx.post(remote + "/v2/models/digits/infer", json=body).status_code == 200
    with grpc.insecure_channel("%s:%d" % (address, grpc_port)) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="digits"), timeout=10)
        assert (
            info.value.code() == grpc.StatusCode.PERMISSION_DENIED and "admin_token" in info.value.details()
        )
    local = "http://127.0.0.1:%d" % port
    assert httpx.post(local + "/v2/repository/models/digits/unload").status_code == 200
    assert httpx.post(local + "/v2/repository/models/digits/load").status_code == 200
    assert server.stop() == 0
    server = start_server(tmp_path, "--host", "0.0.0.0", env={"ENVSERVE_ADMIN_OPEN": "true"})
    port = int(server.url.rsplit(":", 1)[1])
    assert httpx.post("http://%s:%d/v2/repository/models/digits/unload" % (address, port)).status_code == 200
    assert server.stop() == 0
