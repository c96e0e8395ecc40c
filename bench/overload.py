"""Suite ``overload``: probes and shedding under load (the targets the tests leave to bench/).

- Probe latency (``GET /v2/health/live``) while an in-process model serves a 2-second request, and while a
  worker model is saturated by wrk at 64 connections. Target: every probe under 100 ms.
- Twice a model's capacity: a model taking 50 ms per call (20/s, ``max_queue_size`` 4) receives 40
  requests/s, open loop, for the run's duration. Reported: the share shed, how fast a 503 comes back
  (target p99 under 20 ms: shed at once, not after waiting), the slowest accepted request against what
  the queue allows ((4 waiting + 1 running + itself) x 50 ms), and the first request after the overload
  (target: under 2x the model's 50 ms).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import threading
import time
from typing import List

import httpx

from .harness import OUT, ROOT, envserve, run_wrk

SERVICE = 0.05
QUEUE = 4


def _repo() -> object:
    repo = OUT / "repo-overload"
    shutil.rmtree(repo, ignore_errors=True)
    runtimes = ROOT / "tests" / "fixtures" / "custom" / "runtimes.py"
    models = {
        "slow": {"implementation": "runtimes.PerRow", "parameters": {"extra": {"seconds_per_row": 2.0}}},
        "paced": {
            "implementation": "runtimes.PerRow",
            "parameters": {"extra": {"seconds_per_row": SERVICE}, "max_queue_size": QUEUE},
        },
        "worker": {"implementation": "sklearn", "parameters": {"environment_path": sys.prefix}},
    }
    for name, settings in models.items():
        folder = repo / name
        folder.mkdir(parents=True)
        shutil.copy(runtimes, folder / "runtimes.py")
        (folder / "model-settings.json").write_text(json.dumps({"name": name, **settings}))
    shutil.copy(ROOT / "examples" / "models" / "mnist-svm" / "model.joblib", repo / "worker" / "model.joblib")
    return repo


def _probe_while(url: str, busy: threading.Thread) -> List[float]:
    times = []
    with httpx.Client(base_url=url, timeout=30) as client:
        while busy.is_alive():
            started = time.perf_counter()
            client.get("/v2/health/live").raise_for_status()
            times.append(time.perf_counter() - started)
            time.sleep(0.02)
    return times


def _row(label: str, times: List[float]) -> str:
    times = sorted(times)
    worst = times[-1] * 1e3
    return "%-52s %4d probes  p50 %6.2f ms  max %7.2f ms  target < 100 ms: %s" % (
        label,
        len(times),
        times[len(times) // 2] * 1e3,
        worst,
        "PASS" if worst < 100 else "FAIL",
    )


async def _twice_capacity(url: str, seconds: float) -> List[str]:
    rate = 2 / SERVICE
    body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [[1]]}]}
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one() -> tuple:
            started = time.perf_counter()
            r = await client.post("/v2/models/paced/infer", json=body)
            return r.status_code, time.perf_counter() - started

        tasks = []
        for _ in range(int(rate * seconds)):
            tasks.append(asyncio.ensure_future(one()))
            await asyncio.sleep(1 / rate)
        results = await asyncio.gather(*tasks)
        started = time.perf_counter()
        (await client.post("/v2/models/paced/infer", json=body)).raise_for_status()
        after = time.perf_counter() - started
    shed = sorted(t for s, t in results if s == 503)
    kept = sorted(t for s, t in results if s == 200)
    allowed = (QUEUE + 2) * SERVICE
    p99_shed = shed[int(len(shed) * 0.99)] * 1e3 if shed else 0.0
    return [
        "twice the capacity (%.0f req/s at a 20/s model, %d requests): %d shed (%.0f%%), %d answered, "
        "other statuses %d"
        % (
            rate,
            len(results),
            len(shed),
            100 * len(shed) / len(results),
            len(kept),
            len(results) - len(shed) - len(kept),
        ),
        "  503 latency p50 %.2f ms, p99 %.2f ms  target p99 < 20 ms: %s"
        % (shed[len(shed) // 2] * 1e3 if shed else 0, p99_shed, "PASS" if shed and p99_shed < 20 else "FAIL"),
        "  slowest accepted %.0f ms, the queue allows %.0f ms: %s"
        % (kept[-1] * 1e3, allowed * 1e3, "PASS" if kept[-1] <= allowed * 1.5 else "FAIL"),
        "  first request after the overload %.0f ms (the model takes %.0f ms)  target < 2x: %s"
        % (after * 1e3, SERVICE * 1e3, "PASS" if after < 2 * SERVICE else "FAIL"),
    ]


def run(seconds: float) -> List[str]:
    from . import __main__ as core

    OUT.mkdir(parents=True, exist_ok=True)
    repo = _repo()
    body = core._bodies(OUT)["1-row"]
    lines = [""]
    with envserve(
        repo, OUT / "envserve-overload.log", {"ENVSERVE_ENV_CACHE": str(OUT / "env-cache")}
    ) as server:
        one_row = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [[1]]}]}
        long = threading.Thread(
            target=lambda: httpx.post(server.url + "/v2/models/slow/infer", json=one_row, timeout=60)
        )
        long.start()
        time.sleep(0.2)
        lines.append(_row("in-process model serving a 2 s request:", _probe_while(server.url, long)))
        load = threading.Thread(
            target=run_wrk, args=(server.url + "/v2/models/worker/infer", body, 64, seconds)
        )
        load.start()
        time.sleep(0.5)
        lines.append(_row("worker model saturated (wrk, 64 connections):", _probe_while(server.url, load)))
        lines.extend(asyncio.run(_twice_capacity(server.url, seconds)))
    return lines
