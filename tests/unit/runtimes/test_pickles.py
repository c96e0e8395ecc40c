"""The pickle scan reads real files written by pickle, joblib and cloudpickle; the malicious ones would
create a marker file when unpickled, and the tests assert it never exists."""

from __future__ import annotations

import os
import pickle

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from envserve.errors import ModelLoadError, UnsafePickle
from envserve.runtimes.pickles import AllowList, check_pickle, looks_like_pickle, model_files, pickle_globals

SKLEARN = AllowList.for_model(["sklearn"], None)


class _System:
    """Unpickling this runs ``os.system`` (the classic pickle attack)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, ("touch %s" % self.marker,))


class _Eval:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, ("open(%r, 'w').close()" % self.marker,))


@pytest.fixture(scope="module")
def pipeline():
    x, y = load_iris(return_X_y=True)
    return make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=3, random_state=0)).fit(x, y)


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "a scanned pickle ran code"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_scikit_learn_pickles_of_every_protocol_pass(tmp_path, pipeline, protocol):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(pipeline, protocol=protocol))
    found = check_pickle(str(path), SKLEARN)
    assert ("sklearn.pipeline", "Pipeline") in found
    assert ("sklearn.ensemble._forest", "RandomForestClassifier") in found


@pytest.mark.parametrize("compress", [0, 3, ("gzip", 3), ("bz2", 3), ("xz", 3), ("lzma", 3)])
def test_joblib_files_with_their_arrays_pass_compressed_or_not(tmp_path, pipeline, compress):
    """joblib writes raw array bytes between the opcodes; the scan skips them by the arrays' shapes."""
    path = tmp_path / "model.joblib"
    values = {
        "model": pipeline,
        "floats": np.arange(1000.0).reshape(10, 100),
        "strings": np.array(["a", "bcd"]),
        "records": np.zeros(3, dtype=[("a", "f8"), ("b", "i4")]),
        "times": np.array(["2020-01-01"], dtype="datetime64[ns]"),
        "objects": np.array([1, "a", None], dtype=object),
        "frame": pd.DataFrame(
            {"a": [1, 2], "b": [0.5, 1.5], "t": pd.to_datetime(["2020-01-01", "2021-01-01"])}
        ),
        "text": CountVectorizer().fit(["apple banana", "banana cherry"]),
    }
    joblib.dump(values, path, compress=compress)
    found = check_pickle(str(path), SKLEARN)
    assert ("sklearn.feature_extraction.text", "CountVectorizer") in found
    assert joblib.load(path)["floats"][9, 99] == 999.0  # the file is what joblib reads back


def test_os_system_through_reduce_is_refused_naming_the_global_and_file(tmp_path, marker):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_System(marker)))
    with pytest.raises(UnsafePickle) as caught:
        check_pickle(str(path), SKLEARN)
    assert str(path) in str(caught.value)
    assert "posix.system" in str(caught.value) and "pickle_allow" in str(caught.value)
    assert isinstance(caught.value, ModelLoadError)


def test_eval_through_reduce_is_refused_in_protocol_0_too(tmp_path, marker):
    for protocol in (0, 2, 5):
        path = tmp_path / ("model%d.pkl" % protocol)
        path.write_bytes(pickle.dumps(_Eval(marker), protocol=protocol))
        with pytest.raises(UnsafePickle, match=r"(__builtin__|builtins)\.eval"):
            check_pickle(str(path), SKLEARN)


def test_an_attack_nested_inside_a_joblib_file_is_found(tmp_path, pipeline, marker):
    """After a real model and a raw array, and inside an object array (a pickle nested in the file)."""
    plain = tmp_path / "after-array.joblib"
    joblib.dump({"model": pipeline, "x": np.arange(100.0), "evil": _System(marker)}, plain)
    nested = tmp_path / "object-array.joblib"
    joblib.dump({"x": np.ones(7), "rows": np.array([1, "a", _System(marker)], dtype=object)}, nested)
    compressed = tmp_path / "compressed.joblib"
    joblib.dump({"x": np.ones(7), "evil": _System(marker)}, compressed, compress=3)
    for path in (plain, nested, compressed):
        with pytest.raises(UnsafePickle, match=r"posix\.system"):
            check_pickle(str(path), SKLEARN)


