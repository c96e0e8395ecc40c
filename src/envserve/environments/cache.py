"""The environment cache: tarballs extracted once, specs built once, shared by every model and server.

Layout under the cache root (``ENVSERVE_ENV_CACHE``, default ``~/.cache/envserve/environments``)::

    envs/<hash>/          the environment (a venv, a conda env, or an envserve pack)
    envs/<hash>.json      its record: kind, source, Python version, size, created, last used, models
                          (and a tarball's size: a tarball of that size is hashed before extraction)
    envs/<hash>.lock      flock: exclusive while it is made, shared while a server uses it
    tmp/                  work directories, renamed into envs/ only when complete, each named after
                          its owner: tmp/.owners/<owner>.lock is flock'ed while that process lives, so
                          what a dead one left (a SIGKILLed server's extraction) is swept by the next
    tarball-hashes.json   memo of tarball digests keyed by (path, size, mtime, inode)

``<hash>`` is the SHA-256 of the tarball's bytes, or of the normalised spec (with Python version and
platform). An environment is complete exactly when its record exists; a directory without a record is
a crashed attempt and is removed by the next one. Two servers starting together serialise on the lock,
and the second finds the first's result. A cache that cannot be written (baked into an image run with a
read-only root filesystem, or as another uid) serves what it holds and says so for what it lacks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Dict, List, Optional, Tuple

from ..errors import EnvironmentSetupError, EnvserveError
from ..settings.paths import default_cache_root
from .builder import RESOLVED_FILE, build_environment
from .interpreters import probe_python
from .source import EnvironmentSource
from .spec import EnvironmentSpec, read_spec
from .tarball import Extraction

__all__ = [
    "Environment",
    "EnvironmentCache",
    "default_cache_root",
    "file_digest",
    "find_python",
    "runtime_env",
]

logger = logging.getLogger("envserve.environments")


@dataclass
class Environment:
    """A ready environment: where it is and the interpreter that runs its workers."""

    root: str
    python: str
    python_version: str
    digest: Optional[str]
    kind: str
    source: str
    record: Dict[str, Any] = field(default_factory=dict)
    _lock: Optional[IO[str]] = None

    def release(self) -> None:
        """Drop the shared lock that keeps ``envserve env prune`` from removing it while in use."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def runtime_env(root: str) -> Dict[str, str]:
    """Process environment for running an environment's interpreter: its own libpython first, no leaks
    of the server's Python settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CONDA_"))}
    lib = os.path.join(root, "lib")
    if os.path.isdir(lib) and any(n.startswith("libpython") for n in os.listdir(lib)):
        env["LD_LIBRARY_PATH"] = lib + (
            os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else ""
        )
    env["PYTHONNOUSERSITE"] = "1"
    return env


def find_python(root: str) -> Optional[str]:
    if os.path.isfile(root) and os.access(root, os.X_OK):
        return root
    for name in ("bin/python3", "bin/python"):
        path = os.path.join(root, name)
        if os.path.lexists(path):  # a dangling link is found here and reported when it cannot start
            return path
    return None


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _identity(path: str) -> Tuple[int, ...]:
    """What says a file is still the same file: size, mtime and inode."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise EnvironmentSetupError("environment tarball %s does not exist" % path) from None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _memo_key(path: str, identity: Tuple[int, ...]) -> str:
    return "|".join([os.path.realpath(path)] + [str(n) for n in identity])


def _dir_size(path: str) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _compile_bytecode(python: str, root: str) -> None:
    """The bytecode of every module under ``root``'s ``lib`` that has none, by the environment's own
    interpreter, on every core; package test suites left out (a server does not run them). A module that
    does not compile (Python 2 syntax in a package's data, say) is left as it is, as pip does."""
    lib = os.path.join(root, "lib")
    if not os.path.isdir(lib):
        return
    started = time.monotonic()
    proc = subprocess.run(
        [python, "-m", "compileall", "-q", "-j", "0", "-x", r"[/\\]tests?[/\\]", lib],
        capture_output=True,
        text=True,
        env=runtime_env(root),
        timeout=1800,
    )
    logger.info(
        "compiled the bytecode of %s in %.1f s%s",
        root,
        time.monotonic() - started,
        "" if proc.returncode == 0 else " (some modules did not compile: %s)" % proc.stdout.strip()[-300:],
    )


