"""Safe extraction of environment tarballs (conda-pack, venv-pack, ``envserve env pack``; gzip, zstd, xz,
bzip2 or plain tar), in one streaming read that also hashes the file.

Every member is checked before it is written: no absolute paths, no ``..``, no device files or
FIFOs, no symlink or hardlink whose target leaves the destination (one exception: venv-pack's
``bin/pythonX.Y`` link to an absolute interpreter path, which is only ever executed), and a bound on the total
uncompressed size and member count (decompression bombs). A tarball that fails a check is rejected
as a whole; the caller extracts into a temporary directory and renames it only on success.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import posixpath
import queue
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import Future
from typing import Any, BinaryIO, Dict, List, Optional, cast

from ..errors import UnsafeArchive

__all__ = [
    "MAX_MEMBERS",
    "MAX_UNPACKED_BYTES",
    "Extraction",
    "UnsafeArchive",
    "open_stream",
    "safe_extract",
]

#: Upper bounds on what one tarball may unpack to.
MAX_UNPACKED_BYTES = 32 * 1024**3
MAX_MEMBERS = 2_000_000


def _inside(path: str) -> bool:
    norm = posixpath.normpath(path)
    return not (norm == ".." or norm.startswith("../") or posixpath.isabs(norm))


_INTERPRETER = re.compile(r"^python[0-9.]*$")


def _is_interpreter_link(name: str, target: str) -> bool:
    parts = posixpath.normpath(name).split("/")
    return (
        len(parts) >= 2
        and parts[-2] == "bin"
        and bool(_INTERPRETER.match(parts[-1]))
        and posixpath.isabs(target)
        and bool(_INTERPRETER.match(posixpath.basename(target)))
    )


class _Limits:
    """The running totals of one extraction, checked member by member."""

    def __init__(self, source: str, max_bytes: int) -> None:
        self.source = source
        self.max_bytes = max_bytes
        self.members = 0
        self.total = 0

    def check(self, m: tarfile.TarInfo) -> None:
        source, name = self.source, m.name
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise UnsafeArchive("%s has more than %d members; refusing" % (source, MAX_MEMBERS))
        if posixpath.isabs(name) or not _inside(name):
            raise UnsafeArchive("%s: member %r points outside the environment directory" % (source, name))
        if m.isdev() or m.isfifo():
            raise UnsafeArchive(
                "%s: member %r is a device or FIFO, which environments never need" % (source, name)
            )
        if m.issym():
            target = m.linkname
            resolved = posixpath.join(posixpath.dirname(name), target)
            if _is_interpreter_link(name, target):
                pass  # venv-pack keeps bin/python -> the system interpreter; nothing is written through it
            elif posixpath.isabs(target) or not _inside(resolved):
                raise UnsafeArchive(
                    "%s: symlink %r -> %r leaves the environment directory" % (source, name, target)
                )
        elif m.islnk():
            if posixpath.isabs(m.linkname) or not _inside(m.linkname):
                raise UnsafeArchive(
                    "%s: hardlink %r -> %r leaves the environment directory" % (source, name, m.linkname)
                )
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchive("%s: member %r has an unsupported type" % (source, name))
        self.total += max(m.size, 0)
        if self.total > self.max_bytes:
            raise UnsafeArchive(
                "%s unpacks to more than %d bytes; refusing (decompression bomb or not an environment)"
                % (source, self.max_bytes)
            )


class _Hashing(io.RawIOBase):
    """The archive's bytes as read: SHA-256 and size come out of the same single read."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.f.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.sha.update(data)
        self.size += n
        return n

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _zstd_reader(raw: BinaryIO) -> Any:
    try:
        import zstandard
    except ImportError:
        try:
            from compression import zstd  # type: ignore[import-not-found,unused-ignore]  # Python 3.14+
        except ImportError:
            raise UnsafeArchive(
                "zstd tarballs need the zstandard package (pip install 'zstandard>=0.22,<1')"
            ) from None
        return zstd.ZstdFile(raw)
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)


