"""The worker process: runs one model inside its own environment and answers the server over a socket.

Started by the server with the *environment's* interpreter, roughly as::

    <env>/bin/python -s -c "import sys; sys.path.insert(0, '<envserve code dir>'); \
        from envserve.workers.entry import main; main()" --socket <path> --worker <n>

so nothing of envserve is installed in the environment. This module is the worker's entry point and
may change process state (signals, ``sys.path``); its import closure is the standard library, numpy,
envserve's protocol/codecs/settings/runtimes/ipc modules and the model's own framework, on Python 3.8+.

Threads: a reader thread receives frames, answers pings at once (so liveness does not depend on how long
``predict`` takes) and queues inference calls for the main thread, which runs them one at a time. The
worker exits when the socket closes, when its parent dies (PR_SET_PDEATHSIG on Linux, and a parent-pid
watchdog elsewhere), or on ``stop``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

try:  # queue.SimpleQueue exists on 3.7+
    from queue import SimpleQueue
except ImportError:  # pragma: no cover
    from queue import Queue as SimpleQueue  # type: ignore[assignment]

from ..errors import EnvserveError
from . import ipc

_STOP = object()


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except Exception:
            pass
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


class Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()

    def send(self, pieces: List[Any]) -> None:
        with self._send_lock:
            for piece in pieces:
                self.sock.sendall(piece)

    def _read_exact(self, n: int) -> bytearray:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise EOFError("server closed the connection")
            got += k
        return buf

    def receive(self) -> Tuple[Dict[str, Any], bytearray]:
        head_len, body_len = ipc.split_prefix(bytes(self._read_exact(ipc.PREFIX.size)))
        header = json.loads(self._read_exact(head_len).decode("utf-8"))
        body = self._read_exact(body_len) if body_len else bytearray()
        return header, body


def _load(conn: Connection, header: Dict[str, Any]) -> Any:
    from ..runtimes import create_runtime
    from ..settings.model import ModelSettings

    settings = ModelSettings.from_dict(
        header["settings"], folder=header.get("folder"), source=header.get("source")
    )
    if settings.folder and settings.folder not in sys.path:
        sys.path.insert(0, settings.folder)  # users' runtime modules import their siblings
    runtime = create_runtime(settings)
    runtime.load()
    return runtime


def _reader(conn: Connection, calls: SimpleQueue[Any]) -> None:
    try:
        while True:
            header, body = conn.receive()
            op = header.get("op")
            if op == "ping":
                conn.send(ipc.encode_frame({"op": "pong", "id": header.get("id")}))
            elif op == "infer":
                calls.put((header, body))
            elif op == "stop":
                break
    except (EOFError, OSError):
        pass
    calls.put(_STOP)


def serve(conn: Connection, worker: int) -> int:
    conn.send(
        ipc.encode_frame(
            {
                "op": "hello",
                "pid": os.getpid(),
                "worker": worker,
                "python": "%d.%d.%d" % sys.version_info[:3],
                "prefix": sys.prefix,
                "executable": sys.executable,
            }
        )
    )
    header, _ = conn.receive()
    if header.get("op") != "load":
        return 2
    try:
        runtime = _load(conn, header)
    except BaseException as exc:
        conn.send(ipc.encode_frame(dict({"op": "loaded", "ok": False}, **ipc.error_to_wire(exc))))
        return 1
    conn.send(
        ipc.encode_frame(
            {"op": "loaded", "ok": True, "metadata": runtime.metadata(), "runtime": type(runtime).__name__}
        )
    )
    calls: SimpleQueue[Any] = SimpleQueue()
    threading.Thread(target=_reader, args=(conn, calls), name="ipc-reader", daemon=True).start()
    while True:
        item = calls.get()
        if item is _STOP:
            break
        header, body = item
        call_id = header["id"]
        try:
            request = ipc.decode_request(header, body)
            frame = ipc.encode_response(call_id, runtime.infer(request))
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            frame = ipc.encode_frame(dict({"op": "error", "id": call_id}, **_model_error(exc, runtime)))
        conn.send(frame)
    with contextlib.suppress(Exception):
        runtime.unload()
    return 0


def _model_error(exc: BaseException, runtime: Any) -> Dict[str, Any]:
    doc = ipc.error_to_wire(exc)
    if not isinstance(exc, EnvserveError):
        name = getattr(getattr(runtime, "settings", None), "name", "?")
        doc["error"] = "model %r raised %s" % (name, doc["error"])
    return doc


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="envserve-worker")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--worker", type=int, default=0)
    args = parser.parse_args(argv)
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(args.socket)
    code = serve(Connection(sock), args.worker)
    sock.close()
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
