"""Every command of ``envserve`` in process (click's CliRunner): its success path and its error paths,
with the exit code from the one table (envserve.cli.EXIT_CODES) and a one-line message, no traceback."""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from click.testing import CliRunner

from envserve.cli import EXIT_CODES, cli, exit_code
from envserve.errors import (
    Cancelled,
    EnvironmentSetupError,
    EnvserveError,
    InvalidManifest,
    NoScanner,
    SettingsError,
    SpecError,
    VulnerabilitiesFound,
)
from tests.conftest import ROOT, write_model

SCAN = ROOT / "tests" / "fixtures" / "scan"


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("ENVSERVE_PLATFORM", str(tmp_path / "platform.json"))
    monkeypatch.setenv("ENVSERVE_ENV_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()

    def invoke(*args, **kwargs):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False, **kwargs)

    return invoke


def _error(result, code, text):
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "envserve: error: " in result.output and text in result.output, result.output
    assert "Traceback" not in result.output


def test_exit_code_table_is_ordered_and_complete():
    assert exit_code(SettingsError("x")) == 3 and exit_code(SpecError("x")) == 4
    assert exit_code(NoScanner("x")) == 5 and exit_code(VulnerabilitiesFound("x")) == 1
    assert exit_code(Cancelled("x")) == 1 and exit_code(EnvironmentSetupError("x")) == 4
    assert exit_code(InvalidManifest("x")) == 4 and exit_code(EnvserveError("x")) == 4
    # a general class never shadows a more specific one listed after it
    for i, (cls, _) in enumerate(EXIT_CODES):
        assert not any(issubclass(later, cls) for later, _ in EXIT_CODES[i + 1 :]), cls


def test_help_and_version(run):
    result = run("--help")
    assert result.exit_code == 0
    for group in ("serve", "env", "deploy", "platform", "image"):
        assert group in result.output
    assert run("--version").exit_code == 0


def test_serve_with_invalid_settings_exits_3(run, tmp_path):
    _error(run("serve", tmp_path, "--http-port", "70000"), 3, "http_port must be a port number")
    (tmp_path / "settings.json").write_text("{not json")
    _error(run("serve", tmp_path), 3, "settings.json is not valid JSON")


def test_usage_errors_are_clicks_exit_2(run):
    assert run("serve", "--http-port", "eighty").exit_code == 2
    assert run("nonsense").exit_code == 2


def test_env_list_prune_on_an_empty_cache(run):
    assert run("env", "list").output.strip() == "no cached environments"
    assert json.loads(run("env", "list", "--json").output) == []
    result = run("env", "prune", "--all")
    assert result.exit_code == 0 and "0 environment(s) removed" in result.output


def test_env_pack_of_something_that_is_not_a_venv(run, tmp_path):
    (tmp_path / "not-a-venv").mkdir()
    result = run("env", "pack", tmp_path / "not-a-venv", "-o", tmp_path / "out.tar.gz")
    assert result.exit_code == 4 and "envserve: error:" in result.output and "Traceback" not in result.output


def test_env_prepare_reports_each_model_and_fails_at_the_end(run, tmp_path):
    write_model(tmp_path / "repo", "ok", {"name": "ok", "parameters": {"environment_path": sys.prefix}})
    write_model(tmp_path / "repo", "bad", {"name": "bad", "parameters": {"environment_path": "/nowhere"}})
    result = run("env", "prepare", tmp_path / "repo")
    assert "ok: " in result.output and "Python %d.%d" % sys.version_info[:2] in result.output
    _error(result, 4, "1 environment(s) could not be prepared: bad")


def test_deploy_manifest_validate_and_their_errors(run, tmp_path):
    result = run("deploy", "manifest", "--name", "iris", "--model-uri", "s3://bucket/iris")
    assert result.exit_code == 0
    assert yaml.safe_load(result.output)["kind"] == "SeldonDeployment"
    out = tmp_path / "m.yaml"
    assert run("deploy", "manifest", "--name", "iris", "-o", out).exit_code == 0
    result = run("deploy", "validate", out)
    assert result.exit_code == 0 and "1 file(s) valid" in result.output
    _error(run("deploy", "manifest", "--name", "Not_A_Label"), 3, "not a DNS-1123 label")
    doc = yaml.safe_load(out.read_text())
    doc["spec"]["predictors"][0]["replicas"] = "three"
    out.write_text(yaml.safe_dump(doc))
    _error(run("deploy", "validate", out), 4, "the manifest is not valid")