def _gzip_reader(raw: BinaryIO) -> Any:
    try:
        from isal import igzip  # ISA-L: 2-2.5x zlib's inflate (bench/RESULTS.md, environments)
    except ImportError:
        import gzip

        return gzip.GzipFile(fileobj=raw)
    return igzip.IGzipFile(fileobj=raw)  # type: ignore[no-untyped-call]


def open_stream(raw: Any, magic: bytes, source: str) -> Any:
    """The decompressed tar stream of ``raw`` (gzip, zstd, xz, bzip2 or none), chosen by its first bytes."""
    if magic.startswith(b"\x1f\x8b"):
        return _gzip_reader(raw)
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        return _zstd_reader(raw)
    if magic.startswith(b"\xfd7zXZ\x00"):
        import lzma

        return lzma.LZMAFile(raw)
    if magic.startswith(b"BZh"):
        import bz2

        return bz2.BZ2File(raw)
    return raw


class Extraction:
    """:func:`safe_extract` running in a process of its own (``python -m envserve.environments.tarball``):
    its parsing does not hold the server's GIL while models load in the server's threads (the in-process
    example beside an extraction was ready 1.3 s later than alone), a decompressor that crashes fails that
    extraction alone, and a server can start it before its own imports and collect it later."""

    def __init__(self, archive: str, destination: str, max_bytes: Optional[int] = None) -> None:
        self.archive = archive
        self.destination = destination
        self.started = time.monotonic()
        argv = [sys.executable, "-m", __name__, archive, destination]
        if max_bytes is not None:
            argv.append(str(max_bytes))
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def result(self) -> str:
        """Wait for it; the archive's SHA-256, or :class:`UnsafeArchive` saying why it failed."""
        out, err = self.proc.communicate()
        lines = out.strip().splitlines()
        try:
            answer = json.loads(lines[-1])
        except (IndexError, ValueError):
            answer = {}
        if self.proc.returncode == 0 and "sha256" in answer:
            return str(answer["sha256"])
        if "error" in answer:
            raise UnsafeArchive(str(answer["error"]))
        shutil.rmtree(self.destination, ignore_errors=True)
        raise UnsafeArchive(
            "extracting environment tarball %s failed: the extraction process exited with %s: %s"
            % (self.archive, self.proc.returncode, (err or out).strip()[-2000:])
        )

    def cancel(self) -> None:
        """Stop it (nobody will use what it writes); the caller removes the destination."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


def _stop_with_server() -> None:
    """Linux: the kernel kills this extraction when the server that started it dies (SIGKILL, the OOM
    killer): nobody would collect it, and the next server sweeps its directory."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes
            import signal

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _main(argv: List[str]) -> int:
    _stop_with_server()
    archive, destination = argv[0], argv[1]
    try:
        digest = safe_extract(archive, destination, int(argv[2]) if len(argv) > 2 else None)
    except UnsafeArchive as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps({"sha256": digest}))
    return 0


def safe_extract(archive: str, destination: str, max_bytes: Optional[int] = None) -> str:
    """Extract ``archive`` into the (new) ``destination``, checking each member before it is written, in
    one read of the file; returns the archive's SHA-256. A refused member or a broken stream stops the
    extraction and removes what was written."""
    created = not os.path.exists(destination)
    try:
        return _extract(archive, destination, max_bytes)
    except BaseException:
        if created:  # nothing of a refused or broken archive stays behind
            shutil.rmtree(destination, ignore_errors=True)
        raise


