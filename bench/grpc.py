"""Suite ``grpc``: gRPC ModelInfer vs REST infer of the digits model (single row), same server.

Load from h2load (Debian's nghttp2-client, a C HTTP/2 load generator) posting a framed
``inference.ModelInferRequest`` with raw_input_contents; 8 connections with one stream each, and one
connection with 8 concurrent streams. REST from wrk at 8 connections. Target: gRPC >= 0.9x REST in process.
Also an echo model over both, which leaves only the cost of each transport, and the same service over
grpcio's asyncio server (bench/grpc_aio_peer.py): the two well-kept HTTP/2 stacks, side by side.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from typing import List

from .harness import LOAD_CPU, OUT, ROOT, ROUNDS, Process, envserve, free_port, paired, pinned

PATH = "/inference.GRPCInferenceService/ModelInfer"


def _grpc_body(body_file, model: str = "mnist-svm") -> bytes:  # type: ignore[no-untyped-def]
    import numpy as np

    sys.path.insert(0, str(OUT.parent.parent / "src"))
    from envserve.server.grpc.generated import inference_pb2 as pb

    inp = json.loads(body_file.read_text())["inputs"][0]
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="predict", datatype="FP32", shape=inp["shape"])
    request.raw_input_contents.append(np.asarray(inp["data"], dtype=np.float32).tobytes())
    data = request.SerializeToString()
    return struct.pack(">BI", 0, len(data)) + data


def _h2load(url: str, body: str, conns: int, streams: int, seconds: float) -> float:
    h2load = shutil.which("h2load")
    if h2load is None:
        sys.exit("h2load is not installed: apt-get install nghttp2-client (scripts/bench does this)")
    argv = pinned(
        LOAD_CPU,
        [
            h2load,
            "-D",
            str(int(seconds)),
            "-c",
            str(conns),
            "-m",
            str(streams),
            "-d",
            body,
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            url,
        ],
    )
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    failed = int(re.search(r"(\d+) failed", out).group(1))
    if failed:
        sys.exit("h2load: %d failed requests" % failed)
    return float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1))


def run(seconds: float) -> List[str]:
    from . import __main__ as core
    from .harness import run_wrk

    OUT.mkdir(parents=True, exist_ok=True)
    bodies = core._bodies(OUT)
    repo = OUT / "repo-grpc"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(core._repo(OUT), repo)
    # A model that does nothing (returns its input): what remains is the cost of each transport.
    echo = repo / "echo"
    echo.mkdir()
    shutil.copy(ROOT / "tests" / "fixtures" / "custom" / "runtimes.py", echo / "runtimes.py")
    (echo / "model-settings.json").write_text(json.dumps({"name": "echo", "implementation": "runtimes.Echo"}))
    grpc_body = OUT / "grpc-body.bin"
    grpc_body.write_bytes(_grpc_body(bodies["1-row"]))
    echo_body = OUT / "grpc-echo-body.bin"
    echo_body.write_bytes(_grpc_body(bodies["1-row"], "echo"))
    grpc_port = free_port()
    http_port, aio_port = free_port(), free_port()
    aio_peer = [sys.executable, "-m", "bench.grpc_aio_peer", str(repo), str(http_port), str(aio_port)]
    with envserve(repo, OUT / "envserve-grpc.log", {"ENVSERVE_GRPC_PORT": str(grpc_port)}) as server, Process(
        aio_peer, "http://127.0.0.1:%d/v2/health/ready" % http_port, OUT / "grpc-aio-peer.log"
    ):
        url = "http://127.0.0.1:%d%s" % (grpc_port, PATH)
        aio_url = "http://127.0.0.1:%d%s" % (aio_port, PATH)
        _h2load(url, str(grpc_body), 8, 1, 2)  # warm-up
        _h2load(aio_url, str(grpc_body), 8, 1, 2)
        rest = run_wrk(server.url + "/v2/models/mnist-svm/infer", bodies["1-row"], 8, seconds)
        grpc8 = _h2load(url, str(grpc_body), 8, 1, seconds)
        streams = _h2load(url, str(grpc_body), 1, 8, seconds)
        rest_echo = run_wrk(server.url + "/v2/models/echo/infer", bodies["1-row"], 8, seconds)
        grpc_echo = _h2load(url, str(echo_body), 8, 1, seconds)
        aio_echo = _h2load(aio_url, str(echo_body), 8, 1, seconds)
        print("the two HTTP/2 stacks, interleaved:", flush=True)
        stacks = paired(
            "single-row @8 req/s grpc.aio vs h2",
            lambda: _h2load(aio_url, str(grpc_body), 8, 1, seconds),
            lambda: _h2load(url, str(grpc_body), 8, 1, seconds),
        )
        print("target point, interleaved:", flush=True)
        target = paired(
            "single-row @8 req/s REST vs gRPC",
            lambda: run_wrk(server.url + "/v2/models/mnist-svm/infer", bodies["1-row"], 8, seconds).rps,
            lambda: _h2load(url, str(grpc_body), 8, 1, seconds),
        )
    lines = [
        "",
        "REST single-row @8 connections:        %7.0f req/s" % rest.rps,
        "gRPC single-row @8 connections:        %7.0f req/s  (%.2fx REST)" % (grpc8, grpc8 / rest.rps),
        "gRPC single-row @1 connection, 8 streams: %4.0f req/s  (%.2fx REST)" % (streams, streams / rest.rps),
        "echo model (transport cost only): REST %.0f req/s, gRPC %.0f req/s (%.2fx REST), grpc.aio %.0f req/s"
        % (rest_echo.rps, grpc_echo, grpc_echo / rest_echo.rps, aio_echo),
        "h2 transport vs grpc.aio (median of %d interleaved pairs): %.2fx" % (ROUNDS, stacks),
        "target gRPC >= 0.9x REST in process (median of %d interleaved pairs): %.2fx %s"
        % (ROUNDS, target, "PASS" if target >= 0.9 else "FAIL"),
    ]
    return lines
