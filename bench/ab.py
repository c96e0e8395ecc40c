"""Suite ``ab``: this tree against an earlier commit, single-row infer of the digits model in process at 8
connections (the core suite's target point) over REST (wrk) and over gRPC (h2load), in interleaved pairs.

    scripts/bench --suite ab [--against REV]     (default REV: HEAD~1)

A change to the request path states its cost with this: the earlier code runs from ``git archive REV``
on PYTHONPATH, beside the current one, same models, same CPU, measured alternately.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import List

from .grpc import PATH as GRPC_PATH
from .grpc import _grpc_body, _h2load
from .harness import OUT, ROOT, ROUNDS, Process, free_port, paired, run_wrk

AGAINST = os.environ.get("ENVSERVE_BENCH_AGAINST", "HEAD~1")


def _server(src: str, repo: object, tag: str) -> Process:
    port = free_port()
    grpc_port = free_port()
    env = {"PYTHONPATH": src} if src else {}
    env["ENVSERVE_GRPC_PORT"] = str(grpc_port)
    proc = Process(
        [
            sys.executable,
            "-m",
            "envserve",
            "serve",
            str(repo),
            "--http-port",
            str(port),
            "--log-level",
            "warning",
        ],
        "http://127.0.0.1:%d/v2/health/ready" % port,
        OUT / ("ab-%s.log" % tag),
        env,
    )
    proc.url = "http://127.0.0.1:%d" % port
    proc.grpc_url = "http://127.0.0.1:%d%s" % (grpc_port, GRPC_PATH)
    return proc


def run(seconds: float) -> List[str]:
    from . import __main__ as core

    OUT.mkdir(parents=True, exist_ok=True)
    body = core._bodies(OUT)["1-row"]
    repo = core._repo(OUT)
    rev = subprocess.run(
        ["git", "rev-parse", "--short", AGAINST], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    old = OUT / ("ab-" + rev)
    shutil.rmtree(old, ignore_errors=True)
    old.mkdir()
    archive = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    grpc_body = OUT / "ab-grpc-body.bin"
    grpc_body.write_bytes(_grpc_body(body))
    with _server(str(old / "src"), repo, rev) as before, _server("", repo, "now") as now:
        path = "/v2/models/mnist-svm/infer"
        run_wrk(before.url + path, body, 8, 2)  # warm-up
        run_wrk(now.url + path, body, 8, 2)
        _h2load(before.grpc_url, str(grpc_body), 8, 1, 2)
        _h2load(now.grpc_url, str(grpc_body), 8, 1, 2)
        rest = paired(
            "REST single-row @8 req/s %s vs this tree" % rev,
            lambda: run_wrk(before.url + path, body, 8, seconds).rps,
            lambda: run_wrk(now.url + path, body, 8, seconds).rps,
        )
        grpc = paired(
            "gRPC single-row @8 req/s %s vs this tree" % rev,
            lambda: _h2load(before.grpc_url, str(grpc_body), 8, 1, seconds),
            lambda: _h2load(now.grpc_url, str(grpc_body), 8, 1, seconds),
        )
    return [
        "",
        "this tree vs %s, single-row @8 in process (median of %d interleaved pairs): REST %.3fx, gRPC %.3fx"
        % (rev, ROUNDS, rest, grpc),
    ]