def _extract(archive: str, destination: str, max_bytes: Optional[int]) -> str:
    limits = _Limits(archive, MAX_UNPACKED_BYTES if max_bytes is None else max_bytes)
    try:
        with open(archive, "rb", buffering=1 << 20) as f:
            magic = cast(io.BufferedReader, f).peek(8)[:8]
            raw = _Hashing(f)
            buffered = io.BufferedReader(raw, 1 << 20)
            stream = open_stream(buffered, magic, archive)
            # decompressed ahead by another thread, read by tarfile in small steps from a large buffer
            prefetch = _Prefetch(stream)
            reader = io.BufferedReader(prefetch, 1 << 20)
            os.makedirs(destination, exist_ok=True)
            try:
                with _Writer(archive, destination) as writer, tarfile.open(
                    fileobj=reader, mode="r|", bufsize=1 << 16
                ) as tar:
                    for m in tar:
                        limits.check(m)
                        writer.member(tar, m)
                while reader.read(1 << 20):  # the rest of the compressed stream: a truncated one fails here
                    pass
            finally:
                prefetch.close()
            buffered.read()  # padding after the compressed stream counts in the hash
            raw.drain()
            return raw.sha.hexdigest()
    except FileNotFoundError:
        raise UnsafeArchive("environment tarball %s does not exist" % archive) from None
    except UnsafeArchive:
        raise
    except Exception as exc:  # every decompressor's own error class: zlib, isal, zstandard, lzma, bz2
        if isinstance(exc, OSError) and exc.errno is not None:  # the disk's answer (full, quota, limit)
            raise UnsafeArchive(
                "extracting environment tarball %s into %s failed: %s%s"
                % (
                    archive,
                    os.path.dirname(destination),
                    exc.strerror,
                    " (the disk is full)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "",
                )
            ) from None
        raise UnsafeArchive(
            "environment tarball %s is corrupt or truncated: %s: %s" % (archive, type(exc).__name__, exc)
        ) from None


