"""envserve's pickle loader (:mod:`envserve.runtimes.pickles`): real model files load as joblib and pickle
load them; a corpus of attacks (tests/fixtures/pickles/attacks.py), each of which would create a marker
file or crash the process if it got through, is refused — under the default policy and under an operator
policy that allows the callables gadget chains are built from; mutated real files are refused or loaded,
never executed, never crashed."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from envserve.errors import ModelLoadError, UnsafePickle
from envserve.runtimes.pickles import Policy, load_pickle, looks_like_pickle, model_files

ROOT = Path(__file__).resolve().parents[3]
ATTACKS = ROOT / "tests" / "fixtures" / "pickles" / "attacks.py"
SKLEARN = Policy.for_model(["sklearn"])


class _System:
    """Unpickling this runs ``os.system`` (the classic pickle attack)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, ("touch %s" % self.marker,))


@pytest.fixture(scope="module")
def pipeline():
    x, y = load_iris(return_X_y=True)
    return make_pipeline(
        FunctionTransformer(np.log1p),
        StandardScaler(),
        RandomForestClassifier(n_estimators=3, random_state=0),
    ).fit(x, y)


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a model file ran code"


def _values(pipeline):
    return {
        "model": pipeline,
        "floats": np.arange(1000.0).reshape(10, 100),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "strings": np.array(["a", "bcd"]),
        "records": np.zeros(3, dtype=[("a", "f8"), ("b", "i4")]),
        "subarray": np.zeros((2,), dtype=(np.float64, (2, 3))),
        "times": np.array(["2020-01-01"], dtype="datetime64[ns]"),
        "objects": np.array([1, "a", None], dtype=object),
        "sparse": __import__("scipy.sparse").sparse.csr_matrix(np.eye(3)),
        "scalar": np.float32(3.5),
        "random": np.random.RandomState(0),
        "frame": pd.DataFrame(
            {"a": [1, 2], "s": ["x", "y"], "t": pd.to_datetime(["2020-01-01", "2021-01-01"])}
        ),
        "categorical": pd.Categorical(["a", "b"]),
        "text": CountVectorizer().fit(["apple banana", "banana cherry"]),
    }


def _same(got, expected):
    x, _ = load_iris(return_X_y=True)
    assert (got["model"].predict(x) == expected["model"].predict(x)).all()
    assert type(got["sparse"]) is type(expected["sparse"])
    assert got["sparse"].toarray().tolist() == expected["sparse"].toarray().tolist()
    for key in ("floats", "fortran", "strings", "records", "subarray", "times", "objects"):
        assert type(got[key]) is type(expected[key]) and got[key].dtype == expected[key].dtype, key
        assert got[key].tolist() == expected[key].tolist(), key
    assert got["fortran"].flags.f_contiguous
    assert got["floats"].flags.writeable  # as joblib.load gives them: models may write to their arrays
    assert got["scalar"] == expected["scalar"] and got["frame"].equals(expected["frame"])
    assert got["text"].transform(["banana"]).toarray().tolist() == [[0, 1, 0]]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickles_of_every_protocol_load_as_pickle_loads_them(tmp_path, pipeline, protocol):
    values = _values(pipeline)
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(values, protocol=protocol))
    _same(load_pickle(str(path), SKLEARN), values)


@pytest.mark.parametrize("compress", [0, 3, ("gzip", 3), ("bz2", 3), ("xz", 3), ("lzma", 3)])
def test_joblib_files_load_as_joblib_loads_them_compressed_or_not(tmp_path, pipeline, compress):
    values = _values(pipeline)
    path = tmp_path / "model.joblib"
    joblib.dump(values, path, compress=compress)
    _same(load_pickle(str(path), SKLEARN), values)
    _same(joblib.load(path), values)


