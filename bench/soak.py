"""Suite ``soak``: mixed traffic on several models for a long time, with a worker killed every minute.

Models: the digits SVC in process, the same model in a worker process (two workers), and the
Python 3.8 + scikit-learn 0.24.2 example in its own environment. Three wrk processes (one per model,
4 connections each) run for the whole duration; every ``--kill-every`` seconds one worker of the
worker-backed models is SIGKILLed (alternating). Reported: throughput, errors, p99 per model, worker
restarts, and the resident memory of the server and its workers at the start and the end.

    scripts/bench --suite soak --soak-seconds 600
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Dict, List

from .harness import LOAD_CPU, OUT, ROOT, envserve, parse_wrk, pinned, require_wrk


def _rss_mb(pid: int) -> float:
    try:
        with open("/proc/%d/statm" % pid) as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def _status(url: str) -> List[Dict]:  # type: ignore[type-arg]
    with urllib.request.urlopen(url + "/envserve/models", timeout=10) as r:
        return list(json.load(r))


def _memory(server_pid: int, url: str) -> Dict[str, float]:
    workers = [w["pid"] for m in _status(url) for w in m.get("workers", []) if w.get("alive")]
    return {"server": _rss_mb(server_pid), "workers": sum(_rss_mb(p) for p in workers)}


def run(seconds: float, soak_seconds: float = 600, kill_every: float = 60) -> List[str]:
    from . import __main__ as core

    OUT.mkdir(parents=True, exist_ok=True)
    body = core._bodies(OUT)["1-row"]
    repo = OUT / "repo-soak"
    shutil.rmtree(repo, ignore_errors=True)
    model = ROOT / "examples" / "models" / "mnist-svm" / "model.joblib"
    for name, extra in (
        ("inproc", {}),
        ("worker", {"parallel_workers": 2, "parameters": {"environment_path": sys.prefix}}),
    ):
        folder = repo / name
        folder.mkdir(parents=True)
        shutil.copy(model, folder / "model.joblib")
        (folder / "model-settings.json").write_text(
            json.dumps({"name": name, "implementation": "sklearn", **extra})
        )
    example = ROOT / "examples" / "models" / "mnist-svm-py38"
    shutil.copytree(example, repo / "py38")
    (repo / "py38" / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "py38",
                "implementation": "sklearn",
                "parameters": {"environment_tarball": "./old-sklearn.tar.gz"},
            }
        )
    )
    script = body.with_suffix(".lua")
    with envserve(repo, OUT / "envserve-soak.log", {"ENVSERVE_INFERENCE_TIMEOUT": "10"}) as server:
        url = server.url
        time.sleep(2)
        start_memory = _memory(server.proc.pid, url)
        wrks = {}
        for name in ("inproc", "worker", "py38"):
            argv = pinned(
                LOAD_CPU,
                [
                    require_wrk(),
                    "-t1",
                    "-c4",
                    "-d%ds" % int(soak_seconds),
                    "--latency",
                    "--timeout",
                    "30s",
                    "-s",
                    str(script),
                    "%s/v2/models/%s/infer" % (url, name),
                ],
            )
            wrks[name] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started = time.monotonic()
        kills = 0
        while time.monotonic() - started < soak_seconds - 5:
            time.sleep(min(kill_every, max(0.0, soak_seconds - 5 - (time.monotonic() - started))))
            if time.monotonic() - started >= soak_seconds - 5:
                break
            target = "worker" if kills % 2 == 0 else "py38"
            pids = [w["pid"] for m in _status(url) if m["name"] == target for w in m["workers"] if w["alive"]]
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                kills += 1
                print(
                    "  %5.0f s: killed a worker of %s (pid %d)"
                    % (time.monotonic() - started, target, pids[0]),
                    flush=True,
                )
        outputs = {name: p.communicate()[0] for name, p in wrks.items()}
        time.sleep(2)
        end_memory = _memory(server.proc.pid, url)
        status = {m["name"]: m for m in _status(url)}
    lines = [
        "",
        "soak: %.0f s, %d workers killed" % (soak_seconds, kills),
        "  model    req/s    requests  errors   p99",
    ]
    for name, out in outputs.items():
        r = parse_wrk(out)
        lines.append("  %-7s %7.0f  %9d  %6d  %6.1f ms" % (name, r.rps, r.requests, r.errors, r.p99_ms))
    restarts = {n: status[n].get("restarts", 0) for n in ("worker", "py38")}
    lines.append("  worker restarts: %s" % restarts)
    lines.append(
        "  RSS MiB start: server %.0f, workers %.0f; end: server %.0f, workers %.0f (server growth %+.0f MiB)"
        % (
            start_memory["server"],
            start_memory["workers"],
            end_memory["server"],
            end_memory["workers"],
            end_memory["server"] - start_memory["server"],
        )
    )
    growth_ok = end_memory["server"] - start_memory["server"] < 100
    lines.append("  bound: server RSS growth < 100 MiB: %s" % ("PASS" if growth_ok else "FAIL"))
    return lines
