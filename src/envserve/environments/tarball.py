"""Safe extraction of environment tarballs (conda-pack, venv-pack, ``envserve env pack``; gzip, zstd, xz,
bzip2 or plain tar), in one streaming read that also hashes the file.

Every member is checked before it is written: no absolute paths, no ``..``, no device files or
FIFOs, no symlink or hardlink whose target leaves the destination (one exception: venv-pack's
``bin/pythonX.Y`` link to an absolute interpreter path, which is only ever executed), and a bound on the total
uncompressed size and member count (decompression bombs). A tarball that fails a check is rejected
as a whole; the caller extracts into a temporary directory and renames it only on success.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import posixpath
import re
import shutil
import tarfile
from typing import Any, BinaryIO, Dict, Optional, cast

from ..errors import UnsafeArchive

__all__ = ["MAX_MEMBERS", "MAX_UNPACKED_BYTES", "UnsafeArchive", "open_stream", "safe_extract"]

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
            os.makedirs(destination, exist_ok=True)
            directories = []
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for m in tar:
                    limits.check(m)
                    # never restore owners or odd permission bits from the archive
                    m.uid = m.gid = 0
                    m.uname = m.gname = ""
                    m.mode = (m.mode & 0o755) | (0o700 if m.isdir() else 0o600)
                    tar.extract(m, destination, set_attrs=not m.isdir(), **_filter_kwargs())
                    if m.isdir():
                        directories.append((m.name, m.mode))
            # a directory's own mode once its content is written (tarfile makes it 0700 meanwhile): an
            # environment is read by whichever uid runs it (an image's user, OpenShift's arbitrary one)
            for name, mode in reversed(directories):
                path = os.path.join(destination, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    os.chmod(path, mode)
            while stream.read(1 << 20):  # the rest of the compressed stream: a truncated one fails here
                pass
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


def _filter_kwargs() -> Dict[str, Any]:
    # Python 3.12+ (and security backports) take an extraction filter; members were checked above, and
    # "tar" keeps symlinks while still refusing anything unsafe a second time.
    if hasattr(tarfile, "tar_filter"):
        return {"filter": "tar"}
    return {}
