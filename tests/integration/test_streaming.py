"""Streaming from a real server: server-sent events over REST (infer_stream, generate_stream) and MLServer's
bidirectional ModelStreamInfer over gRPC, for a model in process, in a worker of the server's Python and in
a Python 3.8 environment: chunks leave as the model yields them, a client that leaves stops the model, a
slow one holds it back, errors end the stream with an error event, and nothing is left behind."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import httpx
import pytest

from examples import old_sklearn
from tests.conftest import ServerProcess, custom_model

pytestmark = pytest.mark.slow  # a Python 3.8 environment, once per machine

VARIANTS = ("in-process", "worker", "py38")


def _words(repo: Path, name: str, variant: str, **extra) -> Path:
    parameters = {"extra": extra}
    if variant == "worker":
        parameters["environment_path"] = sys.prefix
    elif variant == "py38":
        parameters["environment_tarball"] = "./env.tar.gz"
    folder = custom_model(repo, name, "Words", **parameters)
    if variant == "py38":
        shutil.copy(old_sklearn.old_sklearn()["tarball"], folder / "env.tar.gz")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("streaming")
    for variant in VARIANTS:
        _words(repo, "words-" + variant, variant)
        _words(repo, "slow-" + variant, variant, pause=0.02)
        _words(repo, "gated-" + variant, variant, gate=str(repo / ("gate-" + variant)))
        _words(repo, "big-" + variant, variant, repeat=100000)
    custom_model(repo, "echo", "Echo")
    proc = ServerProcess(repo, [], env={"ENVSERVE_ENV_CACHE": str(repo / "cache")})
    proc.repo = repo
    try:
        yield proc.wait_ready(300)
    finally:
        proc.stop()


def _text(text: str) -> dict:
    return {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]}


def _events(response: httpx.Response) -> Iterator[Tuple[str, dict]]:
    """(event type, data) of each server-sent event, as they arrive."""
    kind, data = "message", []
    for line in response.iter_lines():
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            yield kind, json.loads("\n".join(data))
            kind, data = "message", []


def _log(server, name: str) -> List[str]:
    path = server.repo / name / "words.log"
    return path.read_text().splitlines() if path.exists() else []


def _wait_for(predicate, what: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "waited %g s for %s" % (seconds, what)
        time.sleep(0.05)


@pytest.mark.parametrize("variant", VARIANTS)
def test_rest_streams_chunk_by_chunk_as_v2_and_generate_events(server, variant):
    name = "words-" + variant
    with httpx.Client(base_url=server.url, timeout=120) as client:
        with client.stream(
            "POST", "/v2/models/%s/infer_stream" % name, json=_text("hello streaming world")
        ) as r:
            assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
            events = list(_events(r))
        assert [kind for kind, _ in events] == ["message"] * 3
        assert [e["outputs"][0]["data"] for _, e in events] == [["hello"], ["streaming"], ["world"]]
        assert {e["model_name"] for _, e in events} == {name}
        with client.stream("POST", "/v2/models/%s/generate_stream" % name, json={"text": "two words"}) as r:
            events = list(_events(r))
        assert [e for _, e in events] == [
            {"model_name": name, "model_version": "", "word": "two"},
            {"model_name": name, "model_version": "", "word": "words"},
        ]
        with client.stream("POST", "/v2/models/%s/generate_stream" % name, json=_text("v2 body")) as r:
            assert [e["outputs"][0]["data"] for _, e in _events(r)] == [
                ["v2"],
                ["body"],
            ]  # as MLServer's clients


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_chunk_leaves_before_the_model_makes_the_next(server, variant):
    """The model makes its second word only once the client holds the first: a server that buffered the
    answer would never send anything."""
    gate = server.repo / ("gate-" + variant)
    gate.unlink(missing_ok=True)
    with httpx.Client(base_url=server.url, timeout=120) as client, client.stream(
        "POST", "/v2/models/gated-%s/infer_stream" % variant, json=_text("first second third")
    ) as r:
        events = _events(r)
        assert next(events)[1]["outputs"][0]["data"] == ["first"]
        assert _log(server, "gated-" + variant) == ["chunk first"]
        gate.touch()
        assert [e["outputs"][0]["data"] for _, e in events] == [["second"], ["third"]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_client_that_leaves_stops_the_model_and_100_of_them_leave_nothing_behind(server, variant):
    name = "slow-" + variant
    text = " ".join("w%d" % i for i in range(200))
    before = {m["name"]: m for m in httpx.get(server.url + "/envserve/models").json()}[name]
    for i in range(100):  # leaving the block closes the connection mid-stream
        with httpx.Client(base_url=server.url, timeout=120) as client:  # noqa: SIM117
            with client.stream("POST", "/v2/models/%s/infer_stream" % name, json=_text(text)) as r:
                assert next(_events(r))[1]["outputs"][0]["data"] == ["w0"], i
    _wait_for(lambda: _log(server, name).count("end closed") == 100, "the model to see 100 clients leave")
    after = {m["name"]: m for m in httpx.get(server.url + "/envserve/models").json()}[name]
    assert after["queued"] == 0
    if variant != "in-process":
        assert [w["pid"] for w in after["workers"]] == [w["pid"] for w in before["workers"]]  # not restarted
        assert all(w["inflight"] == 0 for w in after["workers"])
    assert after["streams"] == 0
    assert "end finished" not in _log(server, name)  # none ran to its end: each was stopped
    produced = sum(1 for line in _log(server, name) if line.startswith("chunk"))
    assert produced < 100 * 200 / 4  # stopped near where each client left, not at the end of its 200 words
    with httpx.Client(base_url=server.url, timeout=120) as client:  # noqa: SIM117
        with client.stream("POST", "/v2/models/%s/infer_stream" % name, json=_text("still here")) as r:
            assert [e["outputs"][0]["data"] for _, e in _events(r)] == [["still"], ["here"]]
    metrics = httpx.get(server.url + "/metrics").text
    assert (
        'envserve_requests_total{model="%s",protocol="rest",status="499",version=""} 100.0' % name in metrics
    )


@pytest.mark.parametrize("variant", ("in-process", "worker"))
def test_a_slow_client_holds_the_model_back_instead_of_filling_the_servers_memory(server, variant):
    """Each chunk is 100,000 times its word; 2,000 of them would be over a gigabyte. A client that reads
    nothing after the first chunk lets the model run only a bounded way ahead."""
    name = "big-" + variant
    text = " ".join("w%04d" % i for i in range(2000))
    request = json.dumps(_text(text)).encode()
    host, port = server.url.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.sendall(
        b"POST /v2/models/%s/infer_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (name.encode(), len(request), request)
    )
    sock.recv(65536)  # the headers and the start of the first chunk; then nothing more is read
    try:
        settled, last = 0, -1
        while settled < 20:  # until the model has made nothing more for a second
            time.sleep(0.05)
            count = len(_log(server, name))
            settled = settled + 1 if count == last else 0
            last = count
        assert 0 < last < 300, last
    finally:
        sock.close()
    _wait_for(lambda: "end closed" in _log(server, name), "the model to see the client leave")


@pytest.mark.parametrize("variant", VARIANTS)
def test_errors_mid_stream_are_an_error_event_and_before_it_an_error_answer(server, variant):
    name = "words-" + variant
    with httpx.Client(base_url=server.url, timeout=120) as client:
        with client.stream("POST", "/v2/models/%s/infer_stream" % name, json=_text("one boom two")) as r:
            events = list(_events(r))
        assert events[0][1]["outputs"][0]["data"] == ["one"]
        assert events[1][0] == "error" and "the model cannot say boom" in events[1][1]["error"]
        assert len(events) == 2
        r = client.post("/v2/models/%s/infer_stream" % name, json=_text("boom first"))
        assert r.status_code == 500 and "the model cannot say boom" in r.json()["error"]
        r = client.post("/v2/models/%s/infer_stream" % name, content=b"{not json")
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        r = client.post("/v2/models/%s/infer" % name, json=_text("unary"))
        assert r.status_code == 400 and "answers streams only" in r.json()["error"]
    r = httpx.post(server.url + "/v2/models/echo/infer_stream", json=_text("x"), timeout=60)
    assert r.status_code == 400 and r.json()["error"].startswith("model 'echo' does not stream")
    r = httpx.post(server.url + "/v2/models/nobody/generate_stream", json={"text": "x"}, timeout=60)
    assert r.status_code == 404


def test_grpc_model_stream_infer_is_bidirectional(server):
    """The second request goes only after the first one's answers came back: each request is answered as
    it arrives, in process and in workers; errors and models that do not stream end the call with a status."""
    import grpc

    from envserve.server.grpc.generated import inference_pb2 as pb

    def request(model: str, text: str) -> bytes:
        message = pb.ModelInferRequest(model_name=model)
        message.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
            text.encode()
        )
        return message.SerializeToString()

    def word(data: bytes) -> str:
        reply = pb.ModelInferResponse.FromString(data)
        return (reply.outputs[0].contents.bytes_contents or [reply.raw_output_contents[0][4:]])[0].decode()

    with grpc.insecure_channel(server.grpc_address) as channel:
        stream = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        for variant in VARIANTS:
            model = "words-" + variant
            answered = threading.Event()

            def requests(model=model, answered=answered):
                yield request(model, "one two")
                assert answered.wait(120), (
                    "the first request's answers did not come before the second was sent"
                )
                yield request(model, "three")

            got = []
            for data in stream(requests(), timeout=120):
                got.append(word(data))
                if len(got) == 2:
                    answered.set()
            assert got == ["one", "two", "three"], variant
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter([request("echo", "x")]), timeout=60))
        assert (
            info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "does not stream" in info.value.details()
        )
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter([request("words-worker", "a boom")]), timeout=60))
        assert info.value.code() == grpc.StatusCode.INTERNAL and "cannot say boom" in info.value.details()
