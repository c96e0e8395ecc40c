"""Shared fixtures: the example repository, the digits data, and a real envserve on a loopback port."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

#: The test runtimes (envserve custom runtimes), copied into a model folder as ``runtimes.py``.
CUSTOM = ROOT / "tests" / "fixtures" / "custom" / "runtimes.py"

#: The tests that use the MLflow tracking server (``registered_digits``), kept on one of the suite's two
#: processes, which then starts it once.
MLFLOW_SERVER_GROUP = pytest.mark.xdist_group("mlflow-server")


def pytest_runtest_setup(item):
    """Under ``--dist loadgroup`` (scripts/test), pytest-xdist marks a grouped test by suffixing its node id
    with ``@group`` in each worker; when that stops working (it did with pytest 9.2: pytest-xdist#1386),
    the podman modules silently run on both processes at once, building images twice. Fail them instead."""
    grouped = getattr(item.config.option, "loadgroup", False) and item.get_closest_marker("xdist_group")
    if grouped and "@" not in item.nodeid:
        pytest.fail(
            "pytest-xdist's loadgroup did not group this test: this pytest and pytest-xdist do not work "
            "together; see the bound on pytest in pyproject.toml",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def digits():
    from sklearn import datasets

    d = datasets.load_digits()
    return d.images.reshape((len(d.images), -1)), d.target


@pytest.fixture(scope="session")
def digits_model_file(tmp_path_factory) -> Path:
    """The example SVC trained by examples/train_digits.py, once per session."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import train_digits
    finally:
        sys.path.remove(str(EXAMPLES))
    return Path(train_digits.train(str(tmp_path_factory.mktemp("digits"))))


def write_model(repo: Path, folder: str, settings: dict, artifact: Optional[Path] = None) -> Path:
    path = repo / folder
    path.mkdir(parents=True, exist_ok=True)
    (path / "model-settings.json").write_text(json.dumps(settings))
    if artifact is not None:
        shutil.copy(artifact, path / artifact.name)
    return path


def custom_model(repo: Path, name: str, cls: str, settings: Optional[dict] = None, **parameters) -> Path:
    """A model folder served by the test runtime ``cls`` of tests/fixtures/custom/runtimes.py: every test
    that needs a model of its own behaviour makes it here. ``parameters`` go to ``parameters`` (``extra``
    among them), ``settings`` adds top-level fields (``max_batch_size``, ...)."""
    doc = {"name": name, "implementation": "runtimes." + cls, **(settings or {})}
    if parameters:
        doc["parameters"] = parameters
    folder = write_model(repo, name, doc)
    shutil.copy(CUSTOM, folder / "runtimes.py")
    return folder


#: What every server the suite starts is given unless a test says otherwise.
SUITE_ENV = {"ENVSERVE_TRUST_MODEL_CODE": "true"}


class ServerProcess:
    """``envserve serve`` in a subprocess on an OS-assigned loopback port; its log is kept for asserts."""

    def __init__(self, repo: Optional[Path], args: List[str], env: Optional[dict] = None) -> None:
        """``repo`` None: ``envserve serve`` with no arguments at all, as a container is started (the
        environment then says everything)."""
        cmd = [sys.executable, "-m", "envserve", "serve"]
        if repo is not None:
            cmd += [str(repo), "--http-port", "0", "--grpc-port", "0", *args]
        # the suite's servers run model code (most tests serve runtime classes of their own): the
        # default, refusing it, is what test_model_code.py checks; ``env`` values None unset a variable
        merged = {**SUITE_ENV, **os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={k: v for k, v in merged.items() if v is not None},
        )
        self.lines: List[str] = []
        grpc_port = cmd[cmd.index("--grpc-port") + 1] if "--grpc-port" in cmd else None
        self._grpc_wanted = grpc_port not in ("-1",) and (env or {}).get("ENVSERVE_GRPC_PORT") != "-1"
        self.url: Optional[str] = None
        self.grpc_address: Optional[str] = None
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1).replace("0.0.0.0", "127.0.0.1")
                self._listening.set()
            m = re.search(r"listening on (\S+) \(gRPC", line)
            if m:
                self.grpc_address = m.group(1)
        self.proc.stdout.close()
        self._listening.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 60.0) -> ServerProcess:
        if not self._listening.wait(timeout) or self.url is None:
            raise AssertionError("server did not start listening:\n" + self.log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("server exited with %s:\n%s" % (self.proc.returncode, self.log))
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=2).status_code == 200 and (
                    self.grpc_address is not None or not self._grpc_wanted or "gRPC is off" in self.log
                ):  # the gRPC line can come after readiness; a test may use the address at once
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("server not ready after %ss:\n%s" % (timeout, self.log))

    def client(self) -> httpx.Client:
        assert self.url is not None
        return httpx.Client(base_url=self.url, timeout=30)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("server did not stop within %ss:\n%s" % (timeout, self.log)) from None
        self._reader.join(5)
        return self.proc.returncode


