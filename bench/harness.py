"""Benchmark plumbing: free ports, CPU pinning, starting servers, running wrk and parsing its report."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SERVER_CPU = "0"
LOAD_CPU = "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: str, argv: List[str]) -> List[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", cpu, *argv]
    return argv


def wait_http(url: str, timeout: float = 120.0, proc: Optional[subprocess.Popen] = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("server exited with %s before %s answered" % (proc.returncode, url))
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("%s did not answer 200 within %ss" % (url, timeout))


class Process:
    """A server subprocess pinned to the server CPU; stopped with SIGTERM on exit."""

    def __init__(self, argv: List[str], ready_url: str, log: Path, env: Optional[dict] = None) -> None:
        self.log = log
        self.url = ready_url
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            pinned(SERVER_CPU, argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ENVSERVE_GRPC_PORT": "0", **(env or {})},
        )
        try:
            wait_http(ready_url, proc=self.proc)
        except Exception:
            self.stop()
            raise RuntimeError("see %s:\n%s" % (log, log.read_text()[-3000:])) from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> Process:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def envserve(repo: Path, log: Path, env: Optional[dict] = None) -> Process:
    """``envserve serve REPO`` on a free port, pinned to the server CPU; ``.url`` is its base URL."""
    port = free_port()
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
        log,
        env,
    )
    proc.url = "http://127.0.0.1:%d" % port
    return proc


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int

    def row(self) -> str:
        return "%9.0f req/s  p50 %7.2f ms  p99 %7.2f ms" % (self.rps, self.p50_ms, self.p99_ms)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError("cannot parse wrk latency %r" % text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        sys.exit("wrk is not installed: apt-get install wrk (scripts/bench does this)")
    return path


def run_wrk(url: str, body_file: Path, connections: int, seconds: float) -> WrkResult:
    script = body_file.with_suffix(".lua")
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        'local f = io.open("%s", "rb")\nwrk.body = f:read("*a")\nf:close()\n' % body_file
    )
    threads = max(1, min(connections, 2))
    argv = pinned(
        LOAD_CPU,
        [
            require_wrk(),
            "-t%d" % threads,
            "-c%d" % connections,
            "-d%ds" % seconds,
            "--latency",
            "--timeout",
            "30s",
            "-s",
            str(script),
            url,
        ],
    )
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> WrkResult:
    """Throughput, latency percentiles, request and error counts from wrk's report (with --latency)."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(g) for g in m.groups())
    return WrkResult(rps, p50, p99, requests, errors)


ROUNDS = 3
#: Pause after each measurement: when wrk stops, the server still owes answers to the requests it had read
#: (up to 64 x 2.3 ms for 100-row bodies, seconds for the unluckiest without batching); that backlog must
#: not be charged to the next measurement.
SETTLE = 1.0


def paired(
    label: str, measure_a: Callable[[], float], measure_b: Callable[[], float], rounds: int = ROUNDS
) -> float:
    """The median of ``rounds`` ratios b/a, each from a pair of measurements taken back to back
    (a, b, a, b, ...): drift of the machine during a suite then hits both sides of a pair alike, where
    a ratio of two measurements taken minutes apart carries all of it. Prints every pair."""
    ratios = []
    for i in range(rounds):
        a = measure_a()
        time.sleep(SETTLE)
        b = measure_b()
        time.sleep(SETTLE)
        ratios.append(b / a)
        print("  %s, pair %d: %.1f vs %.1f -> %.3fx" % (label, i + 1, a, b, b / a), flush=True)
    return sorted(ratios)[len(ratios) // 2]
