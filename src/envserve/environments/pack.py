"""``envserve env pack``: a portable tarball of a venv *with its interpreter*.

venv-pack leaves the interpreter out (the target machine needs the same Python at the same path) and
conda-pack works only for conda environments. This packs a venv as a self-contained Python prefix:

    bin/pythonX.Y (+ python, python3 links)   the base interpreter's binary
    lib/libpythonX.Y.so*                       when the interpreter is linked against a shared libpython
    lib/pythonX.Y/                             the base standard library (without its tests and GUI kits)
    lib/pythonX.Y/site-packages/               the venv's packages
    envserve-pack.json                         what was packed

Python finds its prefix from the location of its binary (the ``lib/pythonX.Y/os.py`` landmark), so the
unpacked directory runs from anywhere; envserve puts ``lib/`` first on ``LD_LIBRARY_PATH`` for a shared
libpython.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import subprocess
import tarfile
import tempfile
import time
from typing import Any, BinaryIO, Dict, Iterator, List, Optional, Set, Tuple

from ..errors import EnvironmentSetupError
from .cache import find_python, runtime_env

__all__ = ["FORMATS", "ZSTD_LEVEL", "pack_environment", "pack_format"]

#: Parts of the standard library a model server never needs (tests alone are ~30% of it).
_STDLIB_SKIP = {
    "test",
    "idlelib",
    "turtledemo",
    "tkinter",
    "ensurepip",
    "lib2to3/tests",
    "distutils/tests",
    "unittest/test",
    "ctypes/test",
    "sqlite3/test",
    "tkinter/test",
    "site-packages",
}

_INSPECT = r"""
import json, sys, sysconfig
print(json.dumps({
    "version": "%d.%d.%d" % sys.version_info[:3],
    "short": "%d.%d" % sys.version_info[:2],
    "base_prefix": sys.base_prefix,
    "prefix": sys.prefix,
    "executable": sys.executable,
    "stdlib": sysconfig.get_paths(
        vars={"base": sys.base_prefix, "installed_base": sys.base_prefix})["stdlib"],
    "purelib": sysconfig.get_paths()["purelib"],
    "platlib": sysconfig.get_paths()["platlib"],
    "libdir": sysconfig.get_config_var("LIBDIR"),
    "ldlibrary": sysconfig.get_config_var("LDLIBRARY"),
    "shared": bool(sysconfig.get_config_var("Py_ENABLE_SHARED")),
    "cache_tag": sys.implementation.cache_tag,
}))
"""

# Run by the environment's own interpreter (Python 3.6+): compiles the listed sources to the listed files.
_COMPILE = r"""
import json, py_compile, sys
from concurrent.futures import ProcessPoolExecutor

def one(job):
    kw = {}
    if hasattr(py_compile, "PycInvalidationMode"):  # 3.7+: valid whatever mtime the unpacked file gets
        kw["invalidation_mode"] = py_compile.PycInvalidationMode.CHECKED_HASH
    try:
        py_compile.compile(job[0], cfile=job[1], doraise=True, **kw)
        return 1
    except Exception:  # a file of another Python version (a template, a test fixture): left as it is
        return 0

if __name__ == "__main__":
    jobs = json.load(sys.stdin)
    with ProcessPoolExecutor() as pool:
        print(sum(pool.map(one, jobs, chunksize=64)))