@pytest.fixture
def start_server() -> Iterator:
    """Factory: ``start_server(repo, *args)`` -> a ready ServerProcess, stopped at teardown."""
    started: List[ServerProcess] = []

    def start(repo: Path, *args: str, env: Optional[dict] = None, wait: bool = True) -> ServerProcess:
        server = ServerProcess(repo, list(args), env)
        started.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in started:  # a graceful stop: its coverage data is written (make test measures it)
        # one that does not stop in time is killed; the test has already reported what it found
        with contextlib.suppress(AssertionError):
            server.stop(signal.SIGTERM, timeout=60)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (SQLite backend, local artifact root) on a free loopback port."""
    import socket

    root = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    assert mlflow_cli.exists(), "mlflow is a dev dependency: run scripts/setup"
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [
            str(mlflow_cli),
            "server",
            "--backend-store-uri",
            "sqlite:///%s" % (root / "mlflow.db"),
            "--default-artifact-root",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # MLflow 3's job runner starts eight huey consumers that poll all the time (~80% of a core on
        # these machines, for the whole session); the registry tests need none of it
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = "http://127.0.0.1:%d" % port
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    "mlflow server did not start:\n" + (root / "server.log").read_text()[-3000:]
                )
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def registered_digits(mlflow_server, digits):
    """'digits' registered twice in the real MLflow server: versions 1 and 2, alias 'champion' -> 1,
    plus 'iris-like' without aliases."""
    import warnings

    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow
        import mlflow.sklearn
        from mlflow import MlflowClient
        from sklearn import svm

        mlflow.set_tracking_uri(mlflow_server)
        x, y = digits
        for c in (1.0, 2.0):
            model = svm.SVC(gamma=0.001, C=c).fit(x[:300], y[:300])
            with mlflow.start_run():
                mlflow.sklearn.log_model(model, name="model", registered_model_name="digits")
        with mlflow.start_run():
            mlflow.sklearn.log_model(
                svm.SVC().fit(x[:50], y[:50]), name="model", registered_model_name="iris-like"
            )
        client = MlflowClient(mlflow_server)
        client.set_registered_model_alias("digits", "champion", "1")
    del os.environ["MLFLOW_TRACKING_URI"]
    return mlflow_server


def reference_venv(name: str) -> Path:
    """The venv of a reference server (requirements/ref-<name>.txt: Seldon's wrapper, MLServer), built once
    per machine in $ENVSERVE_TEST_CACHE (their pins clash with envserve's, so they get their own)."""
    import fcntl
    import hashlib

    sys.path.insert(0, str(EXAMPLES))
    try:
        import old_sklearn
    finally:
        sys.path.remove(str(EXAMPLES))
    lock = ROOT / "requirements" / ("ref-%s.txt" % name)
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:12]
    root = old_sklearn.cache_root()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / ("ref-%s-%s" % (name, digest))
    uv = Path(sys.executable).parent / "uv"
    with open(root / ("ref-%s.lock" % name), "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            python = "/root/.pyenv/versions/3.11.7/bin/python3.11"
            if not os.path.exists(python):
                python = shutil.which("python3.11") or sys.executable
            for argv in (
                [str(uv), "venv", "-q", "--python", python, str(venv)],
                [str(uv), "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "-r", str(lock)],
            ):
                proc = subprocess.run(argv, capture_output=True, text=True)
                assert proc.returncode == 0, "building the %s reference venv failed (needs PyPI):\n%s" % (
                    name,
                    proc.stderr[-3000:],
                )
            (venv / ".complete").write_text("ok")
    return venv


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Reference:
    """A reference server (MLflow's, Seldon's wrapper, MLServer) in a subprocess, stopped with its group."""

    def __init__(
        self, argv: List[str], url: str, ready_path: str, log: Path, env: Optional[dict] = None, cwd=None
    ):
        self.url = url
        self.ready_path = ready_path
        self.log_path = log
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )

    def wait(self, timeout: float = 240) -> Reference:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "reference server exited:\n" + self.log_path.read_text()[-3000:]
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("reference server not ready:\n" + self.log_path.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@contextlib.contextmanager
def side_by_side(reference: Reference, envserve: ServerProcess) -> Iterator[None]:
    """A reference server and envserve, both ready for the block, both stopped after it."""
    try:
        reference.wait()
        envserve.wait_ready(120)
        yield
    finally:
        reference.stop()
        envserve.stop()
