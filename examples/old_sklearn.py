"""The example of a model from another environment: digits SVC trained on Python 3.8 + scikit-learn 0.24.2.

    python examples/old_sklearn.py OUTPUT_DIR

builds (once; cached in ``$ENVSERVE_TEST_CACHE``, default ``~/.cache/envserve-tests``) a Python 3.8 venv
with scikit-learn 0.24.2 and joblib 0.17.0 from PyPI wheels, trains the digits SVC *inside it*, packs the
venv with ``envserve env pack`` from a private copy of the interpreter that is removed afterwards (so the
tarball must carry its own Python), and also makes a venv-pack tarball of the same environment. Then it
writes a ready model folder to OUTPUT_DIR: ``model-settings.json``, ``model.joblib``,
``old-sklearn.tar.gz``. scripts/setup runs it for the example repository; the tests use the same builder.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

EXAMPLES = Path(__file__).resolve().parent

RECIPE = {
    "python": "3.8",
    "requirements": ["numpy==1.19.5", "scipy==1.5.4", "scikit-learn==0.24.2", "joblib==0.17.0"],
    "version": 3,
    "venv_pack": True,
}
#: Seldon-era environments (2019-2021), for the tests of the worker side on Python 3.6 and 3.7
RECIPES = {
    "3.8": RECIPE,
    "3.7": {
        "python": "3.7",
        "requirements": ["numpy==1.19.5", "scipy==1.5.4", "scikit-learn==0.23.2", "joblib==0.17.0"],
        "version": 1,
        "venv_pack": False,
    },
    "3.6": {
        "python": "3.6",
        "requirements": ["numpy==1.18.5", "scipy==1.4.1", "scikit-learn==0.22.2.post1", "joblib==0.14.1"],
        "version": 1,
        "venv_pack": False,
    },
}

_PREDICT = """
import json, sys, joblib
from sklearn import datasets
d = datasets.load_digits()
x = d.images.reshape((len(d.images), -1))[-100:]
model = joblib.load(sys.argv[1])
print(json.dumps({"rows": x.tolist(), "predictions": model.predict(x).tolist(),
                  "sklearn": __import__("sklearn").__version__, "python": sys.version.split()[0]}))
"""


def cache_root() -> Path:
    return Path(os.environ.get("ENVSERVE_TEST_CACHE") or Path.home() / ".cache" / "envserve-tests")


def _uv() -> str:
    from envserve.environments.builder import find_uv

    uv = find_uv()
    assert uv, "uv is missing: it is a dependency of envserve (scripts/setup installs it)"
    return uv


def _run(argv, **kw) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, "%s failed:\n%s\n%s" % (argv, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout


def _base_prefix(python: str) -> Path:
    return Path(_run([python, "-c", "import sys; print(sys.base_prefix)"]).strip())


def old_sklearn(recipe: Dict = RECIPE) -> Dict[str, Path]:
    """Paths of the scenario artifacts: ``tarball``, ``model``, ``expected`` (JSON), ``venv_pack`` (for
    recipes that make one), for the default Python 3.8 recipe or one of ``RECIPES``."""
    from envserve.environments.interpreters import find_interpreter

    sklearn = next(r.split("==")[1] for r in recipe["requirements"] if r.startswith("scikit-learn=="))
    key = "py%s-sklearn-%s-r%d" % (recipe["python"].replace(".", ""), sklearn, recipe["version"])
    root = cache_root() / key
    out = {
        "tarball": root / "old-sklearn.tar.gz",
        "model": root / "model.joblib",
        "expected": root / "expected.json",
    }
    if recipe["venv_pack"]:
        out["venv_pack"] = root / "venv-pack.tar.gz"
    root.mkdir(parents=True, exist_ok=True)
    with open(root.parent / (key + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if all(p.exists() for p in out.values()):
            return out
        python = find_interpreter(recipe["python"])  # a clear error naming what to install when missing
        work = root / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        # A private copy of the interpreter, removed after packing: the tarball must then run on its own.
        copy = work / "python38"
        shutil.copytree(
            _base_prefix(python),
            copy,
            symlinks=True,
            ignore=shutil.ignore_patterns(
                "test", "tests", "site-packages", "__pycache__", "idlelib", "tkinter", "ensurepip"
            ),
        )
        venv = work / "venv"
        uv = _uv()
        _run([uv, "venv", "--quiet", "--python", copy / "bin" / ("python" + recipe["python"]), venv])
        _run([uv, "pip", "install", "--quiet", "--python", venv / "bin" / "python", *recipe["requirements"]])
        _run([venv / "bin" / "python", EXAMPLES / "train_digits.py", work])
        (work / "expected.json").write_text(
            _run([venv / "bin" / "python", "-c", _PREDICT, work / "model.joblib"])
        )
        _run([sys.executable, "-m", "envserve", "env", "pack", venv, "-o", work / "old-sklearn.tar.gz"])
        if recipe["venv_pack"]:
            # venv-pack's format: a venv from the machine's own Python (venv-pack never includes it)
            venv2 = work / "venv2"
            _run([uv, "venv", "--quiet", "--python", python, venv2])
            python2 = venv2 / "bin" / "python"
            _run([uv, "pip", "install", "--quiet", "--python", python2, *recipe["requirements"]])
            _run([Path(sys.executable).parent / "venv-pack", "-p", venv2, "-o", work / "venv-pack.tar.gz"])
        shutil.rmtree(copy)
        for path in out.values():
            os.replace(work / path.name, path)
        shutil.rmtree(work, ignore_errors=True)
        return out


def expected(paths: Dict[str, Path]) -> dict:
    return json.loads(paths["expected"].read_text())


def write_model_folder(output: Path, name: str = "mnist-svm-py38") -> Path:
    paths = old_sklearn()
    output.mkdir(parents=True, exist_ok=True)
    for key, target in (("tarball", "old-sklearn.tar.gz"), ("model", "model.joblib")):
        tmp = output / ("%s.%d.tmp" % (target, os.getpid()))  # test processes may write it at once
        shutil.copy(paths[key], tmp)
        os.replace(tmp, output / target)
    settings = {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"environment_tarball": "./old-sklearn.tar.gz"},
    }
    (output / "model-settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    return output


if __name__ == "__main__":
    print(write_model_folder(Path(sys.argv[1])))
