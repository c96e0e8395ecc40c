"""Safe extraction of environment tarballs (conda-pack, venv-pack, ``envserve env pack``).

Every member is checked before anything is written: no absolute paths, no ``..``, no device files or
FIFOs, no symlink or hardlink whose target leaves the destination (one exception: venv-pack's
``bin/pythonX.Y`` link to an absolute interpreter path, which is only ever executed), and a bound on the total
uncompressed size and member count (decompression bombs). A tarball that fails a check is rejected
as a whole; the caller extracts into a temporary directory and renames it only on success.
"""

from __future__ import annotations

import os
import posixpath
import re
import tarfile
from typing import List, Optional

from ..errors import UnsafeArchive

__all__ = ["MAX_MEMBERS", "MAX_UNPACKED_BYTES", "UnsafeArchive", "safe_extract"]

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


def _check(members: List[tarfile.TarInfo], source: str, max_bytes: int) -> None:
    total = 0
    if len(members) > MAX_MEMBERS:
        raise UnsafeArchive(
            "%s has %d members; at most %d are accepted" % (source, len(members), MAX_MEMBERS)
        )
    for m in members:
        name = m.name
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
        total += max(m.size, 0)
        if total > max_bytes:
            raise UnsafeArchive(
                "%s unpacks to more than %d bytes; refusing (decompression bomb or not an environment)"
                % (source, max_bytes)
            )


def safe_extract(archive: str, destination: str, max_bytes: Optional[int] = None) -> None:
    """Extract ``archive`` into the (new, empty) ``destination`` after checking every member."""
    limit = MAX_UNPACKED_BYTES if max_bytes is None else max_bytes
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            _check(members, archive, limit)
            os.makedirs(destination, exist_ok=True)
            for m in members:
                # never restore owners or odd permission bits from the archive
                m.uid = m.gid = 0
                m.uname = m.gname = ""
                m.mode = (m.mode & 0o755) | (0o700 if m.isdir() else 0o600)
            tar.extractall(destination, members=members, **_filter_kwargs())
    except FileNotFoundError:
        raise UnsafeArchive("environment tarball %s does not exist" % archive) from None
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        if isinstance(exc, UnsafeArchive):
            raise
        raise UnsafeArchive("environment tarball %s is corrupt or truncated: %s" % (archive, exc)) from None


def _filter_kwargs() -> dict:  # type: ignore[type-arg]
    # Python 3.12+ (and security backports) take an extraction filter; members were checked above, and
    # "tar" keeps symlinks while still refusing anything unsafe a second time.
    if hasattr(tarfile, "tar_filter"):
        return {"filter": "tar"}
    return {}
