"""The worker process: runs one model inside its own environment and answers the server over a socket.

Started by the server with the *environment's* interpreter, roughly as::

    <env>/bin/python -s -c "import sys; sys.path.insert(0, '<envserve code dir>'); \
        from envserve.workers.entry import main; main()" --socket <path> --worker <n>

so nothing of envserve is installed in the environment. This module is the worker's entry point and
may change process state (signals, ``sys.path``); its import closure is the standard library, numpy,
envserve's protocol/codecs/settings/runtimes/ipc modules and the model's own framework, on Python 3.6+.

One thread does all the work, in order: read a frame, answer it, repeat. The server sends pings only
while the worker is idle (a busy worker is bounded by the inference timeout instead), so no second
thread has to share the GIL on the hot path. The worker exits when the socket closes, when its parent
dies (PR_SET_PDEATHSIG on Linux, plus a parent-pid watchdog), or on ``stop``.
"""

import argparse
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

from ..errors import EnvserveError
from . import ipc
from .ipc import Op
from .link import FrameReader, encode_frame


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
    """Framed messages over a stream socket.

    Replies are batched: :meth:`send` only queues a frame, and the queue is flushed with one ``sendmsg``
    when no further complete request is waiting in the receive buffer. When the server has pipelined
    several calls, their answers leave together (fewer syscalls and wake-ups per call, which is what a
    worker sharing a core with the server pays most for); a lone call is answered at once. Frames read
    while a stream runs that are not the stream's wait in ``backlog``, in order, for the main loop.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = FrameReader()
        self.backlog: Deque[Tuple[Dict[str, Any], Any]] = deque()
        self.outgoing: List[Any] = []

    def send(self, pieces: List[Any]) -> None:
        self.outgoing.extend(pieces)

    def flush(self) -> None:
        views = [memoryview(p).cast("B") for p in self.outgoing]
        self.outgoing = []
        while views:
            sent = self.sock.sendmsg(views)
            while views and sent >= views[0].nbytes:
                sent -= views[0].nbytes
                views.pop(0)
            if views and sent:
                views[0] = views[0][sent:]

    def read(self, block: bool = True) -> bool:
        """Read what the socket holds into ``backlog``; without ``block``, False when it holds nothing."""
        try:
            data = self.sock.recv(1 << 16) if block else self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        if not data:
            raise EOFError("server closed the connection")
        self.reader.feed(data)
        self.backlog.extend(self.reader.frames())
        return True

    def receive(self) -> Tuple[Dict[str, Any], Any]:
        while not self.backlog:
            if self.outgoing:
                self.flush()  # nothing else to answer first: the queued replies go now
            self.read()
        return self.backlog.popleft()

    def take(self, call_id: Any, ops: Tuple[str, ...], block: bool) -> Optional[Tuple[Dict[str, Any], Any]]:
        """The first frame of the call ``call_id`` with one of ``ops``, taken out of the backlog (reading
        the socket, blocking or not, until one is there); the others stay where they are."""
        while True:
            for i, (header, body) in enumerate(self.backlog):
                if header.get("id") == call_id and header.get("op") in ops:
                    del self.backlog[i]
                    return header, body
            if not self.read(block):
                return None


class _Tagged:
    """The worker's sys.stdout / sys.stderr: each line begun while a call is answered starts with that
    call's request id between :data:`ipc.OUTPUT_TAG` marks (the server puts the id on its log line)."""

    current = ""  # the request id of the call being answered ("" between calls)

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._line_start = True

    def write(self, text: str) -> int:
        rid = _Tagged.current
        if not text:
            return 0
        if not rid:
            self._line_start = text.endswith("\n")
            self._stream.write(text)
            return len(text)
        pieces = []
        for piece in text.splitlines(True):
            if self._line_start:
                pieces.append(ipc.OUTPUT_TAG + rid + ipc.OUTPUT_TAG)
            pieces.append(piece)
            self._line_start = piece.endswith("\n")
        self._stream.write("".join(pieces))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _load(header: Dict[str, Any]) -> Any:
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


def _model_error(exc: BaseException, runtime: Any) -> Dict[str, Any]:
    doc = ipc.error_to_wire(exc)
    if not isinstance(exc, EnvserveError):
        name = getattr(getattr(runtime, "settings", None), "name", "?")
        doc["error"] = "model %r raised %s" % (name, doc["error"])
    return doc


class _Cancelled(Exception):
    """The client of a stream has left: the model's generator stops."""


