"""Manifests: golden files, schema validation (ours and upstream CRDs), image precedence, platform files."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
import yaml

from envserve.deploy.manifest import DeploymentSpec, dump_yaml, render
from envserve.deploy.platform import PlatformConfig
from envserve.deploy.validate import validate_documents
from envserve.errors import SettingsError
from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "golden" / "deploy"
SEPARATE = ROOT.parent / "shared" / "reference" / "crds"
CONFIGMAP = ROOT / "tests" / "fixtures" / "deploy" / "seldon-config.yaml"

CASES = {
    "seldon-mlflow": dict(target="seldon", model_uri="s3://models/digits/1", secret="s3-creds", replicas=2),
    "seldon-override": dict(
        target="seldon",
        model_uri="s3://models/digits/1",
        image="registry.local/mlflowserver:1.18.2-fix",
        cpu="500m",
        memory="1Gi",
    ),
    "seldon-sklearn-v2": dict(
        target="seldon", server_type="SKLEARN_SERVER", protocol="v2", model_uri="gs://b/m"
    ),
    "seldon-envserve": dict(
        target="seldon",
        server_type="ENVSERVE",
        protocol="v2",
        model_uri="s3://models/digits/1",
        secret="s3-creds",
    ),
    "kserve-mlflow": dict(
        target="kserve", protocol="v2", model_uri="s3://models/digits/1", secret="s3-creds"
    ),
    "kserve-envserve": dict(
        target="kserve",
        server_type="ENVSERVE",
        protocol="v2",
        model_uri="s3://models/digits/1",
        cpu="1",
        memory="2Gi",
        max_replicas=4,
    ),
    "seldon2-sklearn": dict(
        target="seldon2",
        server_type="SKLEARN_SERVER",
        model_uri="s3://models/digits/1",
        secret="s3-creds",
        replicas=2,
        cpu="1",
        memory="1Gi",
    ),
    "k8s-envserve": dict(
        target="k8s",
        server_type="ENVSERVE",
        protocol="v2",
        model_uri="models:/digits/1",
        secret="mlflow-creds",
        replicas=2,
        max_replicas=6,
        cpu="1",
        memory="1Gi",
    ),
}


def _platform() -> PlatformConfig:
    return PlatformConfig.from_configmap(CONFIGMAP.read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_manifests(case):
    text = dump_yaml(render(DeploymentSpec(name="digits", namespace="models", **CASES[case]), _platform()))
    golden = GOLDEN / (case + ".yaml")
    if os.environ.get("ENVSERVE_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.exists(), "missing golden file; create it with ENVSERVE_UPDATE_GOLDEN=1"
    assert text == golden.read_text()


@functools.lru_cache(maxsize=None)
def _upstream_schema(crd_file: str, version: str) -> dict:
    path = SEPARATE / crd_file
    assert path.exists(), "reference CRD %s missing (../shared/reference/crds)" % path
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB files
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return served["schema"]["openAPIV3Schema"]


UPSTREAM = {
    "SeldonDeployment": ("machinelearning.seldon.io_seldondeployments.yaml", "v1"),
    "InferenceService": ("serving.kserve.io_inferenceservices.yaml", "v1beta1"),
    "ServingRuntime": ("serving.kserve.io_servingruntimes.yaml", "v1alpha1"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_manifest_validates_against_shipped_and_upstream_schemas(case):
    import jsonschema

    docs = render(DeploymentSpec(name="digits", namespace="models", **CASES[case]), _platform())
    assert validate_documents(docs) == []
    for doc in docs:
        if doc["kind"] in UPSTREAM:
            schema = _upstream_schema(*UPSTREAM[doc["kind"]])
            errors = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
            assert errors == [], [e.message for e in errors]


def test_validation_errors_point_at_the_field():
    docs = render(
        DeploymentSpec(name="digits", target="k8s", server_type="ENVSERVE", protocol="v2"), _platform()
    )
    docs[0]["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    docs[1]["spec"]["ports"][0]["port"] = "eighty"
    errors = validate_documents(docs, "edited.yaml")
    assert any(
        "document 1 (Deployment digits): spec.template.spec.containers[0].ports[0].containerPort" in e
        for e in errors
    ), errors
    assert any("document 2 (Service digits): spec.ports[0].port" in e for e in errors), errors
    seldon = render(DeploymentSpec(name="digits", model_uri="s3://m"), _platform())
    seldon[0]["spec"]["predictors"][0]["graph"]["modelURI"] = "typo"
    (error,) = validate_documents(seldon)
    assert (
        "spec.predictors[0].graph: Additional properties are not allowed ('modelURI' was unexpected)" in error
    )


def _annotations(docs):
    main = next(d for d in docs if d["kind"] in ("SeldonDeployment", "Deployment", "InferenceService"))
    return main["metadata"]["annotations"]


def test_image_precedence_and_the_recorded_reason():
    platform = _platform()
    base = dict(name="digits", model_uri="s3://m")
    cases = [
        (dict(), "registry.corp.example/seldon/mlflowserver:1.17.1", "platform default"),
        (dict(model_image="corp/mlflow:model"), "corp/mlflow:model", "model-level setting"),
        (
            dict(model_image="corp/mlflow:model", image="corp/mlflow:flag"),
            "corp/mlflow:flag",
            "explicit override (flag or wizard)",
        ),
        (
            dict(server_type="ENVSERVE", protocol="v2"),
            "docker.io/envserve/envserve:0.1.0",
            "built-in default",
        ),
    ]
    for extra, image, reason in cases:
        docs = render(DeploymentSpec(**base, **extra), platform)
        notes = _annotations(docs)
        assert (notes["envserve.io/image"], notes["envserve.io/image-source"]) == (image, reason)
    # Seldon: the override container appears only when the chosen image differs from the platform default
    plain = render(DeploymentSpec(**base), platform)[0]["spec"]["predictors"][0]
    assert "componentSpecs" not in plain
    same = render(DeploymentSpec(**base, image="registry.corp.example/seldon/mlflowserver:1.17.1"), platform)
    assert "componentSpecs" not in same[0]["spec"]["predictors"][0]
    other = render(DeploymentSpec(**base, image="corp/mlflow:2"), platform)[0]["spec"]["predictors"][0]
    (container,) = other["componentSpecs"][0]["spec"]["containers"]
    assert container == {"name": "digits", "image": "corp/mlflow:2"}
    assert other["graph"]["implementation"] == "MLFLOW_SERVER"
    # without a platform file the built-in default applies
    docs = render(DeploymentSpec(**base), PlatformConfig({}))
    assert _annotations(docs)["envserve.io/image-source"] == "built-in default"


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(name="Digits_Prod"), "not a DNS-1123 label"),
        (dict(name="digits", namespace="-bad"), "namespace '-bad'"),
        (dict(name="digits", replicas=-1), "replicas must be a whole number"),
        (
            dict(name="digits", target="seldon2", model_uri="models:/digits/1"),
            "Seldon Core 2 needs --model-uri",
        ),
        (dict(name="digits", target="seldon2"), "storage location"),
        (dict(name="digits", cpu="lots"), "cpu 'lots' is not a Kubernetes quantity"),
        (dict(name="digits", image="no-tag"), "has no tag"),
        (dict(name="digits", target="nomad"), "target 'nomad' is not one of seldon, kserve, seldon2, k8s"),
        (dict(name="digits", server_type="PYTORCH_SERVER"), "no image for server type PYTORCH_SERVER"),
    ],
)
def test_invalid_specs(fields, message):
    with pytest.raises(SettingsError, match=message):
        render(DeploymentSpec(**fields), PlatformConfig({}))


def test_configmap_import_export_round_trip(tmp_path):
    platform = PlatformConfig.from_configmap(CONFIGMAP.read_text())
    original = json.loads(yaml.safe_load(CONFIGMAP.read_text())["data"]["predictor_servers"])
    assert platform.predictor_servers == original
    platform.save(str(tmp_path / "platform.json"))
    loaded = PlatformConfig.load(str(tmp_path / "platform.json"))
    exported = dump_yaml([loaded.to_configmap()])
    again = PlatformConfig.from_configmap(exported)
    assert again.predictor_servers == original
    doc = yaml.safe_load(exported)
    assert (doc["metadata"]["name"], doc["metadata"]["namespace"]) == ("seldon-config", "seldon-system")
    assert validate_documents([doc]) == []
    again.set_image("MLFLOW_SERVER", "seldon", "registry.local:5000/mlflowserver:1.18.0")
    assert again.image_for("MLFLOW_SERVER", "seldon") == "registry.local:5000/mlflowserver:1.18.0"
    assert again.predictor_servers["MLFLOW_SERVER"]["protocols"]["seldon"] == {
        "image": "registry.local:5000/mlflowserver",
        "defaultImageVersion": "1.18.0",
    }
    with pytest.raises(SettingsError, match="holds no ConfigMap"):
        PlatformConfig.from_configmap("kind: Secret\n")
    with pytest.raises(SettingsError, match="needs string 'image' and 'defaultImageVersion'"):
        PlatformConfig.from_configmap(
            'kind: ConfigMap\ndata:\n  predictor_servers: \'{"X": {"protocols": {"v2": {"image": 1}}}}\'\n'
        )


def test_golden_files_are_all_used():
    assert sorted(p.stem for p in GOLDEN.glob("*.yaml")) == sorted(CASES)


def test_templates_are_files():
    templates = Path(__file__).resolve().parents[3] / "src" / "envserve" / "deploy" / "templates"
    assert sorted(p.name for p in templates.iterdir()) == [
        "k8s.yaml.j2",
        "kserve.yaml.j2",
        "seldon.yaml.j2",
        "seldon2.yaml.j2",
    ]


def test_the_documented_cluster_serving_runtime_validates():
    """docs/deploy.md's ClusterServingRuntime for the base image, as written, against KServe's schema; a
    field of the wrong type in it is caught (the check can fail)."""
    import re

    text = (ROOT / "docs" / "deploy.md").read_text()
    block = re.search(r"<!-- manifest: kserve -->\n```yaml\n(.*?)```", text, re.S).group(1)
    docs = [d for d in yaml.safe_load_all(block) if d]
    assert [d["kind"] for d in docs] == ["ClusterServingRuntime"]
    assert validate_documents(docs, "deploy.md") == []
    assert docs[0]["metadata"]["annotations"]["serving.kserve.io/server-type"] == "mlserver"
    docs[0]["spec"]["supportedModelFormats"][0]["autoSelect"] = "yes"
    assert any("autoSelect" in e for e in validate_documents(docs, "deploy.md"))


def test_seldon_core_2_server_and_model_are_checked_against_envserve_schemas():
    docs = render(DeploymentSpec(name="digits", namespace="models", **CASES["seldon2-sklearn"]), _platform())
    assert [d["kind"] for d in docs] == ["Server", "Model"]
    assert docs[0]["spec"]["podSpec"]["containers"][0]["name"] == "mlserver"  # merged into MLServer's pod
    assert docs[1]["spec"]["server"] == docs[0]["metadata"]["name"]
    docs[0]["spec"]["replicas"] = "two"
    docs[1]["spec"]["storageUri"] = ""
    errors = validate_documents(docs, "m.yaml")
    assert any("Server envserve-digits" in e and "spec.replicas" in e for e in errors), errors
    assert any("Model digits" in e and "spec.storageUri" in e for e in errors), errors


def test_the_documented_seldon_core_2_manifest_is_what_the_command_renders():
    import re

    text = (ROOT / "docs" / "deploy.md").read_text()
    documented = [
        d
        for d in yaml.safe_load_all(
            re.search(r"<!-- manifest: seldon2 -->\n```yaml\n(.*?)```", text, re.S).group(1)
        )
    ]
    spec = DeploymentSpec(
        name="digits",
        target="seldon2",
        server_type="SKLEARN_SERVER",
        model_uri="s3://models/digits/1",
        secret="s3-creds",
        image="registry.corp/envserve-base:1",
    )
    rendered = render(spec, PlatformConfig())
    assert [(d["kind"], d["metadata"]["name"], d["spec"]) for d in rendered] == [
        (d["kind"], d["metadata"]["name"], d["spec"]) for d in documented
    ]
    assert "--target seldon2 --name digits --server-type SKLEARN_SERVER" in text