#: Under tmp/: one lock file per process using the cache (see _owner_in).
_OWNERS = ".owners"
#: tmp/ directory -> this process's owner name there. Process-wide, like the lock each name stands for.
_OWNED: Dict[str, str] = {}
_OWNED_GUARD = threading.Lock()


def _owner_in(tmp: str, sweep: Any) -> str:
    """This process's owner name in ``tmp``, made on first use (after ``sweep`` removed what dead owners
    left): its lock file is held, by a descriptor never closed, for as long as the process lives."""
    with _OWNED_GUARD:
        name = _OWNED.get(tmp)
        if name is None:
            owners = os.path.join(tmp, _OWNERS)
            os.makedirs(owners, exist_ok=True)
            sweep()
            name = "%d%s" % (os.getpid(), os.urandom(4).hex())
            path = os.path.join(owners, name + ".lock")
            fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(path + ".new", path)  # a sweep only ever sees it locked
            _OWNED[tmp] = name
        return name


def _relocate_scripts(root: str, made_at: str) -> None:
    """Point the scripts in ``root/bin`` at ``root`` where they name ``made_at``, the work directory the
    environment was made in: a venv writes its own path into its console scripts' shebangs (``bin/mlserver``,
    ``bin/f2py``, ...) and its activate scripts, which would otherwise name a directory that is gone."""
    old, new = made_at.encode(), root.encode()
    bin_dir = os.path.join(root, "bin")
    for entry in os.scandir(bin_dir) if os.path.isdir(bin_dir) else ():
        if not entry.is_file(follow_symlinks=False):
            continue  # links (bin/python)
        stat = entry.stat()
        if stat.st_size > 1 << 20:
            continue  # binaries large enough not to be scripts
        with open(entry.path, "rb") as f:
            data = f.read()
        if old in data and b"\0" not in data:
            with open(entry.path + ".relocating", "wb") as f:
                f.write(data.replace(old, new))
            os.chmod(entry.path + ".relocating", stat.st_mode & 0o7777)
            os.replace(entry.path + ".relocating", entry.path)


def _changed_while_read(path: str) -> EnvironmentSetupError:
    return EnvironmentSetupError(
        "environment tarball %s changed while it was read; start the model again" % path
    )


def _collect(extraction: Extraction) -> str:
    """The tarball's SHA-256 once ``extraction`` is done (:class:`UnsafeArchive` if it failed)."""
    digest = extraction.result()
    elapsed = time.monotonic() - extraction.started
    logger.info("extracted %s in %.1f s", os.path.basename(extraction.archive), elapsed)
    return digest


@dataclass
class _Early:
    """An extraction begun early: the tarball's identity when it began, its work directory, its process."""

    identity: Tuple[int, ...]
    work: str
    extraction: Extraction

    def drop(self) -> None:
        self.extraction.cancel()
        shutil.rmtree(self.work, ignore_errors=True)


