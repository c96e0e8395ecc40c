"""Runs the commands of docs/from-mlserver.md as written, in a folder the caller prepared.

A block after ``<!-- run -->`` runs with bash (``-e``: any failing command fails the test) and must exit
0; one after ``<!-- run: background -->`` is started and waited for (the next background block, or the
end, stops it). Blocks whose marker has another kind (``podman``, ``mlflow``, ``mlflow-background``) are
run by the tests that have what they need, through :func:`run_blocks` with that kind. The only change:
ports 8080 and 5000 become free ones (``localhost:PORT``, ``--port PORT``, ``-C port=PORT``, the server
side of ``-p PORT:...``), and ``ENVSERVE_HTTP_PORT`` is set to the first for servers started without one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import httpx

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "from-mlserver.md"
_BLOCK = re.compile(r"<!-- run(?:: (?P<kind>[\w-]+))? -->\n```sh\n(?P<body>.*?)```", re.S)


def blocks(kinds: Tuple[str, ...]) -> List[Tuple[str, str]]:
    """(kind, commands) of the doc's blocks of these kinds, in order (``""``: plain run blocks)."""
    found = [(m["kind"] or "", m["body"]) for m in _BLOCK.finditer(DOC.read_text())]
    return [(kind, body) for kind, body in found if kind in kinds]


def _ported(text: str, ports: Dict[str, int]) -> str:
    for doc_port, port in ports.items():
        text = text.replace("localhost:%s" % doc_port, "localhost:%d" % port)
        text = re.sub(r"(?<![:\w])%s\b" % doc_port, str(port), text)
    return text


def run_blocks(folder: Path, kinds: Tuple[str, ...], env: Optional[Dict[str, str]] = None) -> List[str]:
    """Run the doc's blocks of ``kinds`` in ``folder``; return what each plain block printed."""
    ports = {"8080": free_port(), "5000": free_port()}
    environ = dict(os.environ, **(env or {}))
    # the commands of the environment running the tests (envserve, mlflow), as an activated venv has them
    environ["PATH"] = "%s:%s" % (os.path.dirname(sys.executable), environ.get("PATH", ""))
    environ["ENVSERVE_HTTP_PORT"] = str(ports["8080"])
    environ["ENVSERVE_GRPC_PORT"] = "0"
    background: Optional[subprocess.Popen] = None
    log = folder / "background.log"
    printed = []
    try:
        for kind, body in blocks(kinds):
            script = _ported(body, ports)
            if kind.endswith("background"):
                _stop(background)
                with open(log, "w") as out:  # the child has its own copy of the descriptor
                    background = subprocess.Popen(
                        ["bash", "-c", "exec " + script.strip()],
                        cwd=folder,
                        env=environ,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                port = ports["5000"] if "5000" in body or "mlflow" in kind else ports["8080"]
                _wait_ready(port, background, log)
                continue
            done = subprocess.run(
                ["bash", "-e", "-c", script],
                cwd=folder,
                env=environ,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, "docs/from-mlserver.md block failed:\n%s\n%s\n%s" % (
                script,
                done.stdout[-3000:],
                done.stderr[-3000:],
            )
            printed.append(done.stdout)
    finally:
        _stop(background)
    return printed


def _wait_ready(port: int, proc: subprocess.Popen, log: Path, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited:\n%s" % log.read_text()[-4000:]
        try:
            if httpx.get("http://127.0.0.1:%d/v2/health/ready" % port, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("not ready in %ds:\n%s" % (seconds, log.read_text()[-4000:]))


def _stop(proc: Optional[subprocess.Popen]) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
