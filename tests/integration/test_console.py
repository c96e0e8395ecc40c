"""The web console in a real browser: Debian's Chromium driven by Playwright against a real envserve and a
real MLflow tracking server. Screenshots of each page go to test-artifacts/console/."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
import yaml

from envserve.deploy.validate import validate_documents
from tests.conftest import MLFLOW_SERVER_GROUP, ROOT, write_model

pytestmark = pytest.mark.slow

ARTIFACTS = ROOT / "test-artifacts" / "console"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed and scripts/setup could not install it (needs root + apt-get)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@MLFLOW_SERVER_GROUP
def test_console_end_to_end(tmp_path, start_server, browser, registered_digits, digits, digits_model_file):
    import joblib

    write_model(tmp_path, "mnist-svm", {"name": "mnist-svm", "implementation": "sklearn"}, digits_model_file)
    write_model(tmp_path, "spare", {"name": "spare", "implementation": "sklearn"}, digits_model_file)
    shadowed = {"environment": "server", "shadow_environment": "server", "shadow_sample": 1.0}
    write_model(
        tmp_path,
        "tiny-shadowed",
        {"name": "tiny-shadowed", "implementation": "sklearn", "parameters": shadowed},
        digits_model_file,
    )
    server = start_server(
        tmp_path,
        "--console",
        env={"MLFLOW_TRACKING_URI": registered_digits, "ENVSERVE_PLATFORM": str(tmp_path / "platform.json")},
    )
    page = browser.new_page(viewport={"width": 1366, "height": 860})
    page.goto(server.url + "/console/")

    # Models: the digits model READY, with its runtime
    page.wait_for_selector('tr[data-model="mnist-svm"] [data-state="READY"]')
    assert "SKLearnRuntime" in page.inner_text('tr[data-model="mnist-svm"]')
    # a model with a shadow environment: the console shows how its shadow agrees
    x, _ = digits
    body = {"inputs": [{"name": "x", "shape": [3, 64], "datatype": "FP64", "data": x[:3].ravel().tolist()}]}
    assert httpx.post(server.url + "/v2/models/tiny-shadowed/infer", json=body).status_code == 200
    shadow = page.wait_for_selector('[data-shadow="tiny-shadowed"]:has-text("agreement 100.0% of 3 rows")')
    assert "0 different" in shadow.inner_text()
    page.screenshot(path=str(ARTIFACTS / "models.png"), full_page=True)

    # Try it: a real digit gets the class the model gives in Python
    x, _ = digits
    expected = int(joblib.load(digits_model_file).predict(x[7:8])[0])
    page.click('nav button[data-tab="try"]')
    page.select_option("#try-model", "mnist-svm")
    page.wait_for_selector("#try-inputs fieldset")
    page.fill('#try-inputs [name="datatype"]', "FP64")
    page.fill('#try-inputs [name="shape"]', "[1, 64]")
    page.fill('#try-inputs [name="data"]', json.dumps(x[7:8].tolist()))
    page.click('#try-form button[type="submit"]')
    page.wait_for_selector('#try-result[data-status="ok"]')
    result = json.loads(page.inner_text("#try-result"))
    assert result["outputs"][0]["data"] == [expected]
    page.screenshot(path=str(ARTIFACTS / "try-it.png"), full_page=True)
    # ... and an error is shown as one
    page.fill('#try-inputs [name="shape"]', "[2, 64]")
    page.click('#try-form button[type="submit"]')
    page.wait_for_selector('#try-result[data-status="error"]')
    assert "needs 128 elements but data has 64" in page.inner_text("#try-result")

    # Unloading changes the state
    page.click('nav button[data-tab="models"]')
    page.click('tr[data-model="spare"] button[data-action="unload"]')
    page.wait_for_selector('tr[data-model="spare"] [data-state="UNAVAILABLE"]')
    assert httpx.post(server.url + "/v2/repository/index").json()[1]["state"] == "UNAVAILABLE"

    # Environments page renders (the cache may be empty here)
    page.click('nav button[data-tab="environments"]')
    page.wait_for_selector("#environments:not([hidden])")
    page.screenshot(path=str(ARTIFACTS / "environments.png"), full_page=True)

    # Deploy wizard from the MLflow registry: a manifest that validates
    page.click('nav button[data-tab="deploy"]')
    page.wait_for_selector('#dep-registry option:text("digits")', state="attached")
    page.select_option("#dep-registry", "digits")
    page.select_option("#dep-version", "@champion")
    page.select_option('#deploy-form [name="target"]', "k8s")
    page.select_option('#deploy-form [name="server_type"]', "ENVSERVE")
    page.select_option('#deploy-form [name="protocol"]', "v2")
    # the image field is pre-filled with the platform default, which is not an override. The field is
    # refilled after each render answer, so wait for the one for ENVSERVE (an earlier answer, for the
    # default server type, may already have set data-auto with another image).
    page.wait_for_function(
        """() => { const i = document.querySelector('#dep-image');
                   return i.dataset.auto === '1' && i.value === 'docker.io/envserve/envserve:0.1.0'; }"""
    )
    assert page.input_value("#dep-image") == "docker.io/envserve/envserve:0.1.0"
    page.fill('#deploy-form [name="name"]', "Bad_Name")
    page.wait_for_selector('#dep-errors li:has-text("not a DNS-1123 label")')  # inline validation
    page.fill('#deploy-form [name="name"]', "digits-prod")
    page.fill('#deploy-form [name="replicas"]', "2")
    page.wait_for_selector('#deploy-form[data-valid="true"]')
    # data-valid may still be from the render before the last edit: wait for the one with 2 replicas
    page.wait_for_function("() => document.querySelector('#dep-manifest').innerText.includes('replicas: 2')")
    manifest = page.inner_text("#dep-manifest")
    docs = list(yaml.safe_load_all(manifest))
    assert validate_documents(docs) == []
    assert docs[0]["kind"] == "Deployment" and docs[0]["spec"]["replicas"] == 2
    assert docs[0]["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "serve",
        "--model-uri",
        "models:/digits@champion",
    ]
    assert page.is_visible("#dep-download")
    assert docs[0]["metadata"]["annotations"]["envserve.io/image-source"] == "built-in default"
    page.screenshot(path=str(ARTIFACTS / "deploy.png"), full_page=True)

    # Settings: the platform default images, editable
    page.click('nav button[data-tab="settings"]')
    page.fill('#platform-form [name="server"]', "SKLEARN_SERVER")
    page.select_option('#platform-form [name="protocol"]', "seldon")
    page.fill('#platform-form [name="image"]', "registry.local/sklearnserver:9")
    page.click('#platform-form button[type="submit"]')
    page.wait_for_selector('#platform-rows td:text("registry.local/sklearnserver:9")')
    page.screenshot(path=str(ARTIFACTS / "settings.png"), full_page=True)
    page.close()


def test_console_security(tmp_path, start_server, digits_model_file):
    import subprocess
    import sys

    write_model(tmp_path, "m", {"name": "m", "implementation": "sklearn"}, digits_model_file)
    # beyond loopback without a token, the console refuses to start
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "envserve",
            "serve",
            str(tmp_path),
            "--console",
            "--host",
            "0.0.0.0",
            "--http-port",
            "0",
            "--grpc-port",
            "-1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3 and "ENVSERVE_ADMIN_TOKEN" in proc.stderr
    server = start_server(tmp_path, "--console", env={"ENVSERVE_ADMIN_TOKEN": "tok"})
    with server.client() as client:
        assert client.get("/console/").status_code == 200  # the page itself asks for the token
        assert client.get("/envserve/environments").status_code == 401
        auth = {"Authorization": "Bearer tok"}
        assert client.get("/envserve/environments", headers=auth).status_code == 200
        # a cross-site page may not change anything, token or not
        r = client.post("/envserve/environments/prune", headers={**auth, "Origin": "https://evil.example"})
        assert r.status_code == 403 and "cross-site request refused" in r.json()["error"]
        r = client.post("/v2/repository/models/m/unload", headers={**auth, "Origin": "https://evil.example"})
        assert r.status_code == 403
        same = server.url.replace("http://", "")
        r = client.post(
            "/envserve/environments/prune", headers={**auth, "Origin": "http://" + same}, content=b"{}"
        )
        assert r.status_code == 200
        assert client.get("/envserve/environments/prune", headers=auth).status_code == 405
    plain = start_server(tmp_path)
    with plain.client() as client:
        assert client.get("/console/").status_code == 404  # off by default