class EnvironmentCache:
    """``compile_bytecode``: environments made here get the bytecode of their modules at once (``envserve
    env prepare``, which bakes environments into images: run with a read-only root filesystem or as another
    uid, Python could never write it, and every start would compile what the model imports). A writable
    cache does without: Python writes the bytecode of what is imported, once."""

    def __init__(self, root: Optional[str] = None, compile_bytecode: bool = False) -> None:
        self.root = os.path.abspath(root or default_cache_root())
        self.compile_bytecode = compile_bytecode
        #: What this cache did, for the server's metrics (read when /metrics is scraped).
        self.stats: Dict[str, float] = {"hits": 0, "misses": 0, "builds": 0, "build_seconds": 0.0}
        self.envs = os.path.join(self.root, "envs")
        self.tmp = os.path.join(self.root, "tmp")
        self._locks: Dict[int, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        #: Extractions started by :meth:`begin`, by tarball path, until ``prepare`` collects them.
        self._early: Dict[str, _Early] = {}

    # -- public API ---------------------------------------------------------------------------------------

    def prepare(self, source: EnvironmentSource, model: str = "") -> Environment:
        """Make ``source`` ready (extract, build or check it) and return it, holding a shared lock."""
        if source.kind == "path":
            return self._existing(source.location)
        if source.kind == "tarball":
            return self._tarball(source, model)
        if source.kind == "spec":
            spec = read_spec(source.location, source.python)
            spec.as_of = source.as_of
            return self._ensure(
                spec.digest(), source, model, lambda work: self._build(spec, work, model), spec
            )
        raise EnvironmentSetupError("unknown environment source kind %r" % source.kind)

    def begin(self, source: EnvironmentSource) -> None:
        """Start extracting a tarball this cache has never seen, before anyone asks for it: ``envserve
        serve`` calls this for its models' tarballs before importing the server, whose imports then overlap
        the extraction. :meth:`prepare` collects it; :meth:`drop_early` stops what nobody collected.
        Anything unusual (a known digest, a cached environment from a tarball of the same size, an
        unreadable file) is left to :meth:`prepare`, which says what is wrong."""
        path = source.location
        if source.kind != "tarball" or path in self._early:
            return
        try:
            identity = _identity(path)
            if any(e.identity[0] == identity[0] for e in self._early.values()):
                return  # a copy of a tarball begun already: prepare finds its environment by hash
            if self._known_digest(path) is not None or self._holds_tarball_of_size(identity[0]):
                return
            work = self._workdir("unhashed-", path)
        except (OSError, EnvironmentSetupError):
            return
        logger.info("extracting %s (begun while the server starts)", path)
        extraction = Extraction(path, os.path.join(work, "env"))
        self._early[path] = _Early(identity, work, extraction)

    def drop_early(self) -> None:
        """Stop the extractions :meth:`begin` started that nobody collected, and remove what they wrote."""
        for path in list(self._early):
            early = self._early.pop(path, None)
            if early is not None:
                early.drop()

    def list(self) -> List[Dict[str, Any]]:
        rows: List[Dict[str, Any]] = []
        if not os.path.isdir(self.envs):
            return rows
        for name in sorted(os.listdir(self.envs)):
            if name.endswith(".json"):
                record = self._read_record(name[: -len(".json")])
                if record is not None:
                    rows.append(record)
        return rows

    def prune(self, older_than: Optional[float] = None, everything: bool = False) -> List[Dict[str, Any]]:
        """Remove environments not used for ``older_than`` seconds (or all with ``everything``) that no
        running server holds; returns the records removed."""
        removed = []
        now = time.time()
        for record in self.list():
            if not everything and (older_than is None or now - record.get("last_used", 0) < older_than):
                continue
            digest = record["hash"]
            lock = self._open_lock(digest)
            try:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.EACCES):
                        logger.info("environment %s is in use; not pruned", digest[:12])
                        continue
                    raise
                os.unlink(self._record_path(digest))
                shutil.rmtree(os.path.join(self.envs, digest), ignore_errors=True)
                removed.append(record)
            finally:
                lock.close()
        if os.path.isdir(self.tmp):
            self._sweep()
        return removed

    def tarball_digest(self, path: str) -> str:
        """The SHA-256 of a tarball (remembered by path, size, mtime and inode)."""
        digest = self._known_digest(path)
        if digest is None:
            digest = file_digest(path)
            self._remember_digest(path, digest)
        return digest

    # -- tarballs: one read of the file ---------------------------------------------------------------

    def _tarball(self, source: EnvironmentSource, model: str) -> Environment:
        """A tarball's environment. Seen before (its digest remembered): extracted only when the cache
        lacks it. First seen: extracted at once, into a temporary directory, in the same read that hashes
        it; the result is moved into place under the digest (or dropped when another server made that
        environment meanwhile). One extraction per tarball at a time in this server: a second model with
        the same tarball (or a copy of it) waits for the first and then finds it."""
        path = source.location
        size = _identity(path)[0]
        with self._lock_for(size):  # by size: copies of one tarball in several model folders
            early = self._early.pop(path, None)
            if early is None:
                self._settle_early_copies(size)
            try:
                digest = self._known_digest(path)
                if digest is None and self._holds_tarball_of_size(size):
                    # the cache holds an environment from a tarball of this size (a copy in another model
                    # folder, or one baked into the image): when the hash says this is it (a read, no
                    # extraction), its environment is this one's
                    candidate = file_digest(path)
                    if self._read_record(candidate) is not None:
                        self._remember_digest(path, candidate)
                        digest = candidate
                if digest is not None:
                    known = digest

                    def extract(target: str) -> None:
                        if self._extract(path, target) != known:
                            raise _changed_while_read(path)

                    return self._ensure(digest, source, model, extract)
                running: Optional[_Early] = None
                if early is not None and early.identity == _identity(path):
                    running, early = early, None  # begun before the server's imports: collected here
                    work, before = running.work, running.identity
                else:
                    work, before = self._workdir("unhashed-", path), _identity(path)
                try:
                    if running is not None:
                        digest = _collect(running.extraction)
                    else:
                        digest = self._extract(path, os.path.join(work, "env"))
                    return self._install(path, before, digest, work, source, model)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
            finally:
                if early is not None:  # begun, but the cache had its environment after all
                    early.drop()

    def _settle_early_copies(self, size: int) -> None:
        """Finish the extractions begun early for tarballs of ``size`` in other model folders, into the
        cache: when the one being prepared is a copy of one of them, its hash then finds that environment
        instead of extracting it a second time (loads run in any order, so the model whose tarball began
        early need not be the first to get here). What fails here is left to that model's own prepare."""
        for other in [p for p, e in self._early.items() if e.identity[0] == size]:
            early = self._early.pop(other)
            try:
                digest = _collect(early.extraction)
                source = EnvironmentSource("tarball", other)
                self._install(other, early.identity, digest, early.work, source, "").release()
            except (EnvserveError, OSError):
                pass
            finally:
                shutil.rmtree(early.work, ignore_errors=True)

    def _install(
        self,
        path: str,
        before: Tuple[int, ...],
        digest: str,
        work: str,
        source: EnvironmentSource,
        model: str,
    ) -> Environment:
        """The extraction of ``path`` in ``work/env``, begun when the file's identity was ``before``, moved
        into the cache under ``digest`` (refused when the file changed while it was read)."""
        if _identity(path) != before:
            raise _changed_while_read(path)
        self._remember_digest(path, digest, before)
        return self._ensure(digest, source, model, functools.partial(os.rename, os.path.join(work, "env")))

    def _lock_for(self, key: int) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def _known_digest(self, path: str) -> Optional[str]:
        memo = self._read_json(os.path.join(self.root, "tarball-hashes.json")) or {}
        digest = memo.get(_memo_key(path, _identity(path)))
        return str(digest) if digest else None

    def _remember_digest(self, path: str, digest: str, identity: Optional[Tuple[int, ...]] = None) -> None:
        memo_path = os.path.join(self.root, "tarball-hashes.json")
        memo = self._read_json(memo_path) or {}
        memo[_memo_key(path, identity or _identity(path))] = digest
        self._write_quietly(memo_path, memo)

    def _holds_tarball_of_size(self, size: int) -> bool:
        return any(record.get("tarball_size") == size for record in self.list())

    # -- internals ----------------------------------------------------------------------------------------

    def _existing(self, location: str) -> Environment:
        root = location
        python = find_python(location)
        if python is None:
            raise EnvironmentSetupError(
                "%s is neither an environment directory (no bin/python) nor a python executable" % location
            )
        if os.path.isfile(location):
            root = os.path.dirname(os.path.dirname(location))
        version = probe_python(python, runtime_env(root))
        return Environment(root, python, version, None, "path", location)

    def _record_path(self, digest: str) -> str:
        return os.path.join(self.envs, digest + ".json")

    def _read_record(self, digest: str) -> Optional[Dict[str, Any]]:
        return self._read_json(self._record_path(digest))

    @staticmethod
    def _read_json(path: str) -> Optional[Dict[str, Any]]:
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def _write_json(self, path: str, doc: Dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        os.fchmod(fd, 0o644)  # readable by every uid an image may run as (mkstemp makes it 0600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
        os.replace(tmp, path)

    def _workdir(self, prefix: str, what: str) -> str:
        try:
            return tempfile.mkdtemp(prefix="%s-%s" % (self._own(), prefix), dir=self.tmp)
        except OSError as exc:
            raise EnvironmentSetupError(
                "the environment cache %s cannot be written (%s), so environment %s cannot be made "
                "there; bake it into the image (envserve image build --environment ...) or point "
                "ENVSERVE_ENV_CACHE at a writable folder" % (self.root, exc.strerror or exc, what)
            ) from None

    def _own(self) -> str:
        """This process's owner name in ``tmp/`` (see :func:`_owner_in`)."""
        return _owner_in(self.tmp, self._sweep)

    def _sweep(self) -> None:
        """Remove from ``tmp/`` what no live owner holds: work directories of processes that died (their lock
        files are free), and those of servers from before owners once an hour old (one may still run on a
        shared cache). The directories are listed before the owners, so one made meanwhile belongs to an
        owner this sweep sees locked."""
        entries = [e for e in os.listdir(self.tmp) if e != _OWNERS]
        owners = os.path.join(self.tmp, _OWNERS)
        live: List[str] = []  # owner names, each followed by "-" as in its directories' names
        dead: List[str] = []
        for name in os.listdir(owners) if os.path.isdir(owners) else []:
            if name.endswith(".lock.new"):  # its process died between making and renaming it (microseconds)
                with contextlib.suppress(OSError):
                    if time.time() - os.lstat(os.path.join(owners, name)).st_mtime > 60:
                        os.unlink(os.path.join(owners, name))
                continue
            if not name.endswith(".lock"):
                continue
            with open(os.path.join(owners, name), "a") as probe:
                try:
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    live.append(name[: -len(".lock")] + "-")
                    continue
            dead.append(name[: -len(".lock")] + "-")
        for entry in entries:
            path = os.path.join(self.tmp, entry)
            if entry.startswith(tuple(live)):
                continue
            if not entry.startswith(tuple(dead)):  # from before owners
                with contextlib.suppress(OSError):
                    if time.time() - os.lstat(path).st_mtime < 3600:
                        continue
            logger.info("removing %s, left in the environment cache by a process that died", entry)
            shutil.rmtree(path, ignore_errors=True)
        for owner in dead:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(owners, owner[:-1] + ".lock"))

    def _write_quietly(self, path: str, doc: Dict[str, Any]) -> None:
        """Bookkeeping (last use, the digest memo) that a read-only cache goes without."""
        try:
            self._write_json(path, doc)
        except OSError as exc:
            logger.debug("not recording %s: %s", path, exc)

    def _open_lock(self, digest: str) -> IO[str]:
        """The environment's lock file. In a read-only cache (an image's, run with a read-only root
        filesystem or as another uid) an existing lock file is opened for reading: flock works on it."""
        path = os.path.join(self.envs, digest + ".lock")
        try:
            os.makedirs(self.envs, exist_ok=True)
            return open(path, "a+")
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            for existing in (path, self._record_path(digest)):
                if os.path.exists(existing):
                    return open(existing)
            raise EnvironmentSetupError(
                "the environment cache %s cannot be written (%s) and does not hold environment %s; "
                "bake it into the image (envserve image build --environment ...) or point "
                "ENVSERVE_ENV_CACHE at a writable folder" % (self.root, exc.strerror or exc, digest[:12])
            ) from None

    def _ensure(
        self,
        digest: str,
        source: EnvironmentSource,
        model: str,
        make: Any,
        spec: Optional[EnvironmentSpec] = None,
    ) -> Environment:
        final = os.path.join(self.envs, digest)
        lock, record = self._acquire(digest, source, final, make, spec)
        python = find_python(final)
        if python is None:
            lock.close()
            raise EnvironmentSetupError(
                "cached environment %s has no bin/python; run envserve env prune" % final
            )
        record["last_used"] = time.time()
        models = set(record.get("models", []))
        if model:
            models.add(model)
        record["models"] = sorted(models)
        self._write_quietly(self._record_path(digest), record)
        return Environment(
            final, python, record["python_version"], digest, record["kind"], record["source"], record, lock
        )

    def _acquire(
        self, digest: str, source: EnvironmentSource, final: str, make: Any, spec: Optional[EnvironmentSpec]
    ) -> Any:
        """(shared lock, record) of the environment, making it first when nobody has.

        A shared lock is held for as long as a server uses the environment, so nobody may wait for an
        exclusive lock while holding it or behind it: the maker takes the exclusive lock without waiting,
        and everyone else waits for a shared one (granted once the maker is done) and reads the record.
        """
        made = False
        while True:
            lock = self._open_lock(digest)
            fcntl.flock(lock, fcntl.LOCK_SH)  # waits while someone (this or another server) makes it
            record = self._read_record(digest)
            if record is not None:
                if not made:
                    self.stats["hits"] += 1
                    logger.info("environment %s (%s) found in the cache", digest[:12], source.describe())
                return lock, record
            lock.close()
            lock = self._open_lock(digest)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # someone else is about to make it: wait for them above
                lock.close()
                time.sleep(0.05)
                continue
            try:
                if self._read_record(digest) is None:
                    self.stats["misses"] += 1
                    record = self._make(digest, source, final, make, spec)
                    self.stats["builds"] += 1
                    self.stats["build_seconds"] += float(record.get("build_seconds", 0.0))
                    made = True
            finally:
                lock.close()

    def _make(
        self, digest: str, source: EnvironmentSource, final: str, make: Any, spec: Optional[EnvironmentSpec]
    ) -> Dict[str, Any]:
        started = time.monotonic()
        if os.path.exists(final):  # a crashed earlier attempt
            shutil.rmtree(final, ignore_errors=True)
        work = self._workdir(digest[:12] + "-", digest[:12])
        target = os.path.join(work, "env")
        try:
            make(target)
            os.rename(target, final)
            try:
                _relocate_scripts(final, target)
                self._post_install(final)
                python = find_python(final)
                if python is None:
                    raise EnvironmentSetupError(
                        "%s does not contain an environment (no bin/python at its top level)"
                        % source.location
                    )
                version = probe_python(python, runtime_env(final))
                if self.compile_bytecode:
                    _compile_bytecode(python, final)
            except BaseException:
                shutil.rmtree(final, ignore_errors=True)
                raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        record = {
            "hash": digest,
            "kind": source.kind,
            "source": source.location,
            "python_version": version,
            "size": _dir_size(final),
            "created": time.time(),
            "build_seconds": round(time.monotonic() - started, 3),
            "models": [],
        }
        if spec is not None:
            record["requirements"] = spec.requirements
            if spec.as_of is not None:
                record["as_of"] = spec.as_of
            resolved = os.path.join(final, RESOLVED_FILE)
            if os.path.isfile(resolved):
                with open(resolved) as f:
                    record["resolved"] = [line.strip() for line in f if line.strip()]
        if source.kind == "tarball":
            with contextlib.suppress(OSError):
                record["tarball_size"] = os.path.getsize(source.location)
        self._write_json(self._record_path(digest), record)
        logger.info(
            "environment %s ready: Python %s, %s, %.1f s",
            digest[:12],
            version,
            source.describe(),
            record["build_seconds"],
        )
        return record

    def _extract(self, tarball: str, target: str) -> str:
        """Extract (checking every member) and return the tarball's SHA-256, in one read of it."""
        logger.info("extracting %s", tarball)
        return _collect(Extraction(tarball, target))

    def _build(self, spec: EnvironmentSpec, target: str, model: str) -> None:
        logger.info("building an environment for Python %s from %s", spec.python, spec.source)
        build_environment(spec, target, label="env %s" % (model or spec.source))

    def _post_install(self, root: str) -> None:
        """Fix-ups a tarball's own tools ask for (conda-pack's conda-unpack rewrites its prefixes)."""
        unpack = os.path.join(root, "bin", "conda-unpack")
        if os.path.isfile(unpack):
            python = find_python(root)
            if python is None:
                raise EnvironmentSetupError("conda-pack environment %s has no bin/python" % root)
            proc = subprocess.run(
                [python, unpack], capture_output=True, text=True, env=runtime_env(root), cwd=root, timeout=600
            )
            if proc.returncode != 0:
                raise EnvironmentSetupError(
                    "conda-unpack failed in %s: %s" % (root, (proc.stderr or proc.stdout)[-2000:])
                )
