"""The environment cache with small real environments (a venv of the running Python, no packages)."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tarfile
import time

import pytest

from envserve.environments import EnvironmentCache, EnvironmentSource
from envserve.errors import EnvironmentSetupError


def _work_dirs(tmp):
    """What ``tmp/`` holds besides the owners' lock files."""
    return [name for name in os.listdir(tmp) if name != ".owners"]


def _tiny_env_tarball(path, conda_unpack=False):
    """An 'environment' whose bin/python links to this interpreter (as venv-pack writes it)."""
    with tarfile.open(path, "w:gz") as tar:
        link = tarfile.TarInfo("bin/python")
        link.type = tarfile.SYMTYPE
        link.linkname = os.path.realpath(sys.executable)
        tar.addfile(link)
        if conda_unpack:
            script = (
                b"import pathlib, sys\n"
                b"pathlib.Path(sys.argv[0]).parent.parent.joinpath('UNPACKED').write_text('yes')\n"
            )
            info = tarfile.TarInfo("bin/conda-unpack")
            info.size = len(script)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(script))
    return str(path)


def test_tarball_is_extracted_once_and_recorded(tmp_path):
    cache = EnvironmentCache(str(tmp_path / "cache"))
    source = EnvironmentSource("tarball", _tiny_env_tarball(tmp_path / "env.tar.gz"))
    env = cache.prepare(source, "model-a")
    assert env.python_version == "%d.%d.%d" % sys.version_info[:3]
    assert env.root == os.path.join(cache.envs, env.digest)
    env.release()
    again = cache.prepare(source, "model-b")
    assert again.digest == env.digest and again.record["created"] == env.record["created"]
    again.release()
    (row,) = cache.list()
    assert row["models"] == ["model-a", "model-b"] and row["kind"] == "tarball" and row["size"] >= 0


def test_conda_pack_tarball_runs_conda_unpack_in_place(tmp_path):
    cache = EnvironmentCache(str(tmp_path / "cache"))
    env = cache.prepare(
        EnvironmentSource("tarball", _tiny_env_tarball(tmp_path / "c.tar.gz", conda_unpack=True))
    )
    with open(os.path.join(env.root, "UNPACKED")) as f:
        assert f.read() == "yes"
    env.release()


def _prepare_in_child(cache_root, tarball, queue):
    env = EnvironmentCache(cache_root).prepare(EnvironmentSource("tarball", tarball), "m%d" % os.getpid())
    queue.put((env.digest, env.record["created"]))


def test_two_processes_preparing_at_once_extract_once(tmp_path):
    tarball = _tiny_env_tarball(tmp_path / "env.tar.gz")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_prepare_in_child, args=(str(tmp_path / "cache"), tarball, queue))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(set(results)) == 1  # same digest, same creation: built once
    assert len(os.listdir(tmp_path / "cache" / "envs")) == 3  # <hash>/, <hash>.json, <hash>.lock


def test_prune_skips_environments_in_use(tmp_path):
    cache = EnvironmentCache(str(tmp_path / "cache"))
    env = cache.prepare(EnvironmentSource("tarball", _tiny_env_tarball(tmp_path / "env.tar.gz")))
    assert cache.prune(everything=True) == []  # held by "a running server" (this process's shared lock)
    env.release()
    path = os.path.join(cache.envs, env.digest + ".json")
    with open(path) as f:
        record = json.load(f)
    record["last_used"] = time.time() - 40 * 86400
    with open(path, "w") as f:
        json.dump(record, f)
    assert cache.prune(older_than=30 * 86400) != [] and cache.list() == []
    assert not os.path.exists(env.root)