def test_deploy_wizard_from_an_answers_file_and_without_answers(run, tmp_path):
    answers = tmp_path / "answers.yaml"
    out = tmp_path / "wizard.yaml"
    answers.write_text(
        yaml.safe_dump(
            {
                "source": "uri",
                "model_uri": "s3://bucket/m",
                "target": "kserve",
                "name": "m",
                "output": str(out),
            }
        )
    )
    result = run("deploy", "wizard", "--answers", answers, "--yes")
    assert result.exit_code == 0 and out.exists() and "wrote %s (validated)" % out in result.output
    result = run("deploy", "wizard", "--source", "uri", input="")  # no terminal to ask on
    _error(result, 3, "no answer for 'model_uri' and no terminal to ask on; pass --model-uri")


def test_platform_commands(run, tmp_path):
    result = run("platform", "set-image", "SKLEARN_SERVER", "corp/sk:1.0", "--protocol", "v2")
    assert result.exit_code == 0 and "corp/sk:1.0" in result.output
    assert "corp/sk:1.0" in run("platform", "show").output
    exported = run("platform", "export", "--configmap").output
    assert yaml.safe_load(exported)["kind"] == "ConfigMap"
    result = run("platform", "import", ROOT / "tests" / "fixtures" / "deploy" / "seldon-config.yaml")
    assert result.exit_code == 0 and "imported" in result.output
    _error(run("platform", "set-image", "SKLEARN_SERVER", "no-tag", "--protocol", "v2"), 3, "has no tag")


def test_image_dockerfile_and_its_spec_error(run, tmp_path):
    write_model(tmp_path / "repo", "m", {"name": "m", "implementation": "sklearn"})
    result = run("image", "dockerfile", tmp_path / "repo")
    assert result.exit_code == 0 and "FROM " in result.output
    write_model(tmp_path / "bad", "m", {"name": "m", "parameters": {"environment": "./conda.yaml"}})
    (tmp_path / "bad" / "m" / "conda.yaml").write_text("dependencies: [\n")
    _error(run("image", "dockerfile", tmp_path / "bad"), 4, "conda.yaml is not valid YAML")


def test_image_build_without_the_builder_asked_for(run, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no podman, buildah or docker
    write_model(tmp_path / "repo", "m", {"name": "m", "implementation": "sklearn"})
    _error(run("image", "build", tmp_path / "repo", "-t", "localhost/x:1"), 4, "no container builder found")


def test_image_scan_reports_and_exit_codes(run, tmp_path, monkeypatch):
    result = run("image", "scan", "img", "--report", SCAN / "trivy.json", "--fail-on", "CRITICAL")
    assert result.exit_code == 0 and "CVE-2025-0002" in result.output  # nothing CRITICAL in this report
    result = run("image", "scan", "img", "--report", SCAN / "trivy.json", "--fail-on", "LOW")
    _error(result, 1, "vulnerabilities at or above LOW")
    monkeypatch.setenv("PATH", str(tmp_path))
    _error(run("image", "scan", "img"), 5, "trivy")


def test_image_sbom_of_a_missing_environment(run, tmp_path):
    result = run("image", "sbom", tmp_path / "nowhere", "-o", tmp_path / "sbom.json", "--environment")
    assert result.exit_code == 4 and "envserve: error:" in result.output and "Traceback" not in result.output


def test_deploy_target_choices_are_the_renderers_targets():
    """The CLI spells the targets out (importing the renderer would pull numpy into `envserve --help`);
    they must stay the renderer's."""
    from envserve.cli.deploy import deploy
    from envserve.deploy.manifest import TARGETS

    for command in ("manifest", "wizard"):
        (target,) = [p for p in deploy.commands[command].params if p.name == "target"]
        assert tuple(target.type.choices) == TARGETS, command


def test_serve_begins_the_default_and_the_repositorys_tarballs_before_the_server(tmp_path):
    """MLSERVER_ENV_TARBALL with a model fetched at run time (KServe, Seldon Core), and a repository model's
    own tarball: both start extracting before the server is imported; none without models to load."""
    from envserve.cli.serve import _begin_extractions
    from envserve.settings.server import ServerSettings
    from tests.unit.environments.test_cache import _tiny_env_tarball, _work_dirs

    default = _tiny_env_tarball(tmp_path / "default.tar.gz")
    repo = tmp_path / "repo"
    own = write_model(repo, "m", {"name": "m", "parameters": {"environment_tarball": "./own.tar.gz"}})
    _tiny_env_tarball(own / "own.tar.gz", conda_unpack=True)  # another size: not taken for a copy
    overrides = {"env_tarball": default, "environments_dir": str(tmp_path / "cache")}
    cache = _begin_extractions(ServerSettings.from_sources(str(repo), overrides))
    try:
        assert sorted(cache._early) == sorted([default, str(own / "own.tar.gz")])
    finally:
        cache.drop_early()
    assert not cache._early and _work_dirs(tmp_path / "cache" / "tmp") == []
    overrides["load_models_at_startup"] = False
    assert not _begin_extractions(ServerSettings.from_sources(str(repo), overrides))._early
