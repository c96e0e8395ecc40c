"""Safe extraction: every hostile member type is refused before anything is written outside."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from pathlib import Path

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


def _env_members():
    return [
        _file("bin/tool", b"#!/bin/sh\n"),
        _file("lib/data.bin", os.urandom(300_000)),
        _link("bin/t2", "tool"),
    ]


def _compressed(path, kind, members):
    """A tarball of ``members`` compressed as ``kind`` (what conda-pack, venv-pack and env pack write)."""
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = plain.getvalue()
    if kind == "zst":
        import zstandard

        raw = zstandard.ZstdCompressor(level=3).compress(raw)
    elif kind == "xz":
        import lzma

        raw = lzma.compress(raw)
    elif kind == "bz2":
        import bz2

        raw = bz2.compress(raw)
    elif kind == "gz":
        import gzip

        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("kind", ["gz", "zst", "xz", "bz2", "tar"])
def test_every_compression_extracts_in_one_read_that_hashes_it(tmp_path, kind):
    from envserve.environments.cache import file_digest

    members = _env_members()
    archive = _compressed(tmp_path / ("env.tar." + kind), kind, members)
    digest = safe_extract(str(archive), str(tmp_path / "out"))
    assert digest == file_digest(str(archive))
    assert (tmp_path / "out" / "lib" / "data.bin").read_bytes() == members[1][1]
    assert os.readlink(tmp_path / "out" / "bin" / "t2") == "tool"


@pytest.mark.parametrize("kind", ["zst", "gz", "xz"])
def test_a_truncated_stream_is_refused_and_leaves_nothing(tmp_path, kind):
    archive = _compressed(tmp_path / ("env.tar." + kind), kind, _env_members())
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchive, match="corrupt or truncated"):
        safe_extract(str(archive), str(target))
    assert not target.exists()


def test_hostile_members_are_refused_in_zstd_too(tmp_path):
    archive = _compressed(tmp_path / "bad.tar.zst", "zst", [_file("ok"), _file("../evil.txt")])
    with pytest.raises(UnsafeArchive, match="points outside"):
        safe_extract(str(archive), str(tmp_path / "out"))
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out").exists()


def test_directories_keep_their_archived_mode_without_odd_bits(tmp_path):
    """Regression: directories stayed 0700 (tarfile's mode while filling them), so an image's environment
    could not be read by a uid other than the one that extracted it (Seldon Core 2 runs as 1000)."""

    def _dir(name, mode):
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = mode
        return info, None

    archive = _compressed(
        tmp_path / "env.tar.gz",
        "gz",
        [
            _dir("lib", 0o755),
            _dir("lib/python3.8", 0o755),
            _file("lib/python3.8/os.py", b"# os"),
            _dir("private", 0o750),
            _dir("odd", 0o4777),
        ],
    )
    out = tmp_path / "out"
    safe_extract(str(archive), str(out))
    modes = {
        name: (out / name).stat().st_mode & 0o7777 for name in ("lib", "lib/python3.8", "private", "odd")
    }
    assert modes == {"lib": 0o755, "lib/python3.8": 0o755, "private": 0o750, "odd": 0o755}


def test_nothing_is_written_through_a_chain_of_links_that_leaves(tmp_path):
    """Each link alone stays inside (``d/c -> ..``; ``e -> d/c/..``), but together ``e`` is the parent of the
    environment: a member under ``e`` is refused instead of written there."""
    root = tmp_path / "deep" / "er"
    root.mkdir(parents=True)
    archive = _tar(
        tmp_path / "chain.tar.gz",
        [_file("d/keep"), _link("d/c", ".."), _link("e", "d/c/.."), _file("e/evil.txt", b"pwned")],
    )
    with pytest.raises(UnsafeArchive, match="outside the environment directory through a link"):
        safe_extract(str(archive), str(root / "out"))
    assert not list(tmp_path.rglob("evil.txt"))
    assert not (root / "out").exists()


def test_links_to_links_and_replaced_members(tmp_path):
    archive = _tar(
        tmp_path / "env.tar.gz",
        [
            _file("lib/python3.8/site.py", b"# site"),
            _link("lib64", "lib"),
            _link("alias", "lib64/python3.8"),
            _file("alias/extra.py", b"# through two links"),  # written where the links lead, inside
            _file("bin/tool", b"old"),
            _file("bin/tool", b"new"),  # the last member of a name wins, as in tar
            _link("bin/t", "tool"),
            _file("bin/t", b"a file now"),  # replaces the link instead of writing through it
            _link("bin/hard", "bin/tool", tarfile.LNKTYPE),
        ],
    )
    out = tmp_path / "out"
    safe_extract(str(archive), str(out))
    assert (out / "lib" / "python3.8" / "extra.py").read_bytes() == b"# through two links"
    assert (out / "bin" / "tool").read_bytes() == b"new"
    assert not (out / "bin" / "t").is_symlink() and (out / "bin" / "t").read_bytes() == b"a file now"
    assert (out / "bin" / "hard").read_bytes() == b"new"
    assert os.stat(out / "bin" / "hard").st_ino == os.stat(out / "bin" / "tool").st_ino


def test_a_link_loop_and_a_write_through_the_interpreter_link_are_refused(tmp_path):
    loop = _tar(tmp_path / "loop.tar.gz", [_link("a", "b"), _link("b", "a"), _file("a/x")])
    with pytest.raises(UnsafeArchive, match="through the link"):
        safe_extract(str(loop), str(tmp_path / "out"))
    interp = _tar(
        tmp_path / "interp.tar.gz", [_link("bin/python3", "/usr/bin/python3"), _file("bin/python3/evil")]
    )
    with pytest.raises(UnsafeArchive, match="through the link"):
        safe_extract(str(interp), str(tmp_path / "out2"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()


def test_many_files_and_a_large_one_extract_intact(tmp_path):
    """The writer threads (small files) and the reading thread (a member above the in-memory bound)."""
    import hashlib

    members = [_file("pkg/m%03d/f%d.py" % (i // 50, i), os.urandom(i % 3000)) for i in range(600)]
    big = os.urandom(5 << 20)
    members.append(_file("lib/libbig.so", big))
    archive = _compressed(tmp_path / "env.tar.zst", "zst", members)
    out = tmp_path / "out"
    safe_extract(str(archive), str(out))
    for info, data in members:
        assert hashlib.sha256((out / info.name).read_bytes()).digest() == hashlib.sha256(data).digest()


def test_an_extraction_stops_when_the_server_that_started_it_dies(tmp_path):
    """A server SIGKILLed (the OOM killer) mid-extraction: the kernel ends the extraction too (Linux)."""
    import signal
    import subprocess
    import sys
    import time

    archive = tmp_path / "never-written.tar.gz"
    os.mkfifo(archive)  # the extraction blocks opening it: in flight for as long as the test needs
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from envserve.environments.tarball import Extraction\n"
            "print(Extraction(sys.argv[1], sys.argv[2]).proc.pid, flush=True); sys.stdin.read()",
            str(archive),
            str(tmp_path / "env"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    pid = int(server.stdout.readline())
    deadline = time.monotonic() + 60
    proc = Path("/proc/%d" % pid)
    while (proc / "syscall").read_text().split()[0] != "257":  # not yet blocked in openat
        assert time.monotonic() < deadline, "the extraction never opened its archive"
        time.sleep(0.05)
    server.send_signal(signal.SIGKILL)
    server.communicate()
    try:
        while proc.exists() and (proc / "stat").read_text().split()[2] != "Z":  # gone, or a zombie
            assert time.monotonic() < deadline, "the extraction outlived its server"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_symlink_made_through_an_earlier_link_is_checked_where_it_lands(tmp_path):
    """By its name, ``a/b/c/l -> ../../../secret`` stays inside (``a/b/c`` is three deep); but ``a`` is
    a link to ``.``, so the link lands at ``b/c/l`` and its target would be ``../secret``, outside: the
    check is made where the link is really made, and nothing is left pointing out."""
    outside = tmp_path / "secret"
    outside.write_text("not the environment's")
    archive = _tar(
        tmp_path / "t.tar.gz",
        [_file("b/c/keep"), _link("a", "."), _link("a/b/c/l", "../../../secret"), _file("ok.txt")],
    )
    target = tmp_path / "env"
    with pytest.raises(
        UnsafeArchive, match=r"made at 'b/c/l' through an earlier link\) -> '\.\./\.\./\.\./secret'"
    ):
        safe_extract(str(archive), str(target))
    assert not target.exists() or not (target / "b" / "c" / "l").is_symlink()