@pytest.mark.parametrize("policy", ["default", "permissive"])
def test_every_attack_of_the_corpus_is_refused_and_nothing_runs_or_crashes(tmp_path, policy):
    """In a process of its own, so a crash (a forged dtype read by numpy) fails the test, not pytest."""
    marker = tmp_path / "PWNED"
    result = subprocess.run(
        [sys.executable, str(ATTACKS), str(marker), str(tmp_path), policy],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert result.returncode == 0, "the loading process died (%s): %s" % (result.returncode, result.stderr)
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(lines) >= 24, result.stdout
    for kind, name, outcome in lines:
        assert outcome.startswith("refused "), (kind, name, outcome)
        assert "attack" in outcome  # names the file
    assert not marker.exists(), "an attack ran"
    outcomes = {name: outcome for _, name, outcome in lines}
    assert "posix.system" in outcomes["posix.system"] and "pickle_allow" in outcomes["posix.system"]
    assert "flags 63, numpy's 0" in outcomes["integers flagged as objects"]
    assert "legacy array format" in outcomes["joblib legacy wrapper under numpy_pickle"]
    assert "reached through a module" in outcomes["dotted name through a module"]
    if policy == "permissive":  # attrgetter allowed: the getter it builds still cannot be called
        assert "would call a attrgetter object" in outcomes["attrgetter to __globals__"]


def test_the_forged_dtype_state_is_what_the_loader_refuses_numpy_would_accept_it():
    """What the corpus' forgery does when numpy reads it alone: integers become object pointers."""
    forged = np.dtype("i8", False, True)
    forged.__setstate__((3, "<", None, None, None, -1, -1, 63))
    assert forged.hasobject and not np.dtype("i8").hasobject


def test_an_attack_after_an_array_inside_an_object_array_or_compressed_is_refused(tmp_path, pipeline, marker):
    plain = tmp_path / "after-array.joblib"
    joblib.dump({"model": pipeline, "x": np.arange(100.0), "evil": _System(marker)}, plain)
    nested = tmp_path / "object-array.joblib"
    joblib.dump({"x": np.ones(7), "rows": np.array([1, "a", _System(marker)], dtype=object)}, nested)
    compressed = tmp_path / "compressed.joblib"
    joblib.dump({"x": np.ones(7), "evil": _System(marker)}, compressed, compress=3)
    for path in (plain, nested, compressed):
        with pytest.raises(UnsafePickle, match=r"posix\.system") as caught:
            load_pickle(str(path), SKLEARN)
        assert str(path) in str(caught.value) and isinstance(caught.value, ModelLoadError)


def test_truncated_and_corrupt_files_are_refused_as_such(tmp_path, pipeline):
    data = pickle.dumps(pipeline, protocol=4)
    (tmp_path / "half.pkl").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04not a pickle at all")
    (tmp_path / "empty.pkl").write_bytes(b"")
    joblib.dump({"x": np.arange(1000.0)}, tmp_path / "cut.joblib")
    (tmp_path / "cut.joblib").write_bytes((tmp_path / "cut.joblib").read_bytes()[:3000])
    for name in ("half.pkl", "junk.pkl", "empty.pkl", "cut.joblib"):
        with pytest.raises(UnsafePickle, match="could not be unpickled") as caught:
            load_pickle(str(tmp_path / name), SKLEARN)
        assert name in str(caught.value)


def test_a_package_rule_admits_its_classes_not_what_it_re_exports(tmp_path, monkeypatch, marker):
    """``"pkg.*"`` allows the classes *defined* in pkg: a function it imports (subprocess.check_output,
    as scikit-learn's test helpers do) or a class it re-exports (subprocess.Popen) is still refused."""
    package = tmp_path / "trustedpkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from subprocess import Popen, check_output\n\nclass Weights:\n    def __init__(self, w):\n"
        "        self.w = w\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    policy = Policy.for_model(["sklearn"], ["trustedpkg.*"])
    ok = b"\x80\x02ctrustedpkg\nWeights\nK\x05\x85R."
    (tmp_path / "ok.pkl").write_bytes(ok)
    assert load_pickle(str(tmp_path / "ok.pkl"), policy).w == 5
    cmd = ("touch %s" % marker).encode()
    for name in ("check_output", "Popen"):
        attack = b"\x80\x02ctrustedpkg\n" + name.encode() + b"\n(X\x07\x00\x00\x00/bin/shX\x02\x00\x00\x00-cX"
        attack += len(cmd).to_bytes(4, "little") + cmd + b"l\x85R."
        (tmp_path / "attack.pkl").write_bytes(attack)
        with pytest.raises(
            UnsafePickle, match=r"trustedpkg\.%s \((a function|a class defined in subprocess)\)" % name
        ):
            load_pickle(str(tmp_path / "attack.pkl"), policy)


def test_code_pickled_by_value_loads_only_when_the_operator_trusts_model_code(tmp_path):
    import cloudpickle

    path = tmp_path / "model.pkl"
    path.write_bytes(cloudpickle.dumps(FunctionTransformer(lambda x: x + 1)))
    with pytest.raises(UnsafePickle, match=r"cloudpickle\.cloudpickle\."):
        load_pickle(str(path), SKLEARN)
    model = load_pickle(str(path), Policy.for_model(["sklearn"], code=True))
    assert model.func(1) == 2


def test_memory_exhaustion_through_allowed_classes_is_refused(tmp_path):
    # bytes(2**40), an object array of 10**10 Nones: each would exhaust memory if it were built
    attacks = {
        "bytes": b"\x80\x02c__builtin__\nbytes\n\x8a\x06\x00\x00\x00\x00\x00\x01\x85R.",
        "reconstruct": b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        b"\x8a\x05\x00\xe4\x0bT\x02\x85C\x01O\x87R.",
    }
    for name, data in attacks.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UnsafePickle, match=r"a buffer of that size|elements with no data"):
            load_pickle(str(tmp_path / name), SKLEARN)


