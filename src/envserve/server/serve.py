"""Running the server: bind, start answering (live), load the repository (ready), drain on a signal.

Lifecycle (docs/lifecycle.md):

1. bind the HTTP socket (a clear error if the port is taken) and start serving: ``/v2/health/live`` is
   true at once, ``/v2/health/ready`` is false;
2. load every model of the repository concurrently; failures are recorded per model;
3. ready turns true;
4. on SIGTERM or SIGINT: ready turns false, the listening socket closes, in-flight requests get up to
   ``graceful_timeout`` seconds to finish, models are unloaded (their workers stopped), exit code 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional

import uvicorn

from ..environments.cache import EnvironmentCache
from ..errors import SettingsError
from ..settings.server import ServerSettings
from .call import Calls
from .dataplane import DataPlane
from .logs import announce
from .metrics import Metrics
from .mlserver_metrics import MLServerMetrics
from .placement import Placement
from .registry import ModelRegistry
from .rest.app import MetricsApp, RestApp, route_taken
from .rest.edge import EdgeLimits, edge_protocol
from .tracing import NO_TRACING, Tracer

if TYPE_CHECKING:  # gRPC is optional (envserve[grpc]); imported when it starts
    from .grpc.transport import GrpcServer

__all__ = ["Server", "serve"]

logger = logging.getLogger("envserve")


class _UvicornServer(uvicorn.Server):
    # envserve installs its own signal handlers (readiness must turn false before draining) and exits
    # 0 after a graceful stop, so uvicorn must neither capture nor re-raise signals.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SettingsError(
            "cannot listen on %s:%d: %s; choose another port with --http-port or ENVSERVE_HTTP_PORT"
            % (host, port, exc.strerror or exc)
        ) from None
    sock.set_inheritable(True)
    return sock


class Server:
    """One envserve server: its parts, each built here with what it needs, and their lifecycle."""

    def __init__(self, settings: ServerSettings, environments: Optional[EnvironmentCache] = None) -> None:
        self.settings = settings
        environments = environments or EnvironmentCache(settings.environments_dir or None)
        self.tracer: Tracer = NO_TRACING
        if settings.tracing_endpoint:
            from .tracing import Tracing

            self.tracer = Tracing(settings.tracing_endpoint, settings.server_name)
        self.registry = ModelRegistry(
            settings, Placement(settings, environments), route_taken(console=settings.console)
        )
        mlserver = MLServerMetrics(settings.metrics_rest_server_prefix) if settings.mlserver_metrics else None
        self.metrics = Metrics(self.registry, mlserver)
        self.dataplane = DataPlane(self.registry, self.metrics)
        self.calls = Calls(self.tracer, settings.access_log, mlserver)
        console = None
        if settings.console:
            from .console import ConsoleAPI, check_console_settings

            check_console_settings(settings.host, settings.admin_token)
            console = ConsoleAPI(self.dataplane, self.metrics, environments)
        self.app = RestApp(
            self.dataplane,
            self.calls,
            settings.max_request_size,
            self.metrics,
            settings.admin_token,
            [o.strip() for o in settings.cors_origins.split(",") if o.strip()],
            console,
            settings.max_connections,
            settings.browser_hosts(),
            settings.admin_open,
        )
        self._http: Optional[_UvicornServer] = None
        self._metrics_task: Optional[asyncio.Task[None]] = None
        self.http_address: Optional[str] = None
        self.grpc_address: Optional[str] = None

    def request_shutdown(self) -> None:
        """Begin a graceful stop: readiness false first, then stop accepting and drain."""
        if not self.dataplane.draining:
            logger.info("shutting down: readiness is now false; draining in-flight requests")
        self.dataplane.draining = True
        if self._http is not None:
            if self._http.should_exit:
                self._http.force_exit = True
            self._http.should_exit = True

    async def _start_grpc(self) -> Optional[GrpcServer]:
        s = self.settings
        if s.grpc_port < 0:
            logger.info("gRPC is off (grpc_port -1)")
            return None
        try:
            from .grpc.service import start_grpc_server
            from .grpc.transport import Limits
        except ImportError as exc:
            logger.warning("gRPC is off: %s (pip install 'envserve[grpc]')", exc)
            return None
        limits = Limits(
            max_message=s.grpc_max_message_length or s.max_request_size,
            max_connections=s.max_connections or 2**31,
            idle_timeout=s.grpc_idle_timeout,
            stall_timeout=s.body_timeout,
        )
        server, port = await start_grpc_server(
            self.dataplane,
            self.calls,
            s.host,
            s.grpc_port,
            limits,
            s.admin_token,
            s.grpc_reflection,
            s.admin_open,
        )
        shown = "[%s]" % s.host if ":" in s.host else s.host
        self.grpc_address = "%s:%d" % (shown, port)
        logger.info(
            "listening on %s (gRPC, inference.GRPCInferenceService%s)",
            self.grpc_address,
            ", server reflection" if s.grpc_reflection else "",
        )
        return server

    async def _load_at_startup(self) -> None:
        if not self.settings.load_models_at_startup:
            logger.info("load_models_at_startup is false: models load when the repository API asks")
            return
        try:
            await self.registry.load_repository()
        except SettingsError as exc:
            logger.error("%s", exc)

    async def _serve_metrics(self, host: str, port: int) -> _UvicornServer:
        sock = _bind(host, port)
        config = uvicorn.Config(
            MetricsApp(self.metrics, self.settings.metrics_endpoint),
            http="httptools",
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
        )
        server = _UvicornServer(config)
        self._metrics_task = asyncio.ensure_future(server.serve(sockets=[sock]))
        real = sock.getsockname()[1]
        logger.info("metrics on http://%s:%d%s", host, real, self.settings.metrics_endpoint)
        return server

    async def run(self, on_ready: Optional[Callable[[Server], Any]] = None) -> None:
        s = self.settings
        sock = _bind(s.host, s.http_port)
        host, port = sock.getsockname()[:2]
        shown = "[%s]" % host if ":" in host else host
        self.http_address = "http://%s:%d" % (shown, port)
        limits = EdgeLimits(
            s.head_timeout,
            s.body_timeout,
            s.max_head_bytes,
            s.max_requests_per_connection,
            4 * s.max_connections if s.max_connections else 0,
        )
        config = uvicorn.Config(
            self.app,
            http=edge_protocol(limits),
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_graceful_shutdown=int(s.graceful_timeout) if s.graceful_timeout else None,
            timeout_keep_alive=30,
            # the app sheds requests beyond max_connections with 503 + Retry-After (never probes); the
            # edge protocol bounds slow and oversized connections and, beyond 4x max_connections open,
            # serves probes only (uvicorn's limit_concurrency would 503 probes too)
            limit_concurrency=None,
            # envserve reads no client address (no access log, no per-client rules), so uvicorn's
            # X-Forwarded-* rewriting would be pure per-request cost (~1-2% of single-row throughput)
            proxy_headers=False,
        )
        self._http = _UvicornServer(config)
        serving = asyncio.ensure_future(self._http.serve(sockets=[sock]))
        while not self._http.started and not serving.done():
            await asyncio.sleep(0.01)
        if serving.done():
            serving.result()
            return
        logger.info("listening on %s (REST, Open Inference Protocol V2)", self.http_address)
        if s.console:
            logger.info("console on %s/console/", self.http_address)
        extra = []
        grpc_server = await self._start_grpc()
        if s.metrics_port:
            extra.append(await self._serve_metrics(s.host, s.metrics_port))
        await self._load_at_startup()
        self.dataplane.started = True
        for row in self.registry.index():
            label = row["name"] + ("@" + row["version"] if row.get("version") else "")
            if row["state"] == "READY":
                logger.info("model %s READY", label)
            else:
                logger.warning("model %s %s: %s", label, row["state"], row["reason"])
        logger.info(
            "server ready: %d of %d models READY",
            sum(r["state"] == "READY" for r in self.registry.index()),
            len(self.registry.index()),
        )
        if on_ready is not None:
            on_ready(self)
        try:
            await serving
        finally:
            for server in extra:
                server.should_exit = True
            if grpc_server is not None:
                await grpc_server.stop(s.graceful_timeout)
            self.dataplane.draining = True
            await self.registry.close()
            sock.close()
            self.tracer.shutdown()  # export the spans still pending
            logger.info("stopped")


@contextlib.contextmanager
def _signals(loop: asyncio.AbstractEventLoop, server: Server) -> Iterator[None]:
    handled: List[int] = [signal.SIGTERM, signal.SIGINT]
    for sig in handled:
        loop.add_signal_handler(sig, server.request_shutdown)
    try:
        yield
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


async def _main(server: Server, install_signal_handlers: bool) -> None:
    if install_signal_handlers:
        with _signals(asyncio.get_running_loop(), server):
            await server.run()
    else:
        await server.run()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a core dependency on Linux/macOS
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def serve(
    settings: ServerSettings,
    install_signal_handlers: bool = True,
    environments: Optional[EnvironmentCache] = None,
    announced: bool = False,
) -> None:
    """Run a server until SIGTERM/SIGINT (an entry point: it owns the event loop and the signals).
    ``environments``: the environment cache, if the caller made it first (``envserve serve`` does, to begin
    extracting the repository's tarballs before importing this module); ``announced``: the caller logged
    the first line (:func:`.logs.announce`)."""
    if not announced:
        announce(settings)
    server = Server(settings, environments)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_main(server, install_signal_handlers))
    else:  # pragma: no cover
        loop = _loop_factory()()
        try:
            loop.run_until_complete(_main(server, install_signal_handlers))
        finally:
            loop.close()
