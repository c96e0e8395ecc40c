"""envserve benchmarks. Every figure is printed next to a floor measured in the same run.

    scripts/bench [--seconds N] [--suite core]

Suites:
  ab            see bench/ab.py: this tree vs an earlier commit (--against REV), single-row in process,
                REST and gRPC.
  soak          see bench/soak.py: 10 minutes of mixed traffic, a worker killed every minute (not in "all").
  grpc          see bench/grpc.py: gRPC ModelInfer (h2load) vs REST infer (wrk).
  overload      see bench/overload.py: probe latency while models compute, shedding at twice the capacity.
  batching      see bench/batching.py: adaptive batching on vs off.
  environments  see bench/environments.py: worker vs in-process, time to ready, environment build time.
  extraction    see bench/extraction.py: first start from a .tar.gz and a .tar.zst vs tar -xzf, then a start.
  mlserver-start see bench/mlserver_start.py: first start from a venv-pack tarball, vs MLServer 1.7.1.
  pickles       see bench/pickles.py: envserve's restricted loader vs joblib.load of the same file.
  core   single-row and 100-row infer of the digits model at 1, 8 and 64 connections, envserve (in
         process) vs the floor (bench/floor_app.py). Target: single-row req/s at 8 connections >= 0.8x the
         floor's, p99 <= 1.5x the floor's.

The server is pinned to CPU 0 and wrk to CPU 1. Each target is checked on the median of 3 pairs of
measurements taken back to back (bench/harness.py: paired), so machine drift cannot decide it.
Results go to bench/out/<suite>.json; the figures of record are in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Dict, List

from .harness import OUT, ROOT, ROUNDS, Process, WrkResult, envserve, free_port, paired, run_wrk

CONNECTIONS = (1, 8, 64)


def _bodies(out: Path) -> Dict[str, Path]:
    from sklearn import datasets

    digits = datasets.load_digits()
    x = digits.images.reshape((len(digits.images), -1)).astype("float32")
    bodies = {}
    for rows in (1, 100):
        doc = {
            "inputs": [
                {"name": "predict", "shape": [rows, 64], "datatype": "FP32", "data": x[:rows].tolist()}
            ]
        }
        path = out / ("body-%d.json" % rows)
        path.write_text(json.dumps(doc))
        bodies["%d-row" % rows] = path
    return bodies


def _repo(out: Path) -> Path:
    model = ROOT / "examples" / "models" / "mnist-svm" / "model.joblib"
    if not model.exists():
        sys.exit("%s is missing: run scripts/setup" % model)
    repo = out / "repo"
    folder = repo / "mnist-svm"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, folder / "model.joblib")
    (folder / "model-settings.json").write_text(
        json.dumps({"name": "mnist-svm", "implementation": "mlserver_sklearn.SKLearnModel"})
    )
    return repo


def _measure(url: str, bodies: Dict[str, Path], seconds: float) -> Dict[str, Dict[int, WrkResult]]:
    results: Dict[str, Dict[int, WrkResult]] = {}
    for body_name, body in bodies.items():
        run_wrk(url, body, 8, 2)  # warm-up
        for conns in CONNECTIONS:
            r = run_wrk(url, body, conns, seconds)
            if r.errors:
                sys.exit("%d failed requests against %s; see bench/out logs" % (r.errors, url))
            results.setdefault(body_name, {})[conns] = r
            print("  %-7s %3d conns  %s" % (body_name, conns, r.row()), flush=True)
    return results


def core(seconds: float) -> List[str]:
    OUT.mkdir(parents=True, exist_ok=True)
    bodies = _bodies(OUT)
    repo = _repo(OUT)
    python = sys.executable
    port = free_port()
    floor_url = "http://127.0.0.1:%d/" % port
    with Process(
        [python, str(ROOT / "bench" / "floor_app.py"), str(repo / "mnist-svm" / "model.joblib"), str(port)],
        floor_url,
        OUT / "floor.log",
    ), envserve(repo, OUT / "envserve.log") as server:
        our_url = server.url + "/v2/models/mnist-svm/infer"
        print("floor (minimal ASGI app, same predict):", flush=True)
        floor = _measure(floor_url, bodies, seconds)
        print("envserve (in-process sklearn runtime):", flush=True)
        ours = _measure(our_url, bodies, seconds)
        print("target point, interleaved:", flush=True)
        target = paired(
            "1-row @8 req/s floor vs envserve",
            lambda: run_wrk(floor_url, bodies["1-row"], 8, seconds).rps,
            lambda: run_wrk(our_url, bodies["1-row"], 8, seconds).rps,
        )

    lines = ["", "ratios (envserve / floor):", "  body    conns  req/s   p50    p99"]
    for body_name in bodies:
        for conns in CONNECTIONS:
            f, o = floor[body_name][conns], ours[body_name][conns]
            lines.append(
                "  %-7s %3d   %5.2fx  %5.2fx  %5.2fx"
                % (body_name, conns, o.rps / f.rps, o.p50_ms / f.p50_ms, o.p99_ms / f.p99_ms)
            )
    f8, o8 = floor["1-row"][8], ours["1-row"][8]
    rps_ok, p99_ok = target >= 0.8, o8.p99_ms <= 1.5 * f8.p99_ms
    lines.append("")
    lines.append(
        "target single-row @8: req/s %.2fx of floor (median of %d interleaved pairs; >= 0.80: %s), "
        "p99 %.2fx of floor (<= 1.50: %s)"
        % (target, ROUNDS, "PASS" if rps_ok else "FAIL", o8.p99_ms / f8.p99_ms, "PASS" if p99_ok else "FAIL")
    )
    doc = {
        suite: {b: {c: vars(r) for c, r in rows.items()} for b, rows in res.items()}
        for suite, res in (("floor", floor), ("envserve", ours))
    }
    (OUT / "core.json").write_text(json.dumps(doc, indent=2))
    return lines


def environments(seconds: float) -> List[str]:
    from .environments import run

    return run(seconds)


def extraction(seconds: float) -> List[str]:
    from .extraction import run

    return run(seconds)


def mlserver_start(seconds: float) -> List[str]:
    from .mlserver_start import run

    return run(seconds)


def pickles(seconds: float) -> List[str]:
    from .pickles import run

    return run(seconds)


def batching(seconds: float) -> List[str]:
    from .batching import run

    return run(seconds)


def grpc(seconds: float) -> List[str]:
    from .grpc import run

    return run(seconds)


def ab(seconds: float) -> List[str]:
    from .ab import run

    return run(seconds)


def overload(seconds: float) -> List[str]:
    from .overload import run

    return run(seconds)


def soak(seconds: float) -> List[str]:
    from .soak import run

    return run(seconds, SOAK_SECONDS)


SOAK_SECONDS = 600.0
SUITES = {
    "ab": ab,
    "core": core,
    "environments": environments,
    "extraction": extraction,
    "pickles": pickles,
    "mlserver-start": mlserver_start,
    "batching": batching,
    "grpc": grpc,
    "overload": overload,
    "soak": soak,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5, help="duration of each wrk run")
    parser.add_argument(
        "--suite", choices=sorted(SUITES), action="append", help="suites to run (default: all but soak)"
    )
    parser.add_argument("--soak-seconds", type=float, default=600, help="duration of the soak suite")
    parser.add_argument("--against", help="the commit the ab suite compares this tree with [HEAD~1]")
    args = parser.parse_args()
    global SOAK_SECONDS
    SOAK_SECONDS = args.soak_seconds
    if args.against:
        os.environ["ENVSERVE_BENCH_AGAINST"] = args.against
    for suite in args.suite or sorted(s for s in SUITES if s not in ("soak", "ab")):
        print("== %s ==" % suite, flush=True)
        for line in SUITES[suite](args.seconds):
            print(line, flush=True)


if __name__ == "__main__":
    main()