def test_existing_path_and_broken_python(tmp_path):
    cache = EnvironmentCache(str(tmp_path / "cache"))
    env = cache.prepare(EnvironmentSource("path", sys.prefix))
    assert env.kind == "path" and env.digest is None
    broken = tmp_path / "broken" / "bin"
    broken.mkdir(parents=True)
    (broken / "python").write_text("#!/bin/sh\necho 'libfoo.so: cannot open shared object' >&2\nexit 127\n")
    (broken / "python").chmod(0o755)
    with pytest.raises(
        EnvironmentSetupError, match=r"cannot start \(exit code 127\): libfoo\.so: cannot open"
    ):
        cache.prepare(EnvironmentSource("path", str(tmp_path / "broken")))
    with pytest.raises(EnvironmentSetupError, match="neither an environment directory"):
        cache.prepare(EnvironmentSource("path", str(tmp_path)))


def test_env_cli_list_and_prune(tmp_path):
    import subprocess

    cache_dir = str(tmp_path / "cache")
    env = EnvironmentCache(cache_dir).prepare(
        EnvironmentSource("tarball", _tiny_env_tarball(tmp_path / "env.tar.gz")), "digits"
    )
    env.release()

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "envserve", "env", *args, "--cache", cache_dir],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    out = cli("list")
    assert out.splitlines()[0].split() == [
        "HASH",
        "KIND",
        "PYTHON",
        "SIZE",
        "LAST",
        "USED",
        "MODELS",
        "SOURCE",
    ]
    assert env.digest[:12] in out and "digits" in out and "env.tar.gz" in out
    assert json.loads(cli("list", "--json"))[0]["hash"] == env.digest
    assert "0 environment(s) removed" in cli("prune")  # used just now: younger than 30 days
    assert "1 environment(s) removed" in cli("prune", "--all")
    assert cli("list").strip() == "no cached environments"


class _SlowCache(EnvironmentCache):
    """Extraction waits for the test's go-ahead, so other loads arrive while it is being made."""

    def __init__(self, root):
        super().__init__(root)
        import threading

        self.extracting, self.go = threading.Event(), threading.Event()

    def _extract(self, tarball, target):
        self.extracting.set()
        assert self.go.wait(60)
        return super()._extract(tarball, target)


def test_models_sharing_an_environment_being_made_all_get_it(tmp_path):
    """Regression: the maker took its shared lock (held while the environment is in use) as soon as it was
    done, and loads waiting for the exclusive lock behind it waited forever."""
    import shutil
    import threading

    cache = _SlowCache(str(tmp_path / "cache"))
    first = _tiny_env_tarball(tmp_path / "env.tar.gz")
    copies = []
    for i in range(3):  # the same tarball in three model folders
        shutil.copy(first, tmp_path / ("copy%d.tar.gz" % i))
        copies.append(str(tmp_path / ("copy%d.tar.gz" % i)))
    for path in [first, *copies]:  # seen before: their digest is known, so all of them wait on one lock
        cache.tarball_digest(str(path))
    results = {}

    def load(name, path):
        results[name] = cache.prepare(EnvironmentSource("tarball", path), name)

    maker = threading.Thread(target=load, args=("maker", first))
    maker.start()
    assert cache.extracting.wait(60)
    waiters = [threading.Thread(target=load, args=("m%d" % i, p)) for i, p in enumerate(copies)]
    for t in waiters:
        t.start()
    time.sleep(0.2)  # let them reach the lock
    cache.go.set()
    for t in [maker, *waiters]:
        t.join(60)
        assert not t.is_alive(), "a load waiting for the environment never finished (deadlock)"
    assert {env.digest for env in results.values()} == {results["maker"].digest}
    assert cache.stats["builds"] == 1 and cache.stats["hits"] == 3
    for env in results.values():
        env.release()


class _SwappingCache(EnvironmentCache):
    """The tarball is replaced on disk while it is being read (someone copies a new one over it)."""

    def _extract(self, tarball, target):
        digest = super()._extract(tarball, target)
        replacement = tarball + ".new"
        _tiny_env_tarball(replacement, conda_unpack=True)
        os.replace(replacement, tarball)
        return digest


