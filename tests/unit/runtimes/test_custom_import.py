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


_MLSERVER_RUNTIME = """
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceResponse


class CatLike(MLModel):
    async def load(self):
        return True

    async def predict(self, payload):
        data = NumpyCodec.decode_input(payload.inputs[0])
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("out", data * 2)])
"""


def test_an_mlserver_runtime_named_mlserver_something_loads_when_it_is_installed_or_in_the_folder(
    tmp_path, monkeypatch
):
    """MLServer's runtime packages envserve does not build in (mlserver_alibi_detect, a team's own
    mlserver_xyz) are users' code too."""
    import numpy as np

    from envserve.protocol.v2 import InferenceRequest, RequestInput
    from envserve.runtimes import create_runtime

    installed = tmp_path / "site"
    (installed / "mlserver_catlike").mkdir(parents=True)
    (installed / "mlserver_catlike" / "__init__.py").write_text(_MLSERVER_RUNTIME)
    monkeypatch.syspath_prepend(str(installed))
    folder = tmp_path / "folder-model"
    folder.mkdir()
    (folder / "mlserver_local.py").write_text(_MLSERVER_RUNTIME)
    for implementation, where in (
        ("mlserver_catlike.CatLike", tmp_path / "installed-model"),
        ("mlserver_local.CatLike", folder),
    ):
        where.mkdir(exist_ok=True)
        settings = ModelSettings.from_dict({"name": "m", "implementation": implementation}, folder=str(where))
        runtime = create_runtime(settings)
        runtime.load()
        try:
            x = np.array([1, 2], dtype=np.int64)
            answer = runtime.infer(InferenceRequest([RequestInput("x", [2], "INT64", x)]))
        finally:
            runtime.unload()
        assert answer.outputs[0].data.ravel().tolist() == [2, 4], implementation
    for name in [m for m in sys.modules if m.startswith(("mlserver_catlike", "mlserver_local"))]:
        del sys.modules[name]


def test_an_mlserver_runtime_that_is_not_installed_says_what_to_install(tmp_path):
    settings = ModelSettings.from_dict(
        {"name": "m", "implementation": "mlserver_alibi_explain.AlibiExplainRuntime"}, folder=str(tmp_path)
    )
    with pytest.raises(ModelLoadError) as info:
        resolve_runtime(settings)
    assert "mlserver_alibi_explain is not installed in the model's environment" in str(info.value)
    assert "pip install mlserver-alibi-explain" in str(info.value)