class _StreamRequests:
    """The requests of one stream as the runtime iterates them: the first, then those the server sends
    as they come (blocking until one does), until the client's end; a cancel stops the stream."""

    def __init__(self, conn: Connection, call_id: Any, first: Any) -> None:
        self.conn = conn
        self.call_id = call_id
        self.first: Any = first
        self.ended = False
        self.cancelled = False

    def __iter__(self) -> "_StreamRequests":
        return self

    def __next__(self) -> Any:
        if self.first is not None:
            first, self.first = self.first, None
            return first
        if self.ended:
            raise StopIteration
        found = self.conn.take(self.call_id, (Op.MORE, Op.END, Op.CANCEL), block=True)
        assert found is not None
        header, body = found
        if header["op"] == Op.MORE:
            return ipc.decode_request(header, body)
        self.ended = True
        if header["op"] == Op.CANCEL:
            self.cancelled = True
            raise _Cancelled()
        raise StopIteration

    def cancel_arrived(self) -> bool:
        """Whether the server has cancelled the stream (looked for without waiting)."""
        if not self.cancelled and self.conn.take(self.call_id, (Op.CANCEL,), block=False) is not None:
            self.cancelled = True
        return self.cancelled


def _stream(conn: Connection, runtime: Any, header: Dict[str, Any], body: Any) -> None:
    """Answer a stream chunk by chunk, each sent at once; stop when the server cancels it."""
    call_id = header["id"]
    requests = _StreamRequests(conn, call_id, ipc.decode_request(header, body))
    chunks = None
    try:
        chunks = runtime.infer_stream(requests)
        for response in chunks:
            conn.send(ipc.encode_response(call_id, response, Op.CHUNK))
            conn.flush()
            if requests.cancel_arrived():
                break
        frame = encode_frame({"op": Op.DONE, "id": call_id})
    except (KeyboardInterrupt, SystemExit):
        raise
    except _Cancelled:
        frame = encode_frame({"op": Op.DONE, "id": call_id})
    except BaseException as exc:
        frame = encode_frame(dict({"op": Op.ERROR, "id": call_id}, **_model_error(exc, runtime)))
    finally:
        if chunks is not None:
            with contextlib.suppress(Exception):
                chunks.close()
    conn.send(frame)
    conn.flush()


def serve(conn: Connection, worker: int) -> int:
    conn.send(
        encode_frame(
            {
                "op": Op.HELLO,
                "pid": os.getpid(),
                "worker": worker,
                "python": "%d.%d.%d" % sys.version_info[:3],
                "prefix": sys.prefix,
                "executable": sys.executable,
            }
        )
    )
    conn.flush()
    header, _ = conn.receive()
    if header.get("op") != Op.LOAD:
        return 2
    try:
        runtime = _load(header)
    except BaseException as exc:
        conn.send(encode_frame(dict({"op": Op.LOADED, "ok": False}, **ipc.error_to_wire(exc))))
        conn.flush()
        return 1
    conn.send(
        encode_frame(
            {
                "op": Op.LOADED,
                "ok": True,
                "metadata": runtime.metadata(),
                "capabilities": runtime.capabilities(),
                "runtime": type(runtime).__name__,
            }
        )
    )
    conn.flush()
    while True:
        try:
            header, body = conn.receive()
        except (EOFError, OSError):
            break
        op = header.get("op")
        if op == Op.INFER:
            call_id = header["id"]
            _Tagged.current = str(header.get("rid") or "")
            try:
                request = ipc.decode_request(header, body)
                started = time.time()
                response = runtime.infer(request)
                response.report.timings["predict"] = [started, time.time()]
                frame = ipc.encode_response(call_id, response)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                frame = encode_frame(dict({"op": Op.ERROR, "id": call_id}, **_model_error(exc, runtime)))
            _Tagged.current = ""
            conn.send(frame)
        elif op == Op.STREAM:
            _Tagged.current = str(header.get("rid") or "")
            _stream(conn, runtime, header, body)
            _Tagged.current = ""
        elif op == Op.PING:
            conn.send(encode_frame({"op": Op.PONG, "id": header.get("id")}))
        elif op == Op.STOP:
            break
    conn.flush()
    with contextlib.suppress(Exception):
        runtime.unload()
    return 0


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="envserve-worker")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--worker", type=int, default=0)
    args = parser.parse_args(argv)
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    sys.stdout = _Tagged(sys.stdout)
    sys.stderr = _Tagged(sys.stderr)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(args.socket)
    code = serve(Connection(sock), args.worker)
    sock.close()
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
