"""Suite ``pickles``: envserve's restricted loader against ``joblib.load`` of the same file.

For scikit-learn models of three sizes (the digits SVC, a 100-tree random forest, a 300-tree one), as
joblib files plain and zlib-compressed: ``envserve.runtimes.pickles.load_pickle`` (the load envserve does,
with every global, call and dtype checked) and ``joblib.load`` (which runs the same pure-Python unpickler
unchecked), interleaved, median of 5 each. The ratio loader/joblib is what we track.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import List

ROUNDS = 5


def _models() -> List[tuple]:
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.svm import SVC

    digits = load_digits()
    rng = np.random.default_rng(0)
    x = rng.random((20000, 20))
    y = (x[:, 0] > 0.5).astype(int)
    return [
        ("digits SVC", SVC(gamma=0.001).fit(digits.data, digits.target)),
        ("forest 100 trees", RandomForestClassifier(n_estimators=100, random_state=0).fit(x, y)),
        ("forest 300 trees", RandomForestClassifier(n_estimators=300, random_state=0).fit(x, y)),
    ]


def run(seconds: float) -> List[str]:
    import joblib

    from envserve.runtimes.pickles import Policy, load_pickle

    policy = Policy.for_model(["sklearn"])
    lines = [
        "| model | file | size | envserve's loader | joblib.load | loader/joblib |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="envserve-bench-pickles-") as tmp:
        for label, model in _models():
            for compress in (0, 3):
                path = Path(tmp) / ("model-%d.joblib" % compress)
                joblib.dump(model, path, compress=compress)
                scans, loads = [], []
                for _ in range(ROUNDS):
                    started = time.perf_counter()
                    load_pickle(str(path), policy)
                    scans.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    joblib.load(path)
                    loads.append(time.perf_counter() - started)
                scan, load = statistics.median(scans), statistics.median(loads)
                lines.append(
                    "| %s | %s | %.1f MB | %.1f ms | %.1f ms | **%.2fx** |"
                    % (label, "zlib" if compress else "plain", path.stat().st_size / 1e6, 1000 * scan,
                       1000 * load, scan / load)
                )  # fmt: skip
    return lines