"""


def _inspect(python: str, root: str) -> Dict[str, Any]:
    proc = subprocess.run(
        [python, "-B", "-c", _INSPECT], capture_output=True, text=True, env=runtime_env(root), timeout=60
    )
    if proc.returncode != 0:
        raise EnvironmentSetupError("cannot run %s to inspect it: %s" % (python, proc.stderr.strip()[-2000:]))
    info: Dict[str, Any] = json.loads(proc.stdout)
    return info


def _base_binary(info: Dict[str, Any]) -> str:
    short = info["short"]
    for candidate in (
        os.path.join(info["base_prefix"], "bin", "python" + short),
        os.path.join(info["base_prefix"], "bin", "python3"),
        os.path.realpath(info["executable"]),
    ):
        if os.path.isfile(candidate):
            return candidate
    raise EnvironmentSetupError(
        "cannot find the base interpreter of %s under %s" % (info["executable"], info["base_prefix"])
    )


#: zstd level of packs: level 3 packs the Python 3.8 example 7.7x faster than gzip -6 into a file 8% smaller,
#: and unpacks 2x faster than zlib's gzip; level 6 saves another 8% for 2.5x the packing time
#: (bench/RESULTS.md, environments).
ZSTD_LEVEL = 3
#: Suffixes ``env pack`` writes, and the compression each means.
FORMATS = {".tar.zst": "zstd", ".tzst": "zstd", ".tar.gz": "gzip", ".tgz": "gzip"}


def pack_format(output: str) -> str:
    for suffix, kind in FORMATS.items():
        if output.endswith(suffix):
            return kind
    raise EnvironmentSetupError("the output of env pack must end in %s: %s" % (", ".join(FORMATS), output))


@contextlib.contextmanager
def _compressed(path: str, kind: str, level: Optional[int]) -> Iterator[BinaryIO]:
    """A file object that compresses what is written to it into ``path``."""
    with open(path, "wb") as raw:
        if kind == "zstd":
            import zstandard

            compressor = zstandard.ZstdCompressor(level=level or ZSTD_LEVEL, threads=-1)
            with compressor.stream_writer(raw, closefd=False) as writer:
                yield writer
        else:
            try:
                from isal import igzip

                gz: Any = igzip.IGzipFile(  # type: ignore[no-untyped-call]
                    fileobj=raw, mode="wb", compresslevel=min(level or 2, 3)
                )
            except ImportError:
                import gzip

                gz = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level or 6)
            with gz:
                yield gz


def pack_environment(
    env: str, output: str, level: Optional[int] = None, compile_bytecode: bool = True
) -> Dict[str, Any]:
    """Write a portable tarball of the venv (or Python prefix) at ``env``: zstd for ``.tar.zst``/``.tzst``
    (multi-threaded), gzip for ``.tar.gz``/``.tgz``; returns what was packed.

    With ``compile_bytecode``, every module without bytecode in ``env`` is compiled by the environment's
    own interpreter (hash-checked ``.pyc``, into a temporary directory: ``env`` is left as it is) and packed
    beside its source: the first start after unpacking imports instead of compiling (the Python 3.8
    example's worker: ~2.5 s less), and an environment on a read-only filesystem, where Python cannot
    write bytecode, does not compile at every start."""
    kind = pack_format(output)
    python = find_python(env)
    if python is None:
        raise EnvironmentSetupError("%s is not an environment (no bin/python)" % env)
    info = _inspect(python, env)
    short = info["short"]
    lib = "lib/python" + short
    binary = _base_binary(info)
    manifest = {
        "format": "envserve-pack/1",
        "python": info["version"],
        "packed_from": os.path.abspath(env),
        "base_prefix": info["base_prefix"],
        "compression": kind,
        "created": time.time(),
    }
    trees = [(info["stdlib"], lib, _STDLIB_SKIP)]
    trees += [(site, lib + "/site-packages", set()) for site in sorted({info["purelib"], info["platlib"]})]
    trees = [t for t in trees if os.path.isdir(t[0])]
    tmp = output + ".partial"
    with tempfile.TemporaryDirectory(prefix="envserve-pack-") as scratch:
        bytecode = _compile(python, env, info["cache_tag"], trees, scratch) if compile_bytecode else []
        manifest["bytecode"] = len(bytecode)
        try:
            with _compressed(tmp, kind, level) as stream, tarfile.open(fileobj=stream, mode="w|") as tar:
                tar.add(binary, "bin/python" + short, filter=_plain)
                for link in ("python", "python3"):
                    _symlink(tar, "bin/" + link, "python" + short)
                if info["shared"] and info["ldlibrary"]:
                    _add_shared_lib(tar, info)
                for source, arcname, skip in trees:
                    _add_tree(tar, source, arcname, skip)
                for path, arcname in bytecode:
                    tar.add(path, arcname, filter=_plain)
                data = json.dumps(manifest, indent=2).encode()
                member = tarfile.TarInfo("envserve-pack.json")
                member.size = len(data)
                member.mtime = int(time.time())
                tar.addfile(member, io.BytesIO(data))
            os.replace(tmp, output)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    manifest["size"] = os.path.getsize(output)
    return manifest


def _sources(source: str, arcname: str, skip: Set[str]) -> Iterator[Tuple[str, str]]:
    """The ``.py`` files ``_add_tree`` packs from ``source``: (path, name in the archive)."""
    for root, dirs, files in os.walk(source):
        rel = os.path.relpath(root, source).replace(os.sep, "/")
        rel = "" if rel == "." else rel
        dirs[:] = [
            d
            for d in dirs
            if (rel + "/" + d if rel else d) not in skip and not os.path.islink(os.path.join(root, d))
        ]
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(".py") and not os.path.islink(path):
                yield path, "/".join(p for p in (arcname, rel, name) if p)


_TESTS = {"tests", "test"}


def _compile(
    python: str, env: str, tag: str, trees: List[Tuple[str, str, Set[str]]], scratch: str
) -> List[Tuple[str, str]]:
    """Bytecode for the packed modules that have none in ``env``, compiled by its interpreter into
    ``scratch``: (compiled file, name in the archive) for each one that compiled. Test suites shipped inside
    packages (a third of scikit-learn's modules) are left to compile if ever imported: a server does not
    run them, and every file is one more to create at each first start."""
    jobs: List[Tuple[str, str]] = []
    names: List[str] = []
    for source, arcname, skip in trees:
        for path, name in _sources(source, arcname, skip):
            if _TESTS & set(name.split("/")[:-1]):
                continue
            folder, module = os.path.split(path)
            pyc = "%s.%s.pyc" % (module[:-3], tag)
            if os.path.exists(os.path.join(folder, "__pycache__", pyc)):
                continue  # packed with the tree
            jobs.append((path, os.path.join(scratch, "%d.pyc" % len(jobs))))
            arcdir, _ = posixpath.split(name)
            names.append(posixpath.join(arcdir, "__pycache__", pyc))
    if not jobs:
        return []
    script = os.path.join(scratch, "envserve_compile.py")  # a file: spawned pool processes import it
    with open(script, "w") as f:
        f.write(_COMPILE)
    proc = subprocess.run(
        [python, "-B", script],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        env=runtime_env(env),
        cwd=scratch,
    )
    if proc.returncode != 0:
        raise EnvironmentSetupError(
            "compiling the bytecode of %s failed (pack with --no-compile to leave it out): %s"
            % (env, proc.stderr.strip()[-2000:])
        )
    return [(job[1], name) for job, name in zip(jobs, names) if os.path.exists(job[1])]


def _symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    member = tarfile.TarInfo(name)
    member.type = tarfile.SYMTYPE
    member.linkname = target
    member.mode = 0o777
    member.mtime = int(time.time())
    tar.addfile(member)


def _add_shared_lib(tar: tarfile.TarFile, info: Dict[str, Any]) -> None:
    libdir = info["libdir"]
    ldlibrary = info["ldlibrary"]  # e.g. libpython3.8.so
    for name in sorted(os.listdir(libdir)):
        if name.startswith(ldlibrary):
            path = os.path.join(libdir, name)
            if os.path.islink(path):
                _symlink(tar, "lib/" + name, os.path.basename(os.readlink(path)))
            else:
                tar.add(path, "lib/" + name, filter=_plain)


def _add_tree(tar: tarfile.TarFile, source: str, arcname: str, skip: Set[str]) -> None:
    def exclude(info: tarfile.TarInfo) -> Optional[tarfile.TarInfo]:
        rel = info.name[len(arcname) + 1 :] if info.name != arcname else ""
        if rel in skip or any(rel.startswith(s + "/") for s in skip):
            return None
        if info.issym() and os.path.isabs(info.linkname):
            return None  # an absolute link would not survive the move; packages do not need them
        return _plain(info)

    tar.add(source, arcname, filter=exclude)


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """No owner, and whole seconds: a float mtime costs every member a PAX header (one more 512-byte block to
    write and to parse per file; the Python 3.8 example unpacks 0.35 s faster without them)."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = int(info.mtime)
    return info