def test_hand_written_stack_global_and_inst_opcodes_are_read(tmp_path, marker):
    # protocol 4 spelled by hand: the module and name strings memoised and fetched back (BINGET)
    stack_global = (
        b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x94h\x00h\x01\x86\x94." + b""
    )  # the tuple is junk: nothing is run, the import is what counts
    (tmp_path / "sg.pkl").write_bytes(stack_global)
    inst = b"(S'touch %s'\nios\nsystem\n." % str(marker).encode()
    (tmp_path / "inst.pkl").write_bytes(inst)
    assert pickle_globals(str(tmp_path / "sg.pkl")) == [("os", "system")]
    assert pickle_globals(str(tmp_path / "inst.pkl")) == [("os", "system")]
    for name in ("sg.pkl", "inst.pkl"):
        with pytest.raises(UnsafePickle, match=r"os\.system"):
            check_pickle(str(tmp_path / name), SKLEARN)


def test_truncated_and_corrupt_files_are_refused_as_such(tmp_path, pipeline):
    data = pickle.dumps(pipeline, protocol=4)
    (tmp_path / "half.pkl").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04not a pickle at all")
    (tmp_path / "empty.pkl").write_bytes(b"")
    for name in ("half.pkl", "junk.pkl", "empty.pkl"):
        with pytest.raises(UnsafePickle, match="not a complete pickle") as caught:
            check_pickle(str(tmp_path / name), SKLEARN)
        assert name in str(caught.value)


def test_extension_registry_imports_cannot_be_checked(tmp_path):
    (tmp_path / "ext.pkl").write_bytes(b"\x80\x02\x82\x01)R.")
    with pytest.raises(UnsafePickle, match="extension registry"):
        check_pickle(str(tmp_path / "ext.pkl"), SKLEARN)


def test_numpy_and_pandas_io_are_not_types_the_default_allows(tmp_path):
    allow = SKLEARN
    assert allow.allows("numpy", "ndarray") and allow.allows("numpy.core.multiarray", "_reconstruct")
    assert allow.allows("pandas.core.frame", "DataFrame") and allow.allows("scipy.sparse._csr", "csr_matrix")
    for module, name in [
        ("numpy", "load"),
        ("numpy", "memmap"),
        ("numpy.lib.npyio", "NpzFile"),
        ("numpy.ctypeslib", "load_library"),
        ("pandas.io.pytables", "HDFStore"),
        ("pandas", "read_pickle"),
        ("scipy.io", "loadmat"),
        ("builtins", "getattr"),
        ("subprocess", "Popen"),
    ]:
        assert not allow.allows(module, name), (module, name)


def test_the_allow_list_is_extended_by_package_or_by_global(tmp_path, marker):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_System(marker)))
    for rules in (["posix.*"], ["posix.system"], "posix.system"):
        assert check_pickle(str(path), AllowList.for_model(["sklearn"], rules)) == [("posix", "system")]
    with pytest.raises(UnsafePickle, match="must be a list"):
        AllowList.for_model(["sklearn"], {"posix": 1})


def test_cloudpickled_functions_need_cloudpickle_allowed(tmp_path):
    import cloudpickle

    path = tmp_path / "model.pkl"
    path.write_bytes(
        cloudpickle.dumps(make_pipeline(StandardScaler()).set_params(standardscaler__copy=lambda: 1))
    )
    with pytest.raises(UnsafePickle, match=r"cloudpickle\.cloudpickle\."):
        check_pickle(str(path), SKLEARN)
    check_pickle(str(path), AllowList.for_model(["sklearn"], ["cloudpickle.*"]))


def test_model_files_finds_pickles_by_name_or_by_their_first_bytes(tmp_path, pipeline):
    (tmp_path / "model.joblib").write_bytes(b"whatever")
    (tmp_path / "weights").write_bytes(pickle.dumps([1, 2], protocol=4))
    (tmp_path / "model.json").write_text("{}")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "x.pkl").write_bytes(b"")
    assert looks_like_pickle(str(tmp_path / "weights"))
    assert model_files(str(tmp_path)) == [str(tmp_path / "model.joblib"), str(tmp_path / "weights")]