def test_a_tarball_replaced_while_read_is_refused_and_leaves_nothing(tmp_path):
    cache = _SwappingCache(str(tmp_path / "cache"))
    source = EnvironmentSource("tarball", _tiny_env_tarball(tmp_path / "env.tar.gz"))
    with pytest.raises(EnvironmentSetupError, match="changed while it was read"):
        cache.prepare(source, "model-a")
    assert not os.path.isdir(cache.envs) or os.listdir(cache.envs) == []
    assert _work_dirs(cache.tmp) == []


_FULL_DISK = r"""
import resource, signal, sys
from envserve.environments.cache import EnvironmentCache
from envserve.environments.source import EnvironmentSource
from envserve.errors import EnvserveError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
try:
    EnvironmentCache(sys.argv[1]).prepare(EnvironmentSource("tarball", sys.argv[2]), "model-a")
except EnvserveError as exc:
    print("REFUSED", exc)
"""


@pytest.mark.parametrize("size_mb", [3, 6])
def test_a_write_failing_mid_extraction_leaves_nothing(tmp_path, size_mb):
    """A disk that fills up (here: a file size limit, the same failed write): a clear reason, no partial
    environment in the cache. A 3 MiB member is written by a writer thread, a 6 MiB one streamed by the
    reading thread."""
    import subprocess

    big = tmp_path / "env.tar.gz"
    with tarfile.open(big, "w:gz") as tar:
        link = tarfile.TarInfo("bin/python")
        link.type = tarfile.SYMTYPE
        link.linkname = os.path.realpath(sys.executable)
        tar.addfile(link)
        for i in range(20):  # files handed to the writers before the one that fails
            small = tarfile.TarInfo("lib/small%d.py" % i)
            small.size = 10
            tar.addfile(small, io.BytesIO(b"x" * 10))
        data = os.urandom(size_mb << 20)
        info = tarfile.TarInfo("lib/big.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    root = tmp_path / "cache"
    out = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(root), str(big)], capture_output=True, text=True, timeout=120
    )
    assert "REFUSED extracting environment tarball" in out.stdout, out.stdout + out.stderr
    assert "failed: File too large" in out.stdout and "corrupt" not in out.stdout, out.stdout
    assert str(big) in out.stdout
    assert os.listdir(root / "envs") == [] if (root / "envs").exists() else True
    assert _work_dirs(root / "tmp") == []


_READ_ONLY_PREPARE = r"""
import json, logging, sys
from envserve.environments import EnvironmentCache, EnvironmentSource
from envserve.errors import EnvironmentSetupError
logging.basicConfig(level=logging.INFO, format="%(message)s")
cache = EnvironmentCache(sys.argv[1])
out = {}
env = cache.prepare(EnvironmentSource("tarball", sys.argv[2]), "downloaded")
out["digest"] = env.digest
try:
    cache.prepare(EnvironmentSource("tarball", sys.argv[3]), "other")
except EnvironmentSetupError as exc:
    out["error"] = str(exc)
print(json.dumps(out))
"""


