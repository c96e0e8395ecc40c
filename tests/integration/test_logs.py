"""Log lines people can ship, from a real server: JSON lines, the request id from the client (or made)
returned in X-Request-Id / gRPC trailing metadata and carried onto the worker's own output lines, the
access log, and MLServer's logging_settings file and use_structured_logging flag."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import grpc
import httpx
import pytest

from tests.conftest import ServerProcess, custom_model

BODY = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}]}


def _records(server):
    """Every line the server wrote, each parsed as JSON (a line that is not JSON fails the test)."""
    out = []
    for line in list(server.lines):
        try:
            out.append(json.loads(line))
        except ValueError:
            raise AssertionError("not a JSON log line: %r" % line) from None
    return out


def _wait_for(server, predicate, what):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [r for r in _records(server) if predicate(r)]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("no log line with %s in:\n%s" % (what, server.log[-4000:]))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("logs")
    custom_model(repo, "chatty-worker", "Chatty", environment_path=sys.prefix, extra={"word": "worker"})
    custom_model(repo, "chatty", "Chatty", extra={"word": "inproc"})
    proc = ServerProcess(repo, [], env={"ENVSERVE_LOG_FORMAT": "json", "ENVSERVE_ACCESS_LOG": "true"})
    try:
        yield proc.wait_ready(120)
    finally:
        proc.stop()


def test_the_request_id_is_returned_and_on_every_line_of_the_request(server):
    r = httpx.post(
        server.url + "/v2/models/chatty-worker/infer",
        json=BODY,
        headers={"X-Request-Id": "abc-123"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "abc-123"
    # the worker's own output (its print and its logging) carries the id across the process boundary
    printed = _wait_for(server, lambda rec: "worker printed while predicting" in rec["message"], "the print")
    logged = _wait_for(server, lambda rec: "worker logged while predicting" in rec["message"], "the log")
    for rec in printed + logged:
        assert rec["request_id"] == "abc-123", rec
        assert rec["model"] == "chatty-worker" and rec["logger"] == "envserve.workers", rec
    access = _wait_for(
        server,
        lambda rec: rec["logger"] == "envserve.access" and rec.get("request_id") == "abc-123",
        "access",
    )
    assert len(access) == 1
    line = access[0]
    assert (line["method"], line["path"], line["model"], line["status"]) == (
        "POST",
        "/v2/models/chatty-worker/infer",
        "chatty-worker",
        200,
    )
    assert isinstance(line["latency_ms"], (int, float)) and line["latency_ms"] >= 0
    assert line["protocol"] == "rest" and line["level"] == "INFO"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])


def test_in_process_models_log_under_the_request_and_ids_are_made_when_missing_or_unsafe(server):
    r = httpx.post(server.url + "/v2/models/chatty/infer", json=BODY, timeout=60)
    made = r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    logged = _wait_for(server, lambda rec: "inproc logged while predicting" in rec["message"], "the log")
    assert [rec["request_id"] for rec in logged] == [made]
    assert logged[0]["logger"] == "model.chatty" and logged[0]["level"] == "WARNING"
    for unsafe in ("two words", "x" * 129, "new\u2028line"):
        r = httpx.post(
            server.url + "/v2/models/chatty/infer",
            json=BODY,
            headers=[(b"X-Request-Id", unsafe.encode("utf-8"))],
            timeout=60,
        )
        assert r.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), unsafe
    # errors are answered, and logged, under their id too
    r = httpx.post(
        server.url + "/v2/models/nope/infer", json=BODY, headers={"X-Request-Id": "missing-1"}, timeout=60
    )
    assert r.status_code == 404 and r.headers["x-request-id"] == "missing-1"
    line = _wait_for(server, lambda rec: rec.get("request_id") == "missing-1", "the 404")[0]
    assert (line["status"], line["model"]) == (404, "nope")


def test_grpc_calls_carry_the_request_id_and_are_access_logged(server):
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="chatty-worker")
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[1])
        tensor.contents.fp32_contents.append(1.0)
        _, call = stub.ModelInfer.with_call(request, metadata=[("x-request-id", "grpc-7")], timeout=60)
        assert ("x-request-id", "grpc-7") in call.trailing_metadata()
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelReady(
                pb.ModelReadyRequest(name="nope"), metadata=[("x-request-id", "grpc-8")], timeout=60
            )
        assert ("x-request-id", "grpc-8") in info.value.trailing_metadata()
    printed = _wait_for(
        server, lambda rec: rec.get("request_id") == "grpc-7" and "printed" in rec["message"], "print"
    )
    assert printed[0]["model"] == "chatty-worker"
    access = _wait_for(
        server, lambda rec: rec["logger"] == "envserve.access" and rec.get("request_id") == "grpc-7", "access"
    )
    assert access[0]["path"] == "/inference.GRPCInferenceService/ModelInfer" and access[0]["status"] == "OK"
    assert access[0]["protocol"] == "grpc" and access[0]["model"] == "chatty-worker"
    missing = _wait_for(
        server, lambda rec: rec["logger"] == "envserve.access" and rec.get("request_id") == "grpc-8", "access"
    )
    assert missing[0]["status"] == "NOT_FOUND"


def test_mlserver_logging_settings_and_structured_logging(tmp_path):
    """MLServer's settings.json keys: logging_settings (a dictConfig JSON file, applied over ours, whose
    format may use %(request_id)s) and use_structured_logging."""
    log_file = tmp_path / "served.log"
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(request_id)s|%(name)s|%(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(log_file), "formatter": "plain"}
        },
        "loggers": {"model.chatty": {"handlers": ["file"], "level": "INFO"}},
    }
    (tmp_path / "logging.json").write_text(json.dumps(config))
    repo = tmp_path / "repo"
    custom_model(repo, "chatty", "Chatty", extra={"word": "configured"})
    (repo / "settings.json").write_text(
        json.dumps({"logging_settings": str(tmp_path / "logging.json"), "use_structured_logging": True})
    )
    proc = ServerProcess(repo, [])
    try:
        proc.wait_ready(60)
        r = httpx.post(
            proc.url + "/v2/models/chatty/infer", json=BODY, headers={"X-Request-Id": "cfg-1"}, timeout=60
        )
        assert r.status_code == 200
        deadline = time.monotonic() + 30
        while (
            "cfg-1|" not in (log_file.read_text() if log_file.exists() else "")
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert "cfg-1|model.chatty|configured logged while predicting" in log_file.read_text()
        assert _records(proc)  # use_structured_logging: every line on stderr is JSON
    finally:
        proc.stop()


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"logging_settings": "/nonexistent/logging.json"}, "no such file"),
        ({"log_format": "xml"}, "log_format must be text or json"),
    ],
)
def test_bad_logging_settings_stop_the_start_with_one_line(tmp_path, settings, named):
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    proc = subprocess.run(
        [sys.executable, "-m", "envserve", "serve", str(tmp_path), "--http-port", "0", "--grpc-port", "-1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    assert named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
