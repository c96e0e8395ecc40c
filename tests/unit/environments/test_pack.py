"""``envserve env pack``: what goes into the tarball, from a real venv of the running interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import venv

import pytest

from envserve.environments.cache import runtime_env
from envserve.environments.pack import pack_environment
from envserve.environments.tarball import open_stream, safe_extract


@pytest.fixture(scope="module")
def small_venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("venv") / "env"
    venv.create(root, with_pip=False, symlinks=True)
    site = root / "lib" / ("python%d.%d" % sys.version_info[:2]) / "site-packages"
    (site / "mod_a.py").write_text("VALUE = 41 + 1\n")
    (site / "pkg").mkdir()
    (site / "pkg" / "__init__.py").write_text("from .inner import NAME\n")
    (site / "pkg" / "inner.py").write_text("NAME = 'inner'\n")
    (site / "py2_only.py").write_text("print 'a Python 2 file some packages still ship'\n")
    (site / "pkg" / "tests").mkdir()
    (site / "pkg" / "tests" / "test_inner.py").write_text("def test(): pass\n")
    return root


def _members(tarball):
    with open(tarball, "rb") as raw:
        magic = raw.read(8)
        raw.seek(0)
        with tarfile.open(fileobj=open_stream(raw, magic, str(tarball)), mode="r|") as tar:
            return list(tar)


def _names(tarball):
    return {m.name for m in _members(tarball)}


def test_pack_carries_bytecode_compiled_by_the_environment_and_leaves_it_unchanged(small_venv, tmp_path):
    before = sorted(str(p) for p in small_venv.rglob("*"))
    tag = sys.implementation.cache_tag
    manifest = pack_environment(str(small_venv), str(tmp_path / "env.tar.zst"))
    assert sorted(str(p) for p in small_venv.rglob("*")) == before, "packing wrote into the environment"
    names = _names(tmp_path / "env.tar.zst")
    site = "lib/python%d.%d/site-packages/" % sys.version_info[:2]
    assert site + "__pycache__/mod_a.%s.pyc" % tag in names
    assert site + "pkg/__pycache__/inner.%s.pyc" % tag in names
    assert site + "py2_only.py" in names and site + "__pycache__/py2_only.%s.pyc" % tag not in names
    # a package's own test suite is packed as source only
    assert site + "pkg/tests/test_inner.py" in names
    assert not any(n.startswith(site + "pkg/tests/__pycache__") for n in names)
    assert manifest["bytecode"] >= 3
    # no member needs a PAX header (whole-second mtimes, no owners)
    assert all(not m.pax_headers for m in _members(tmp_path / "env.tar.zst"))

    # unpacked elsewhere, the interpreter imports the packed bytecode instead of compiling
    out = tmp_path / "unpacked"
    safe_extract(str(tmp_path / "env.tar.zst"), str(out))
    proc = subprocess.run(
        [str(out / "bin" / "python"), "-B", "-v", "-c", "import mod_a, pkg; print(mod_a.VALUE, pkg.NAME)"],
        capture_output=True,
        text=True,
        env=runtime_env(str(out)),
    )
    assert proc.stdout.strip() == "42 inner", proc.stderr[-2000:]
    pyc = os.path.join(str(out), site, "__pycache__", "mod_a.%s.pyc" % tag)
    assert "code object from %r" % pyc in proc.stderr


def test_pack_without_bytecode(small_venv, tmp_path):
    manifest = pack_environment(str(small_venv), str(tmp_path / "env.tar.gz"), compile_bytecode=False)
    assert manifest["bytecode"] == 0
    assert not any(n.endswith(".pyc") and "site-packages" in n for n in _names(tmp_path / "env.tar.gz"))