def test_a_baked_read_only_cache_serves_a_copy_of_its_tarball_without_extracting(tmp_path):
    """As in an image run with a read-only root filesystem: the model's tarball (downloaded into
    /mnt/models at start) is a copy of the one baked in; it is recognised by its hash, nothing is written,
    and a tarball the cache lacks is refused naming the way out."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        pytest.fail(
            "this test needs unshare (util-linux) to mount the cache read-only: apt-get install util-linux"
        )
    root = tmp_path / "cache"
    baked = _tiny_env_tarball(tmp_path / "baked.tar.gz")
    EnvironmentCache(str(root)).prepare(EnvironmentSource("tarball", baked), "build").release()
    downloaded = tmp_path / "mnt" / "env.tar.gz"
    downloaded.parent.mkdir()
    shutil.copy(baked, downloaded)
    other = _tiny_env_tarball(tmp_path / "other.tar.gz", conda_unpack=True)
    before = sorted(p.name for p in root.rglob("*"))
    script = tmp_path / "prepare.py"
    script.write_text(_READ_ONLY_PREPARE)
    proc = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"',
            "sh",
            str(root),
            sys.executable,
            str(script),
            str(root),
            str(downloaded),
            other,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["digest"] == EnvironmentCache(str(root)).tarball_digest(baked)
    assert "found in the cache" in proc.stderr and "extracting" not in proc.stderr
    assert "cannot be written (Read-only file system)" in out["error"]
    assert "envserve image build --environment" in out["error"]
    assert sorted(p.name for p in root.rglob("*") if p.name != "tarball-hashes.json") == [
        n for n in before if n != "tarball-hashes.json"
    ]


class _CountingCache(EnvironmentCache):
    """Counts the extractions ``prepare`` starts itself (not those :meth:`begin` started)."""

    extracted = 0

    def _extract(self, tarball, target):
        self.extracted += 1
        return super()._extract(tarball, target)


def test_an_extraction_begun_early_is_collected_by_prepare(tmp_path):
    cache = _CountingCache(str(tmp_path / "cache"))
    tarball = _tiny_env_tarball(tmp_path / "env.tar.gz")
    shutil.copy(tarball, tmp_path / "copy.tar.gz")
    cache.begin(EnvironmentSource("tarball", tarball))
    cache.begin(EnvironmentSource("tarball", str(tmp_path / "copy.tar.gz")))  # a copy: found by hash later
    (early,) = cache._early.values()
    env = cache.prepare(EnvironmentSource("tarball", tarball), "model-a")
    assert cache.extracted == 0 and not cache._early and early.extraction.proc.returncode == 0
    assert env.python_version == "%d.%d.%d" % sys.version_info[:3]
    copy = cache.prepare(EnvironmentSource("tarball", str(tmp_path / "copy.tar.gz")), "model-b")
    assert copy.digest == env.digest and cache.extracted == 0
    assert _work_dirs(cache.tmp) == []  # the work directory went with the rename
    env.release()
    copy.release()
    # seen before: nothing begins, and prepare finds it
    cache.begin(EnvironmentSource("tarball", tarball))
    assert not cache._early


def test_a_copy_prepared_before_the_tarball_begun_early_waits_for_that_extraction(tmp_path):
    """Loads run in any order: the model with the copy may ask first, and gets the environment the early
    extraction makes instead of extracting its copy beside it (the second 'extracting' CI once saw)."""
    cache = _CountingCache(str(tmp_path / "cache"))
    tarball = _tiny_env_tarball(tmp_path / "env.tar.gz")
    shutil.copy(tarball, tmp_path / "copy.tar.gz")
    cache.begin(EnvironmentSource("tarball", tarball))
    (early,) = cache._early.values()
    copy = cache.prepare(EnvironmentSource("tarball", str(tmp_path / "copy.tar.gz")), "model-b")
    assert cache.extracted == 0 and not cache._early and early.extraction.proc.returncode == 0
    env = cache.prepare(EnvironmentSource("tarball", tarball), "model-a")
    assert env.digest == copy.digest and cache.extracted == 0
    assert _work_dirs(cache.tmp) == []
    (record,) = cache.list()
    assert record["models"] == ["model-a", "model-b"]
    env.release()
    copy.release()


def _plain_tar(path, marker):
    """An uncompressed environment tarball: two small members make 10,240 bytes whatever ``marker`` is."""
    with tarfile.open(path, "w") as tar:
        link = tarfile.TarInfo("bin/python")
        link.type = tarfile.SYMTYPE
        link.linkname = os.path.realpath(sys.executable)
        tar.addfile(link)
        info = tarfile.TarInfo(marker)
        tar.addfile(info, io.BytesIO(b""))
    return str(path)


def test_a_tarball_of_the_same_size_is_not_taken_for_the_one_begun_early(tmp_path):
    cache = _CountingCache(str(tmp_path / "cache"))
    tarball = _plain_tar(tmp_path / "env.tar", "FIRST")
    other = _plain_tar(tmp_path / "other.tar", "OTHER")
    assert os.path.getsize(tarball) == os.path.getsize(other)
    cache.begin(EnvironmentSource("tarball", tarball))
    second = cache.prepare(EnvironmentSource("tarball", other), "model-b")
    assert cache.extracted == 1 and os.path.exists(os.path.join(second.root, "OTHER"))
    first = cache.prepare(EnvironmentSource("tarball", tarball), "model-a")
    assert first.digest != second.digest and cache.extracted == 1  # the early one became model-a's
    assert os.path.exists(os.path.join(first.root, "FIRST"))
    assert _work_dirs(cache.tmp) == []
    first.release()
    second.release()


def test_an_extraction_nobody_collects_is_stopped_and_leaves_nothing(tmp_path):
    cache = EnvironmentCache(str(tmp_path / "cache"))
    cache.begin(EnvironmentSource("tarball", _tiny_env_tarball(tmp_path / "env.tar.gz")))
    (early,) = cache._early.values()
    cache.drop_early()
    assert early.extraction.proc.returncode is not None and not cache._early
    assert _work_dirs(cache.tmp) == [] and cache.list() == []


def test_an_early_extraction_of_a_tarball_replaced_meanwhile_is_not_used(tmp_path):
    cache = _CountingCache(str(tmp_path / "cache"))
    tarball = _tiny_env_tarball(tmp_path / "env.tar.gz")
    cache.begin(EnvironmentSource("tarball", tarball))
    (early,) = cache._early.values()
    early.extraction.proc.wait()
    replacement = str(tmp_path / "new.tar.gz")
    _tiny_env_tarball(replacement, conda_unpack=True)  # another environment, another size
    os.replace(replacement, tarball)
    env = cache.prepare(EnvironmentSource("tarball", tarball))
    assert cache.extracted == 1 and os.path.exists(os.path.join(env.root, "UNPACKED"))
    assert _work_dirs(cache.tmp) == []
    env.release()


def test_begin_leaves_what_is_wrong_to_prepare(tmp_path):
    cache = EnvironmentCache(str(tmp_path / "cache"))
    cache.begin(EnvironmentSource("tarball", str(tmp_path / "missing.tar.gz")))
    cache.begin(EnvironmentSource("path", str(tmp_path)))
    assert not cache._early
    with pytest.raises(EnvironmentSetupError, match=r"missing\.tar\.gz"):
        cache.prepare(EnvironmentSource("tarball", str(tmp_path / "missing.tar.gz")))


def _env_with_modules(path):
    """The tiny environment with a package of two modules and a test suite under lib/."""
    _tiny_env_tarball(path)
    site = "lib/python%d.%d/site-packages/pkg/" % sys.version_info[:2]
    with tarfile.open(path, "r:gz") as old:
        members = [(m, old.extractfile(m).read() if m.isfile() else None) for m in old.getmembers()]
    with tarfile.open(path, "w:gz") as tar:
        for m, data in members:
            tar.addfile(m, io.BytesIO(data) if data is not None else None)
        for name, text in (("__init__.py", b"X = 1\n"), ("core.py", b"Y = 2\n"), ("tests/test_core.py", b"")):
            info = tarfile.TarInfo(site + name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    return str(path), site


@pytest.mark.parametrize("compile_bytecode", [True, False])
def test_environments_made_for_an_image_carry_their_bytecode(tmp_path, compile_bytecode):
    tarball, site = _env_with_modules(tmp_path / "env.tar.gz")
    cache = EnvironmentCache(str(tmp_path / "cache"), compile_bytecode=compile_bytecode)
    env = cache.prepare(EnvironmentSource("tarball", tarball))
    tag = sys.implementation.cache_tag
    package = os.path.join(env.root, site)
    assert os.path.isfile(os.path.join(package, "__pycache__", "core.%s.pyc" % tag)) is compile_bytecode
    assert os.path.isfile(os.path.join(package, "__pycache__", "__init__.%s.pyc" % tag)) is compile_bytecode
    assert not os.path.exists(os.path.join(package, "tests", "__pycache__"))  # test suites left out
    env.release()


def test_an_environment_made_in_a_work_directory_has_its_scripts_pointed_where_it_is(tmp_path):
    """A venv writes its path into its console scripts and activate scripts; made in tmp/ and moved into
    envs/, they must name envs/ (bin/mlserver in a model's environment would not run otherwise)."""
    cache = EnvironmentCache(str(tmp_path / "cache"))

    def make(target):
        os.makedirs(os.path.join(target, "bin"))
        os.symlink(os.path.realpath(sys.executable), os.path.join(target, "bin", "python"))
        script = os.path.join(target, "bin", "hello")
        with open(script, "w") as f:
            f.write("#!%s/bin/python\nprint('hello from', __import__('sys').prefix)\n" % target)
        os.chmod(script, 0o755)
        with open(os.path.join(target, "bin", "activate"), "w") as f:
            f.write("VIRTUAL_ENV='%s'\n" % target)
        with open(os.path.join(target, "bin", "binary"), "wb") as f:
            f.write(b"\0" + target.encode())  # not a script: left as it is

    env = cache._ensure("ab" * 32, EnvironmentSource("tarball", "made-by-the-test"), "m", make)
    ran = subprocess.run([os.path.join(env.root, "bin", "hello")], capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout.startswith("hello from"), ran
    with open(os.path.join(env.root, "bin", "activate")) as f:
        assert f.read() == "VIRTUAL_ENV='%s'\n" % env.root
    with open(os.path.join(env.root, "bin", "binary"), "rb") as f:
        assert b"/tmp/" in f.read() and os.access(os.path.join(env.root, "bin", "hello"), os.X_OK)
    env.release()


_OWNER = """
import sys
from envserve.environments.cache import EnvironmentCache
work = EnvironmentCache(sys.argv[1])._workdir("unhashed-", "a tarball")
open(work + "/half-written", "w").write("x")
print(work, flush=True)
sys.stdin.read()  # alive until told
"""


def _owner(root):
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, "-c", _OWNER, root], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    return proc, proc.stdout.readline().strip()


def test_what_a_dead_process_left_is_swept_and_a_live_ones_kept(tmp_path):
    """A server SIGKILLed mid-extraction leaves its work directory; the next one to use the cache removes
    it, but never one whose owner still runs (two servers sharing a cache), nor prune."""
    root = str(tmp_path / "cache")
    alive, kept = _owner(root)
    dying, left = _owner(root)
    dying.kill()
    dying.communicate()
    legacy = os.path.join(root, "tmp", "unhashed-legacy")  # a server from before owners: an hour's grace
    os.makedirs(legacy)
    owners = os.path.join(root, "tmp", ".owners")
    # a process that died between making its lock file and renaming it into place; and one doing it now
    for name, age in (("1dead.lock.new", 120), ("2busy.lock.new", 0)):
        with open(os.path.join(owners, name), "w"):
            pass
        os.utime(os.path.join(owners, name), (time.time() - age, time.time() - age))
    cache = EnvironmentCache(root)
    mine = cache._workdir("unhashed-", "x")
    assert os.path.isdir(kept) and os.path.isdir(mine) and os.path.isdir(legacy)
    assert not os.path.exists(left)
    assert not os.path.exists(os.path.join(owners, "1dead.lock.new"))
    os.unlink(os.path.join(owners, "2busy.lock.new"))  # kept: seconds old (its process renames it next)
    os.utime(legacy, (time.time() - 7200, time.time() - 7200))
    cache.prune()
    assert os.path.isdir(kept) and os.path.isdir(mine) and not os.path.exists(legacy)
    alive.communicate("")  # ends normally, without cleaning up
    cache.prune()
    assert not os.path.exists(kept) and os.path.isdir(mine)
    assert os.listdir(os.path.join(root, "tmp", ".owners")) == [cache._own() + ".lock"]
