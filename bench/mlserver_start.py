"""Suite ``mlserver-start``: the first start from one venv-pack tarball, envserve against MLServer 1.7.1.

The tarball is what MLServer's documentation asks for (an environment with MLServer, its scikit-learn
runtime and the model's libraries: ``requirements/ref-mlserver.txt``, Python 3.11), packed by venv-pack;
both servers serve the digits example (``mlserver_sklearn.SKLearnModel``) from it with an empty cache.
Measured in one run, interleaved, medians of 3:

- the floor, done by hand: GNU ``tar -xzf`` of the tarball, then envserve on what tar wrote (the worker's own
  first start);
- envserve's first start to the model answering ready;
- MLServer 1.7.1's first start to the model answering ready (MLServer itself runs from a venv the bench
  makes from the same lock; its tarball flow needs MLServer inside the environment).

Target (issue 17): envserve <= 1.0x the floor; MLServer is the peer. As in ``extraction``, nothing is deleted
until the end (this machine's disk slows file creation after deletions).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from .harness import OUT, ROOT, ROUNDS, free_port, wait_http

LOCK = ROOT / "requirements" / "ref-mlserver.txt"
PYTHON = "3.11"


def _venv(where: Path) -> Path:
    """A venv of MLServer 1.7.1 from the lock (kept across runs, remade when the lock changes)."""
    stamp = where / ".lock"
    if stamp.exists() and stamp.read_bytes() == LOCK.read_bytes():
        return where
    shutil.rmtree(where, ignore_errors=True)
    uv = Path(sys.executable).parent / "uv"
    for argv in (
        [str(uv), "venv", "-q", "--python", PYTHON, str(where)],
        [str(uv), "pip", "install", "-q", "--python", str(where / "bin" / "python"), "-r", str(LOCK)],
        [str(uv), "pip", "install", "-q", "--python", str(where / "bin" / "python"), "venv-pack>=0.2,<1"],
    ):
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit("making the MLServer venv failed (needs PyPI): %s" % proc.stderr[-2000:])
    stamp.write_bytes(LOCK.read_bytes())
    return where


def _serve_ready(
    argv: List[str], url: str, log: Path, env: Dict[str, str], cwd: Optional[Path] = None
) -> float:
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            cwd=cwd,
            start_new_session=True,
        )
        try:
            wait_http(url, timeout=600, proc=proc)
            return time.monotonic() - started
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _folder(repo: Path, tarball: Optional[Path], environment_path: Optional[Path]) -> Path:
    folder = repo / "mnist-svm"
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "models" / "mnist-svm" / "model.joblib", folder / "model.joblib")
    parameters: Dict[str, str] = {"uri": "./model.joblib"}
    if tarball is not None:
        shutil.copy(tarball, folder / "env.tar.gz")
        parameters["environment_tarball"] = "./env.tar.gz"
    if environment_path is not None:
        parameters["environment_path"] = str(environment_path)
    settings = {
        "name": "mnist-svm",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": parameters,
    }
    (folder / "model-settings.json").write_text(json.dumps(settings))
    return repo


def _envserve(repo: Path, cache: Path, log: Path) -> float:
    port = free_port()
    return _serve_ready(
        [sys.executable, "-m", "envserve", "serve", str(repo), "--http-port", str(port)],
        "http://127.0.0.1:%d/v2/models/mnist-svm/ready" % port,
        log,
        {"ENVSERVE_ENV_CACHE": str(cache), "ENVSERVE_GRPC_PORT": "0"},
    )


def _mlserver(venv: Path, repo: Path, log: Path) -> float:
    http, grpc, metrics = free_port(), free_port(), free_port()
    (repo / "settings.json").write_text(
        json.dumps({"http_port": http, "grpc_port": grpc, "metrics_port": metrics, "parallel_workers": 1})
    )
    return _serve_ready(
        [str(venv / "bin" / "mlserver"), "start", str(repo)],
        "http://127.0.0.1:%d/v2/models/mnist-svm/ready" % http,
        log,
        {"PYTHONNOUSERSITE": "1"},
        cwd=repo,
    )


def run(seconds: float) -> List[str]:
    if not (ROOT / "examples" / "models" / "mnist-svm" / "model.joblib").exists():
        sys.exit("the digits example is missing: run scripts/setup")
    OUT.mkdir(parents=True, exist_ok=True)
    venv = _venv(OUT / "mlserver-venv")
    work = OUT / "mlserver-start"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    tarball = work / "env.tar.gz"
    started = time.monotonic()
    subprocess.run(
        [str(venv / "bin" / "venv-pack"), "-p", str(venv), "-o", str(tarball), "-q"],
        check=True,
        capture_output=True,
    )
    pack_seconds = time.monotonic() - started
    logs = OUT / "mlserver-start-logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    samples: Dict[str, List[float]] = {"tar": [], "start": [], "envserve": [], "mlserver": []}
    os.sync()  # inodes freed before the run stop counting as recent after a minute (bench/extraction.py)
    time.sleep(65)
    for i in range(ROUNDS):
        target = Path(tempfile.mkdtemp(prefix="tar-", dir=work))
        t = time.monotonic()
        subprocess.run(["tar", "-xzf", str(tarball), "-C", str(target)], check=True)
        samples["tar"].append(time.monotonic() - t)
        by_hand = _folder(Path(tempfile.mkdtemp(prefix="by-hand-", dir=work)), None, target)
        cache = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
        samples["start"].append(_envserve(by_hand, cache, logs / ("by-hand-%d.log" % i)))
        repo = _folder(Path(tempfile.mkdtemp(prefix="envserve-", dir=work)), tarball, None)
        cache = Path(tempfile.mkdtemp(prefix="cache-", dir=work))
        samples["envserve"].append(_envserve(repo, cache, logs / ("envserve-%d.log" % i)))
        repo = _folder(Path(tempfile.mkdtemp(prefix="mlserver-", dir=work)), tarball, None)
        samples["mlserver"].append(_mlserver(venv, repo, logs / ("mlserver-%d.log" % i)))
        print(
            "round %d: tar -xzf %.2f s + start on it %.2f s, envserve first start %.2f s, "
            "MLServer 1.7.1 %.2f s"
            % tuple([i + 1] + [samples[k][-1] for k in ("tar", "start", "envserve", "mlserver")]),
            flush=True,
        )
    size = tarball.stat().st_size / 2**20
    shutil.rmtree(work, ignore_errors=True)
    m = {k: statistics.median(v) for k, v in samples.items()}
    floor = m["tar"] + m["start"]
    ratio = m["envserve"] / floor
    return [
        "",
        "first start from one venv-pack tarball of MLServer 1.7.1 + scikit-learn "
        "(%.0f MiB, packed in %.1f s), "
        "medians of %d interleaved rounds:" % (size, pack_seconds, ROUNDS),
        "  by hand: tar -xzf %.2f s + envserve on what tar wrote %.2f s = floor %.2f s"
        % (m["tar"], m["start"], floor),
        "  envserve first start %.2f s = %.2fx the floor (target <= 1.00x: %s)"
        % (m["envserve"], ratio, "PASS" if ratio <= 1.0 else "FAIL"),
        "  MLServer 1.7.1 first start %.2f s = %.2fx the floor; envserve takes %.2fx MLServer's time"
        % (m["mlserver"], m["mlserver"] / floor, m["envserve"] / m["mlserver"]),
    ]
