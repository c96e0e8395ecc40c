"""Suite ``extraction``: the first start from an environment tarball, against what the disk needs.

The Python 3.8 + scikit-learn 0.24.2 example (``examples/models/mnist-svm-py38``), measured in one run:

- the floor: GNU ``tar -xzf`` of the same ``.tar.gz`` into an empty directory;
- the worker's own start: time to ready with the environment cache warm (nothing to extract);
- envserve's first start to ready with an empty cache, from the ``.tar.gz`` and from ``envserve env pack``'s
  ``.tar.zst`` of the same environment.

Each is the median of 3 runs, taken interleaved (floor, gz, zst, warm, floor, ...) so drift of the
machine hits all of them alike. Targets (issue 17): first start from ``.tar.gz`` <= 1.0x (tar + warm
start); from ``.tar.zst`` <= 0.5x that.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from .environments import _time_to_ready
from .harness import OUT, ROOT, ROUNDS


def _tar_floor(tarball: Path) -> float:
    target = Path(tempfile.mkdtemp(prefix="envserve-bench-tar-"))
    try:
        started = time.monotonic()
        subprocess.run(["tar", "-xzf", str(tarball), "-C", str(target)], check=True)
        return time.monotonic() - started
    finally:
        shutil.rmtree(target, ignore_errors=True)


def _first_start(repo: Path, log: Path) -> float:
    cache = Path(tempfile.mkdtemp(prefix="envserve-bench-first-"))
    try:
        return _time_to_ready(repo, cache, log)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def run(seconds: float) -> List[str]:
    example = ROOT / "examples" / "models" / "mnist-svm-py38"
    tarball = example / "old-sklearn.tar.gz"
    if not tarball.exists():
        sys.exit("%s is missing: run scripts/setup" % tarball)
    OUT.mkdir(parents=True, exist_ok=True)
    work = OUT / "extraction"
    shutil.rmtree(work, ignore_errors=True)
    gz_repo, zst_repo = work / "repo-gz", work / "repo-zst"
    shutil.copytree(example, gz_repo / "mnist-svm-py38")

    # the same environment, packed by envserve env pack as zstd
    unpacked = work / "unpacked"
    unpacked.mkdir(parents=True)
    subprocess.run(["tar", "-xzf", str(tarball), "-C", str(unpacked)], check=True)
    zst = work / "old-sklearn.tar.zst"
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "envserve", "env", "pack", str(unpacked), "-o", str(zst)],
        check=True,
        capture_output=True,
    )
    pack_seconds = time.monotonic() - started
    shutil.rmtree(unpacked)
    folder = zst_repo / "mnist-svm-py38"
    shutil.copytree(example, folder, ignore=shutil.ignore_patterns("*.tar.gz"))
    shutil.copy(zst, folder / "old-sklearn.tar.zst")
    settings = (
        (folder / "model-settings.json").read_text().replace("old-sklearn.tar.gz", "old-sklearn.tar.zst")
    )
    (folder / "model-settings.json").write_text(settings)

    warm_cache = Path(tempfile.mkdtemp(prefix="envserve-bench-warm-"))
    samples: Dict[str, List[float]] = {"tar": [], "gz": [], "zst": [], "warm": []}
    try:
        _time_to_ready(gz_repo, warm_cache, work / "warm-fill.log")  # fills the warm cache
        for i in range(ROUNDS):
            samples["tar"].append(_tar_floor(tarball))
            samples["gz"].append(_first_start(gz_repo, work / ("gz-%d.log" % i)))
            samples["zst"].append(_first_start(zst_repo, work / ("zst-%d.log" % i)))
            samples["warm"].append(_time_to_ready(gz_repo, warm_cache, work / ("warm-%d.log" % i)))
            print(
                "round %d: tar -xzf %.2f s, first start .tar.gz %.2f s, .tar.zst %.2f s, warm %.2f s"
                % tuple([i + 1] + [samples[k][-1] for k in ("tar", "gz", "zst", "warm")]),
                flush=True,
            )
    finally:
        shutil.rmtree(warm_cache, ignore_errors=True)
    m = {k: statistics.median(v) for k, v in samples.items()}
    floor = m["tar"] + m["warm"]
    gz_ratio, zst_ratio = m["gz"] / floor, m["zst"] / floor
    size_gz, size_zst = tarball.stat().st_size / 2**20, zst.stat().st_size / 2**20
    return [
        "",
        "first start of the Python 3.8 example (%.0f MiB .tar.gz, %.0f MiB .tar.zst packed in %.1f s), "
        "medians of %d interleaved rounds:" % (size_gz, size_zst, pack_seconds, ROUNDS),
        "  tar -xzf %.2f s + warm start %.2f s = floor %.2f s" % (m["tar"], m["warm"], floor),
        "  first start from .tar.gz %.2f s = %.2fx the floor (target <= 1.00x: %s)"
        % (m["gz"], gz_ratio, "PASS" if gz_ratio <= 1.0 else "FAIL"),
        "  first start from .tar.zst %.2f s = %.2fx the floor (target <= 0.50x: %s)"
        % (m["zst"], zst_ratio, "PASS" if zst_ratio <= 0.5 else "FAIL"),
        "  warm restart %.2f s (target <= 1.50 s: %s)" % (m["warm"], "PASS" if m["warm"] <= 1.5 else "FAIL"),
        "  cpus: %d" % (os.cpu_count() or 0),
    ]
