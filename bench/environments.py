"""Suite ``environments``: models in worker processes.

- REST single-row infer of the digits model through a worker vs in process, at 1, 8 and 64 connections
  (same model, same library versions: the worker runs in the server's own venv given as
  ``environment_path``). Target at 8 connections: worker >= 0.8x in-process.
- Time to ready of the Python 3.8 + scikit-learn 0.24.2 example (``environment_tarball``): first start with
  an empty environment cache, then a restart with the cache warm. Target warm: <= 1.5 s.
- Environment build time from a requirements file with a warm package cache. Target: <= 10 s.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import List

from .harness import OUT, ROOT, ROUNDS, envserve, free_port, paired, run_wrk, wait_http

CONNECTIONS = (1, 8, 64)


def _time_to_ready(repo: Path, cache: Path, log: Path, ready: str = "/v2/health/ready") -> float:
    """Seconds from ``envserve serve`` to ``ready`` answering 200 (a model's ready path: that model alone)."""
    port = free_port()
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "envserve", "serve", str(repo), "--http-port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**__import__("os").environ, "ENVSERVE_ENV_CACHE": str(cache), "ENVSERVE_GRPC_PORT": "0"},
        )
        try:
            wait_http("http://127.0.0.1:%d%s" % (port, ready), proc=proc)
            elapsed = time.monotonic() - started
        finally:
            proc.terminate()
            proc.wait(30)
    return elapsed


def run(seconds: float) -> List[str]:
    from . import __main__ as core

    OUT.mkdir(parents=True, exist_ok=True)
    bodies = {"1-row": core._bodies(OUT)["1-row"]}
    repo = OUT / "repo-workers"
    shutil.rmtree(repo, ignore_errors=True)
    model = ROOT / "examples" / "models" / "mnist-svm" / "model.joblib"
    for name, params in (("in-process", {}), ("worker", {"environment_path": sys.prefix})):
        folder = repo / name
        folder.mkdir(parents=True)
        shutil.copy(model, folder / "model.joblib")
        (folder / "model-settings.json").write_text(
            json.dumps({"name": name, "implementation": "sklearn", "parameters": params})
        )
    lines = []
    with envserve(repo, OUT / "envserve-workers.log") as server:
        url = server.url
        results = {}
        for name in ("in-process", "worker"):
            print("%s (whole server on CPU 0):" % name, flush=True)
            results[name] = core._measure("%s/v2/models/%s/infer" % (url, name), bodies, seconds)
        print("target point, interleaved:", flush=True)
        same_core = paired(
            "1-row @8 req/s in-process vs worker (server's core)",
            lambda: run_wrk("%s/v2/models/in-process/infer" % url, bodies["1-row"], 8, seconds).rps,
            lambda: run_wrk("%s/v2/models/worker/infer" % url, bodies["1-row"], 8, seconds).rps,
        )
        # As deployed on a machine with a core to spare: the worker moved to CPU 1 (next to wrk).
        status = json.load(urllib.request.urlopen(url + "/envserve/models"))
        pids = [w["pid"] for m in status if m["name"] == "worker" for w in m["workers"]]
        for pid in pids:
            subprocess.run(["taskset", "-p", "-c", "1", str(pid)], check=True, capture_output=True)
        print("worker (server on CPU 0, worker process on CPU 1):", flush=True)
        results["worker-own-core"] = core._measure("%s/v2/models/worker/infer" % url, bodies, seconds)
    lines.append("")
    lines.append("worker / in-process (1-row):         conns  req/s   p50    p99")
    for label, key in (
        ("worker on the server's core", "worker"),
        ("worker on its own core", "worker-own-core"),
    ):
        for conns in CONNECTIONS:
            i, w = results["in-process"]["1-row"][conns], results[key]["1-row"][conns]
            lines.append(
                "  %-32s %3d   %5.2fx  %5.2fx  %5.2fx"
                % (label, conns, w.rps / i.rps, w.p50_ms / i.p50_ms, w.p99_ms / i.p99_ms)
            )
    own_core = results["worker-own-core"]["1-row"][8].rps / results["in-process"]["1-row"][8].rps
    for label, ratio in (("server's core, median of %d pairs" % ROUNDS, same_core), ("own core", own_core)):
        lines.append(
            "target worker >= 0.80x in-process at 8 connections (worker on %s): %.2fx %s"
            % (label, ratio, "PASS" if ratio >= 0.8 else "FAIL")
        )

    # time to ready, cold and warm cache
    example = ROOT / "examples" / "models" / "mnist-svm-py38"
    if not (example / "old-sklearn.tar.gz").exists():
        sys.exit("%s is missing: run scripts/setup" % example)
    repo38 = OUT / "repo-py38"
    shutil.rmtree(repo38, ignore_errors=True)
    shutil.copytree(example, repo38 / "mnist-svm-py38")
    cache = Path(tempfile.mkdtemp(prefix="envserve-bench-cache-"))
    try:
        cold = _time_to_ready(repo38, cache, OUT / "ready-cold.log")
        warm = min(_time_to_ready(repo38, cache, OUT / ("ready-warm-%d.log" % i)) for i in range(3))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    size = (example / "old-sklearn.tar.gz").stat().st_size / 2**20
    lines.append("")
    lines.append(
        "time to ready, Python 3.8 example (%.0f MiB tarball): first start %.2f s, warm cache %.2f s "
        "(target <= 1.50 s: %s)" % (size, cold, warm, "PASS" if warm <= 1.5 else "FAIL")
    )

    # environment build from requirements, warm package cache
    import sklearn

    from envserve.environments import EnvironmentCache, EnvironmentSource

    reqs = OUT / "requirements.txt"
    reqs.write_text("scikit-learn==%s\n" % sklearn.__version__)
    times = []
    for _ in range(2):  # the first warms the package cache if it is cold
        cache = Path(tempfile.mkdtemp(prefix="envserve-bench-build-"))
        try:
            started = time.monotonic()
            env = EnvironmentCache(str(cache)).prepare(EnvironmentSource("spec", str(reqs)), "bench")
            times.append(time.monotonic() - started)
            env.release()
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    lines.append(
        "environment build from requirements.txt (scikit-learn + numpy + scipy, Python %d.%d): "
        "first %.2f s, warm package cache %.2f s (target <= 10 s: %s)"
        % (sys.version_info[0], sys.version_info[1], times[0], times[1], "PASS" if times[1] <= 10 else "FAIL")
    )
    return lines
