"""Safe extraction: every hostile member type is refused before anything is written outside."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from envserve.environments.tarball import safe_extract
from envserve.errors import UnsafeArchive


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.mark.parametrize(
    "members,message",
    [
        ([_file("../evil.txt")], "points outside"),
        ([_file("bin/../../evil.txt")], "points outside"),
        ([_file("/tmp/evil.txt")], "points outside"),
        ([_link("lib/escape", "../../../etc")], "leaves the environment directory"),
        ([_link("lib/abs", "/etc/passwd")], "leaves the environment directory"),
        ([_file("bin/python", b"#!"), _link("bin/hard", "../../etc/passwd", tarfile.LNKTYPE)], "hardlink"),
    ],
)
def test_hostile_members_are_rejected(tmp_path, members, message):
    archive = _tar(tmp_path / "bad.tar.gz", members)
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchive, match=message):
        safe_extract(str(archive), str(target))
    assert not (tmp_path / "evil.txt").exists()
    assert not target.exists() or not any(target.rglob("*"))


def test_device_files_are_rejected(tmp_path):
    dev = tarfile.TarInfo("dev/sda")
    dev.type = tarfile.BLKTYPE
    fifo = tarfile.TarInfo("run/fifo")
    fifo.type = tarfile.FIFOTYPE
    for member in (dev, fifo):
        archive = _tar(tmp_path / "dev.tar.gz", [(member, None)])
        with pytest.raises(UnsafeArchive, match="device or FIFO"):
            safe_extract(str(archive), str(tmp_path / "out"))


def test_decompression_bomb_is_rejected_before_writing(tmp_path):
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("zeros")
        info.size = 50 * 1024 * 1024
        tar.addfile(info, io.BytesIO(b"\0" * info.size))
    assert archive.stat().st_size < 200 * 1024  # 50 MiB of zeros compress to almost nothing
    with pytest.raises(UnsafeArchive, match="decompression bomb"):
        safe_extract(str(archive), str(tmp_path / "out"), max_bytes=10 * 1024 * 1024)
    assert not (tmp_path / "out" / "zeros").exists()


def test_corrupt_truncated_and_missing_tarballs(tmp_path):
    good = _tar(tmp_path / "good.tar.gz", [_file("bin/x", os.urandom(100_000))])
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(good.read_bytes()[:200])
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"this is not a tarball at all")
    for path in (truncated, garbage):
        with pytest.raises(UnsafeArchive, match="corrupt or truncated"):
            safe_extract(str(path), str(tmp_path / "out"))
    with pytest.raises(UnsafeArchive, match="does not exist"):
        safe_extract(str(tmp_path / "missing.tar.gz"), str(tmp_path / "out"))


def test_good_tarball_with_relative_links_and_venv_pack_interpreter_link(tmp_path):
    archive = _tar(
        tmp_path / "env.tar.gz",
        [
            _file("lib/python3.8/site.py", b"# site"),
            _link("lib64", "lib"),
            _link("bin/python3.8", "/usr/bin/python3.8"),  # venv-pack keeps this absolute link
            _link("bin/python", "python3.8"),
        ],
    )
    safe_extract(str(archive), str(tmp_path / "out"))
    assert (tmp_path / "out" / "lib64" / "python3.8" / "site.py").read_bytes() == b"# site"
    assert (tmp_path / "out" / "bin" / "python3.8").readlink().as_posix() == "/usr/bin/python3.8"
    # ...but only for an interpreter name under bin/
    archive = _tar(tmp_path / "env2.tar.gz", [_link("bin/tool", "/usr/bin/python3.8")])
    with pytest.raises(UnsafeArchive, match="leaves the environment"):
        safe_extract(str(archive), str(tmp_path / "out2"))
