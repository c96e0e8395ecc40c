"""One worker process, seen from the server: how it starts, its link, its state, the calls it holds.

A worker is spawned with the environment's interpreter, connects back to the pool's socket and says
``hello`` with its index; the pool then sends ``load`` and waits for ``loaded``. Its :class:`WorkerState`
decides whether it takes calls; its output is kept (the last lines explain a failed start).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import logging
import os
import signal
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Union

import orjson

from ..logcontext import REQUEST_ID
from ..protocol.v2 import InferenceResponse
from . import ipc
from .link import FrameReader, encode_frame, json_default

__all__ = [
    "PendingCall",
    "WorkerLink",
    "WorkerProcess",
    "WorkerState",
    "exit_text",
    "send_frame",
    "worker_code_dir",
]

logger = logging.getLogger("envserve.workers")

_BOOTSTRAP = "import sys; sys.path.insert(0, %r); from envserve.workers.entry import main; main()"


def worker_code_dir(cache_root: str) -> str:
    """A directory holding only a link to envserve's package, for the worker's ``sys.path``.

    Putting the package's parent directory on the path instead could expose the server's whole
    site-packages (numpy for another Python, ...) to the model's environment. Named by a digest of the
    package's path, so every server run from the same installation shares one.
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256(package.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    code = os.path.join(cache_root, "code", digest)
    link = os.path.join(code, "envserve")
    if os.path.realpath(link) != package:
        os.makedirs(code, exist_ok=True)
        tmp = link + ".%d" % os.getpid()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(package, tmp)
        os.replace(tmp, link)
    return code


def server_dumps(header: Dict[str, Any]) -> bytes:
    """The server side's header encoder: orjson, the same JSON the worker's stdlib json reads."""
    return orjson.dumps(
        header, default=json_default, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    )


def send_frame(link: Optional[WorkerLink], header: Dict[str, Any]) -> None:
    if link is not None:
        link.send(b"".join(encode_frame(header, (), server_dumps)))


class WorkerState(enum.Enum):
    STARTING = "starting"  # spawned, loading the model
    READY = "ready"  # takes calls
    RECYCLING = "recycling"  # over its memory limit: finishes its calls, takes no new ones, then restarts
    STUCK = "stuck"  # a call exceeded the inference timeout: killed, takes nothing more
    DEAD = "dead"  # exited; a new WorkerProcess takes its index


class WorkerLink(asyncio.Protocol):
    """The server's end of one worker's socket: parses frames and hands them on."""

    def __init__(
        self,
        on_frame: Callable[[WorkerLink, Dict[str, Any], bytes], None],
        on_lost: Callable[[WorkerLink], None],
        describe: str,
    ) -> None:
        self.on_frame = on_frame
        self.on_lost = on_lost
        self.describe = describe
        self.reader = FrameReader(orjson.loads)
        self.transport: Optional[asyncio.Transport] = None
        self.worker: Optional[WorkerProcess] = None
        self.outgoing: List[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            for header, body in self.reader.frames():
                self.on_frame(self, header, body)
        except ValueError:
            logger.error("%s: unreadable frame from a worker; closing it", self.describe)
            self.close()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.on_lost(self)

    def send(self, payload: bytes) -> None:
        # Frames written in the same event-loop iteration leave in one write (see entry.Connection).
        if not self.outgoing:
            asyncio.get_running_loop().call_soon(self._flush)
        self.outgoing.append(payload)

    def _flush(self) -> None:
        payload, self.outgoing = self.outgoing, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(payload[0] if len(payload) == 1 else b"".join(payload))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def pause(self) -> None:
        """Stop reading the worker's frames (a stream's consumer is behind); its sends block meanwhile."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


class PendingCall:
    """One call handed to the pool: its encoded frame, its caller's future, its deadline, the worker it
    went to (None while queued), and when it was submitted and sent (wall clock, for the traces).

    A stream's call has ``chunks``: the answers the worker has sent and the consumer not yet taken, then
    its end (None) or its error; its future completes when the worker is done with it."""

    __slots__ = (
        "cancelled",
        "chunks",
        "deadline",
        "depth",
        "future",
        "id",
        "payload",
        "sent",
        "submitted",
        "worker",
    )

    def __init__(
        self,
        call_id: int,
        payload: bytes,
        future: asyncio.Future[InferenceResponse],
        deadline: float,
        stream: bool = False,
    ) -> None:
        self.id = call_id
        self.payload = payload
        self.future = future
        self.deadline = deadline
        self.worker: Optional[WorkerProcess] = None
        self.submitted = time.time()
        self.sent = 0.0
        self.chunks: Optional[asyncio.Queue[Union[InferenceResponse, BaseException, None]]] = (
            asyncio.Queue() if stream else None
        )
        #: a stream whose consumer has gone: its last chunks are dropped
        self.cancelled = False
        #: the calls queued or in flight at the pool when this one came (MLServer's parallel_request_queue)
        self.depth = 0


class WorkerProcess:
    """One worker: its process, link, state, the calls sent to it, its ping."""

    def __init__(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        self.index = index
        self.state = WorkerState.STARTING
        self.proc: Optional[asyncio.subprocess.Process] = None
        self.link: Optional[WorkerLink] = None
        self.connected: asyncio.Future[Dict[str, Any]] = loop.create_future()
        self.handshake: asyncio.Future[Dict[str, Any]] = loop.create_future()
        self.inflight: Dict[int, PendingCall] = {}
        self.ping_sent: Optional[float] = None
        self.started = time.monotonic()
        self.output: Deque[str] = deque(maxlen=40)
        self.info: Dict[str, Any] = {}
        self.pump: Optional[asyncio.Task[Any]] = None

    @property
    def takes_calls(self) -> bool:
        return self.state is WorkerState.READY

    @property
    def streaming(self) -> bool:
        """A stream is running on it: it takes nothing else until the stream is done."""
        return any(c.chunks is not None for c in self.inflight.values())

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    async def spawn(
        self, python: str, code_dir: str, socket_path: str, env: Dict[str, str], cwd: Optional[str]
    ) -> None:
        self.started = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            python,
            "-s",
            "-c",
            _BOOTSTRAP % code_dir,
            "--socket",
            socket_path,
            "--worker",
            str(self.index),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )

    async def pump_output(self, model: str) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        tag = ipc.OUTPUT_TAG
        async for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            rid = ""
            if line.startswith(tag):  # a line written while answering a call: the call's request id
                end = line.find(tag, 1)
                if end > 0:
                    rid, line = line[1:end], line[end + 1 :]
            self.output.append(line)
            token = REQUEST_ID.set(rid)  # the line's own request, not whatever started this task
            logger.info(
                "[%s worker %d] %s", model, self.index, line, extra={"model": model, "worker": self.index}
            )
            REQUEST_ID.reset(token)

    def tail(self) -> str:
        text = "\n".join(list(self.output)[-15:]).strip()
        return ("; its output:\n" + text) if text else ""

    def kill(self) -> None:
        # os.kill, not proc.send_signal: Popen.send_signal polls first, and that poll reaps a worker that
        # has just died, so asyncio's own waiter finds no child and reports exit code 255 instead of the
        # real cause ("killed by SIGKILL"). Until asyncio has reaped it the pid is a zombie, never reused.
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)

    def rss_mb(self) -> float:
        """Resident memory in MiB (0 when it cannot be read)."""
        if self.pid is None:
            return 0.0
        try:
            with open("/proc/%d/statm" % self.pid, encoding="ascii") as f:
                pages = int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            return 0.0
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def exit_text(code: Optional[int]) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return "was killed by %s" % signal.Signals(-code).name
        except ValueError:
            return "was killed by signal %d" % -code
    return "exited with code %d" % code