def test_numpy_and_pandas_io_classes_are_refused(tmp_path):
    for module, name in [
        ("numpy", "memmap"),
        ("numpy.lib.npyio", "NpzFile"),
        ("numpy", "load"),
        ("pandas.io.pytables", "HDFStore"),
        ("pandas", "read_pickle"),
        ("scipy.io", "loadmat"),
        ("builtins", "getattr"),
        ("builtins", "range"),
    ]:
        (tmp_path / "x.pkl").write_bytes(b"\x80\x02c%s\n%s\n." % (module.encode(), name.encode()))
        with pytest.raises(UnsafePickle, match=r"%s\.%s" % (module, name)):
            load_pickle(str(tmp_path / "x.pkl"), SKLEARN)


def test_model_files_finds_pickles_by_name_or_by_their_first_bytes(tmp_path):
    (tmp_path / "model.joblib").write_bytes(b"whatever")
    (tmp_path / "weights").write_bytes(pickle.dumps([1, 2], protocol=4))
    (tmp_path / "model.json").write_text("{}")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "x.pkl").write_bytes(b"")
    assert looks_like_pickle(str(tmp_path / "weights"))
    assert model_files(str(tmp_path)) == [str(tmp_path / "model.joblib"), str(tmp_path / "weights")]


def test_mutated_real_model_files_are_refused_or_loaded_never_run_never_crash(tmp_path):
    """3,000 mutations (flipped bytes, cuts, splices of attack opcodes) of real scikit-learn and joblib
    files, loaded in a process of its own: each loads or is refused; none runs the marker command, none
    raises anything else, and the process does not crash (numpy's own dtype and array state setters
    crash on some of these; the loader never hands them unchecked state)."""
    marker = tmp_path / "PWNED"
    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            str(ATTACKS.parent / "fuzz.py"),
            str(marker),
            str(tmp_path),
            "7",
            "3000",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert result.returncode == 0, "the loading process died (%s): %s" % (
        result.returncode,
        result.stderr[-2000:],
    )
    assert result.stdout.splitlines()[-1].endswith(" error 0"), result.stdout[-3000:]
    loaded, refused = (int(w) for w in result.stdout.split()[-5:-2:2])
    assert loaded > 0 and refused > 0, result.stdout  # the mutations reach both outcomes
    assert not marker.exists(), "a mutated file ran the marker command"
