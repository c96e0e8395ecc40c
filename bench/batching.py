"""Suite ``batching``: the digits model with adaptive batching on vs off, same server, same run.

Targets: never worse than off at 1 connection (p50 within 1.2x), better at 64 connections for the 100-row
body.
"""

from __future__ import annotations

import json
import shutil
from typing import List

from .harness import OUT, ROOT, ROUNDS, envserve, paired, run_wrk

CONNECTIONS = (1, 8, 64)


def run(seconds: float) -> List[str]:
    from . import __main__ as core

    OUT.mkdir(parents=True, exist_ok=True)
    bodies = core._bodies(OUT)
    repo = OUT / "repo-batching"
    shutil.rmtree(repo, ignore_errors=True)
    model = ROOT / "examples" / "models" / "mnist-svm" / "model.joblib"
    for name, extra in (("off", {}), ("on", {"max_batch_size": 64, "max_batch_time": 0.01})):
        folder = repo / name
        folder.mkdir(parents=True)
        shutil.copy(model, folder / "model.joblib")
        (folder / "model-settings.json").write_text(
            json.dumps({"name": name, "implementation": "sklearn", **extra})
        )
    results = {}
    with envserve(repo, OUT / "envserve-batching.log") as server:
        for name in ("off", "on"):
            print("batching %s:" % name, flush=True)
            results[name] = core._measure("%s/v2/models/%s/infer" % (server.url, name), bodies, seconds)
        url = "%s/v2/models/%%s/infer" % server.url
        print("target points, interleaved:", flush=True)
        p50 = paired(
            "1-row @1 p50 off vs on",
            lambda: run_wrk(url % "off", bodies["1-row"], 1, seconds).p50_ms,
            lambda: run_wrk(url % "on", bodies["1-row"], 1, seconds).p50_ms,
        )
        gain = paired(
            "100-row @64 req/s off vs on",
            lambda: run_wrk(url % "off", bodies["100-row"], 64, seconds).rps,
            lambda: run_wrk(url % "on", bodies["100-row"], 64, seconds).rps,
        )
    lines = ["", "batching on / off:  body    conns  req/s   p50    p99"]
    for body in bodies:
        for conns in CONNECTIONS:
            off, on = results["off"][body][conns], results["on"][body][conns]
            lines.append(
                "                    %-7s %3d   %5.2fx  %5.2fx  %5.2fx"
                % (body, conns, on.rps / off.rps, on.p50_ms / off.p50_ms, on.p99_ms / off.p99_ms)
            )
    lines.append(
        "target 1 connection p50 within 1.2x of off (median of %d pairs): %.2fx %s"
        % (ROUNDS, p50, "PASS" if p50 <= 1.2 else "FAIL")
    )
    lines.append(
        "target 100-row @64 better than off (median of %d pairs): %.2fx %s"
        % (ROUNDS, gain, "PASS" if gain > 1.0 else "FAIL")
    )
    return lines