class _Prefetch(io.RawIOBase):
    """A decompressor's output read ahead by a thread of its own (zstandard, ISA-L, zlib, lzma and bz2 let
    go of the GIL while they work), in large blocks, while the caller parses and writes what came before."""

    _END = b""

    def __init__(self, f: Any, block: int = 1 << 20, ahead: int = 8) -> None:
        self.f = f
        self.block = block
        self.blocks: queue.Queue[Any] = queue.Queue(ahead)
        self.stopped = threading.Event()
        self.rest = memoryview(b"")
        self.done = False
        self.thread = threading.Thread(target=self._run, name="envserve-decompress", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stopped.is_set():
                data = self.f.read(self.block)
                self._put(data)
                if not data:
                    return
        except BaseException as exc:  # handed to the reader, raised there
            self._put(exc)

    def _put(self, item: Any) -> None:
        while not self.stopped.is_set():
            try:
                self.blocks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self.rest:
            if self.done:
                return 0
            item = self.blocks.get()
            if isinstance(item, BaseException):
                self.done = True
                raise item
            if not item:
                self.done = True
                return 0
            self.rest = memoryview(item)
        n = min(len(buffer), len(self.rest))
        buffer[:n] = self.rest[:n]
        self.rest = self.rest[n:]
        return n

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        super().close()


#: Members up to this size are read whole and written by the writer threads; larger ones are streamed to
#: disk by the reading thread.
_SMALL = 4 << 20
#: What the reading thread may hand over before the writers catch up.
_PENDING_BYTES = 64 << 20
#: Writer threads. Files go to a thread by their directory: creating a file holds its directory's lock, so
#: two threads in one directory mostly wait for each other, while two directories are created side by side
#: (the Python 3.8 example's 5,600 files on this machine's disk: 2.6 s, against 4.0 s from a shared pool of
#: two and 3.9-4.5 s from one thread).
_WRITERS = 2
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class _Shard(threading.Thread):
    """A writer thread: runs the work handed to it in order; the first failure is kept for the reader."""

    def __init__(self, writer: _Writer) -> None:
        super().__init__(name="envserve-extract", daemon=True)
        self.writer = writer
        self.work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.start()

    def run(self) -> None:
        while True:
            item = self.work.get()
            if item is None:
                return
            fn, args, size = item
            try:
                # after a failure no more files, but every directory still settles its future: another
                # thread may be waiting for it
                if self.writer.error is None or fn is not _write:
                    fn(*args)
            except BaseException as exc:
                if self.writer.error is None:
                    self.writer.error = exc
            finally:
                if size:
                    self.writer.release(size)

    def drain(self) -> None:
        """Return once everything handed over so far is done."""
        done = threading.Event()
        self.work.put((done.set, (), 0))
        done.wait()


class _Writer:
    """Writes checked members under ``root``; the reading thread decompresses and parses while writer
    threads create the directories and files (creation is what an extraction spends most on, and it runs in
    the kernel without the GIL). A directory and the files in it are made by one thread, in archive order.

    Nothing is written through a link: a member's path is resolved against the symlinks this extraction
    made (the destination is new, so they are the only ones there), like ``realpath`` but from memory, and
    refused when it leaves ``root``; files are opened with ``O_NOFOLLOW``."""

    def __init__(self, source: str, root: str) -> None:
        self.source = source
        self.root = root
        self.links: Dict[str, str] = {}  # relative path -> link target, as made
        self.dirs: Dict[str, int] = {"": 0o755}  # relative path -> archived mode
        done: Future[None] = Future()
        done.set_result(None)
        self.made: Dict[str, Future[None]] = {"": done}  # directory -> its creation
        self.files: Dict[str, int] = {}  # file -> the shard writing it
        self.pending = 0  # bytes handed to the writers and not yet written
        self.room = threading.Condition()
        self.error: Optional[BaseException] = None
        self.shards = [_Shard(self) for _ in range(_WRITERS)]

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        for shard in self.shards:  # nothing is still writing when the caller removes a failed tree
            shard.work.put(None)
        for shard in self.shards:
            shard.join()
        if kind is None:
            if self.error is not None:
                raise self.error
            self._directory_modes()

    # -- paths ----------------------------------------------------------------------------------------

    def _resolve(self, name: str) -> str:
        """``name`` (inside by the member checks) with every link among its parents followed."""
        parts = [p for p in posixpath.normpath(name).split("/") if p not in ("", ".")]
        if not self.links:
            return "/".join(parts)
        # the member's own name is made, not followed; a trailing ".." is a step like any other
        last = parts.pop() if parts and parts[-1] != ".." else ""
        done: List[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if not done:
                    raise UnsafeArchive(
                        "%s: member %r leads outside the environment directory through a link"
                        % (self.source, name)
                    )
                done.pop()
                continue
            done.append(part)
            target = self.links.get("/".join(done))
            if target is not None:
                hops += 1
                if hops > 40 or posixpath.isabs(target):
                    raise UnsafeArchive(
                        "%s: member %r is written through the link %r -> %r; refusing"
                        % (self.source, name, "/".join(done), target)
                    )
                done.pop()
                parts[:0] = [p for p in target.split("/") if p not in ("", ".")]
        return "/".join(done + [last] if last else done)

    def _shard(self, directory: str) -> int:
        return hash(directory) % _WRITERS

    def _directory(self, rel: str) -> None:
        """Have the directory ``rel`` (resolved: no link among its parents) and its parents made, each by
        the thread of its own files, after its parent (the only wait between threads: always for a
        directory handed over earlier, so never in a cycle)."""
        if rel in self.made:
            return
        parent = posixpath.dirname(rel)
        self._directory(parent)
        if rel in self.links or rel in self.files:
            raise UnsafeArchive(
                "%s: %r is not a directory, yet members are written under it" % (self.source, rel)
            )
        made: Future[None] = Future()
        self.made[rel] = made
        self.dirs.setdefault(rel, 0o755)
        work = (_mkdir, (os.path.join(self.root, rel), self.made[parent], made), 0)
        self.shards[self._shard(rel)].work.put(work)

    def _settle(self, rel: str) -> None:
        """Wait until what was handed over for the directory of ``rel`` is done."""
        self.shards[self._shard(posixpath.dirname(rel))].drain()
        if self.error is not None:
            raise self.error

    def _clear(self, rel: str) -> None:
        """Make room for a member replacing an earlier one of the same name (the last one wins, as in tar)."""
        if rel in self.files:
            del self.files[rel]
            self._settle(rel)
            os.unlink(os.path.join(self.root, rel))
        elif rel in self.links:
            del self.links[rel]
            os.unlink(os.path.join(self.root, rel))

    # -- members --------------------------------------------------------------------------------------

    def member(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        if self.error is not None:
            raise self.error
        # never restore owners or odd permission bits from the archive
        mode = (m.mode & 0o755) | (0o700 if m.isdir() else 0o600)
        rel = self._resolve(m.name)
        if m.isdir():
            if rel in self.links:  # a directory member where a link was made: the link stays, as in tar
                return
            self._clear(rel)
            self._directory(rel)
            self.dirs[rel] = mode
            return
        if not rel or rel in self.made:
            raise UnsafeArchive("%s: member %r would replace a directory" % (self.source, m.name))
        parent = posixpath.dirname(rel)
        self._directory(parent)
        self._clear(rel)
        path = os.path.join(self.root, rel)
        if m.issym():
            # checked where it is made: its name may pass through earlier links (the member checks saw
            # the name only), and a relative target counts from the directory it really lands in
            landed = posixpath.normpath(posixpath.join(parent, m.linkname))
            if not _is_interpreter_link(rel, m.linkname) and (
                posixpath.isabs(m.linkname) or landed == ".." or landed.startswith("../")
            ):
                raise UnsafeArchive(
                    "%s: symlink %r (made at %r through an earlier link) -> %r leaves the environment "
                    "directory" % (self.source, m.name, rel, m.linkname)
                )
            self._settle(rel)
            os.symlink(m.linkname, path)
            self.links[rel] = m.linkname
        elif m.islnk():
            target = self._resolve(m.linkname)
            if target not in self.files:
                raise UnsafeArchive(
                    "%s: hardlink %r -> %r names no file written before it"
                    % (self.source, m.name, m.linkname)
                )
            self._settle(target)
            self._settle(rel)
            os.link(os.path.join(self.root, target), path, follow_symlinks=False)
            self.files[rel] = self._shard(parent)
        else:
            source = tar.extractfile(m)
            assert source is not None
            shard = self._shard(parent)
            self.files[rel] = shard
            if m.size > _SMALL:  # streamed here: never a whole large library in memory
                self._settle(rel)
                _write(path, source, mode, m.mtime)
                return
            data = source.read()
            size = len(data) + 4096  # an empty file costs its inode too
            self._acquire(size)
            self.shards[shard].work.put((_write, (path, io.BytesIO(data), mode, m.mtime), size))

    def _acquire(self, size: int) -> None:
        with self.room:
            while self.pending and self.pending + size > _PENDING_BYTES:
                self.room.wait()
            self.pending += size

    def release(self, size: int) -> None:
        with self.room:
            self.pending -= size
            self.room.notify()

    def _directory_modes(self) -> None:
        # a directory's own mode once its content is written (made 0700 meanwhile): an environment is read
        # by whichever uid runs it (an image's user, OpenShift's arbitrary one)
        for rel, mode in sorted(self.dirs.items(), reverse=True):
            if rel:
                os.chmod(os.path.join(self.root, rel), mode)


def _mkdir(path: str, parent: Future[None], made: Future[None]) -> None:
    try:
        parent.result()
        with contextlib.suppress(FileExistsError):  # a destination that existed before
            os.mkdir(path, 0o700)
    except BaseException as exc:
        made.set_exception(exc)
        raise
    made.set_result(None)


def _write(path: str, source: Any, mode: int, mtime: float) -> None:
    fd = os.open(path, _FILE_FLAGS, 0o600)
    try:
        while True:
            chunk = source.read(1 << 20)
            if not chunk:
                break
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
        os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
