from __future__ import annotations

import pytest

from envserve.environments.spec import read_spec
from envserve.errors import SpecError


def test_requirements_file_with_includes_and_options(tmp_path):
    (tmp_path / "base.txt").write_text("numpy==1.24.4\n")
    (tmp_path / "requirements.txt").write_text(
        "# comment\n-r base.txt\nscikit-learn==1.3.2  # pinned\n--extra-index-url https://example.invalid/simple\n"
    )
    spec = read_spec(str(tmp_path / "requirements.txt"), "3.10")
    assert spec.python == "3.10"
    assert spec.requirements == ["numpy==1.24.4", "scikit-learn==1.3.2"]
    assert spec.options == ["--extra-index-url https://example.invalid/simple"]


def test_requirements_next_to_python_env_yaml_take_its_python(tmp_path):
    (tmp_path / "python_env.yaml").write_text(
        "python: 3.8.18\nbuild_dependencies: [pip]\ndependencies: [-r requirements.txt]\n"
    )
    (tmp_path / "requirements.txt").write_text("mlflow==2.9.2\nscikit-learn==0.24.2\n")
    assert read_spec(str(tmp_path / "requirements.txt")).python == "3.8"
    spec = read_spec(str(tmp_path / "python_env.yaml"))
    assert spec.python == "3.8" and spec.requirements == ["mlflow==2.9.2", "scikit-learn==0.24.2"]


def test_conda_yaml_pip_section_and_conda_only_packages(tmp_path):
    ok = tmp_path / "conda.yaml"
    ok.write_text(
        "channels: [conda-forge]\ndependencies:\n- python=3.9.18\n- pip<=23.0\n- pip:\n  - mlflow==2.9.2\n"
        "  - scikit-learn==1.2.2\nname: mlflow-env\n"
    )
    spec = read_spec(str(ok))
    assert spec.python == "3.9" and spec.requirements == ["mlflow==2.9.2", "scikit-learn==1.2.2"]
    bad = tmp_path / "environment.yml"
    bad.write_text("dependencies:\n- python=3.10\n- cudatoolkit=11.8\n- libgomp\n- pip:\n  - torch\n")
    with pytest.raises(
        SpecError, match=r"conda packages that envserve cannot install from PyPI: cudatoolkit=11\.8, libgomp"
    ):
        read_spec(str(bad))


def test_digest_is_stable_and_order_independent(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("numpy\nscipy\n")
    b.write_text("scipy\n\nnumpy\n")
    assert read_spec(str(a), "3.8").digest() == read_spec(str(b), "3.8").digest()
    assert read_spec(str(a), "3.8").digest() != read_spec(str(a), "3.9").digest()


def test_unreadable_specs(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        read_spec(str(tmp_path / "nope.txt"))
    (tmp_path / "python_env.yaml").write_text("python: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        read_spec(str(tmp_path / "python_env.yaml"))
    (tmp_path / "python_env.yaml").write_text("python: two\n")
    with pytest.raises(SpecError, match="cannot read a Python version"):
        read_spec(str(tmp_path / "python_env.yaml"))
