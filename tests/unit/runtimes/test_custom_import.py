"""Users' runtime modules imported from model folders: each folder's own module, afresh, by reference."""

from __future__ import annotations

import sys

import pytest

from envserve.errors import ModelLoadError
from envserve.runtimes import resolve_runtime
from envserve.settings.model import ModelSettings

_RUNTIME = """
from envserve import Runtime
{extra}

class Model(Runtime):
    tag = {tag!r}

    def predict(self, request):
        return {{"tag": [self.tag]}}
"""


def _folder(tmp_path, name, tag, extra=""):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "runtimes.py").write_text(_RUNTIME.format(tag=tag, extra=extra))
    return ModelSettings.from_dict({"name": name, "implementation": "runtimes.Model"}, folder=str(folder))


@pytest.fixture(autouse=True)
def _forget_runtimes():
    yield
    for name in [m for m in sys.modules if m == "runtimes" or m.startswith(("runtimes.", "helper"))]:
        del sys.modules[name]


def test_two_folders_with_the_same_module_name_each_get_their_own(tmp_path):
    first = resolve_runtime(_folder(tmp_path, "a", "first"))
    second = resolve_runtime(_folder(tmp_path, "b", "second"))
    assert (first.tag, second.tag) == ("first", "second")
    assert sys.modules["runtimes"].Model is second
    assert resolve_runtime(_folder(tmp_path, "c", "third")).tag == "third"


def test_a_module_dropped_from_sys_modules_while_it_runs_still_loads(tmp_path):
    # what another importer did to the table once, mid-import (KeyError: 'runtimes' from importlib)
    extra = "import sys\ndel sys.modules['runtimes']"
    assert resolve_runtime(_folder(tmp_path, "a", "dropped", extra)).tag == "dropped"


def test_siblings_and_packages_in_the_model_folder_import(tmp_path):
    settings = _folder(tmp_path, "a", "sibling", "import helper\nassert helper.VALUE == 7")
    (tmp_path / "a" / "helper.py").write_text("VALUE = 7\n")
    assert resolve_runtime(settings).tag == "sibling"
    assert str(tmp_path / "a") not in sys.path  # the folder is on the path only while importing

    package = tmp_path / "b" / "runtimes"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "impl.py").write_text(_RUNTIME.format(tag="package", extra=""))
    settings = ModelSettings.from_dict(
        {"name": "b", "implementation": "runtimes.impl.Model"}, folder=str(tmp_path / "b")
    )
    assert resolve_runtime(settings).tag == "package"


def test_a_module_that_fails_names_the_model_and_leaves_nothing_behind(tmp_path):
    settings = _folder(tmp_path, "a", "x", "raise RuntimeError('no GPU here')")
    with pytest.raises(
        ModelLoadError, match=r"model 'a': importing runtimes failed: RuntimeError: no GPU here"
    ):
        resolve_runtime(settings)
    assert "runtimes" not in sys.modules
