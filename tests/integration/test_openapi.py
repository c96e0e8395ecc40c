"""The REST API's OpenAPI document, checked against the live server by schemathesis (property-based,
positive and negative cases, fixed seed): no 5xx, every status, body and header as documented. Also the
per-model document built from the model's metadata, and the /v2/docs page in a real browser."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

from tests.conftest import ServerProcess, custom_model, write_model
from tests.integration.test_console import browser  # noqa: F401

pytestmark = pytest.mark.slow

TYPED = [
    {"name": "x", "datatype": "FP32", "shape": [-1, 2]},
    {"name": "label", "datatype": "BYTES", "shape": [-1]},
]
# every check but "a schema-valid request is accepted": a request can fit the schema and still not the
# model (a shape that does not match its data), and that is answered 400 by design
EXCLUDED = "positive_data_acceptance"


@pytest.fixture(scope="module")
def server(tmp_path_factory, digits_model_file):
    repo = tmp_path_factory.mktemp("openapi")
    custom_model(repo, "echo", "Echo")
    custom_model(repo, "typed", "Echo", settings={"inputs": TYPED, "outputs": TYPED})  # echoed back
    write_model(repo, "digits", {"name": "digits", "implementation": "sklearn"}, digits_model_file)
    proc = ServerProcess(repo, [])
    try:
        yield proc.wait_ready(120)
    finally:
        proc.stop()


def _schemathesis(url, examples):
    # in a directory of its own: schemathesis keeps a crash cache in its working directory and would
    # replay an earlier run's cases (and leave files in the checkout)
    with tempfile.TemporaryDirectory(prefix="schemathesis-") as cwd:
        return _run_schemathesis(url, examples, cwd)


def _run_schemathesis(url, examples, cwd):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            url,
            "--seed",
            "20261128",
            "--max-examples",
            str(examples),
            "--mode",
            "all",
            "--checks",
            "all",
            "--exclude-checks",
            EXCLUDED,
            "--generation-database",
            "none",
            "--no-color",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    assert "Tested:" in proc.stdout, proc.stdout[-4000:]
    return proc.stdout


def test_the_dataplane_document_describes_the_server(server):
    doc = httpx.get(server.url + "/v2/docs/dataplane.json", timeout=30).json()
    assert doc["openapi"].startswith("3.")
    for path in ("/v2/health/ready", "/v2/models/{model_name}/infer", "/v2/repository/index"):
        assert path in doc["paths"], path
    out = _schemathesis(server.url + "/v2/docs/dataplane.json", 8)
    assert "Selected: 12/12" in out


@pytest.mark.parametrize("model", ["typed", "digits"])
def test_a_models_own_document(server, model):
    doc = httpx.get(server.url + "/v2/models/%s/docs/dataplane.json" % model, timeout=30).json()
    assert set(doc["paths"]) == {
        "/v2/models/%s" % model,
        "/v2/models/%s/ready" % model,
        "/v2/models/%s/infer" % model,
    }
    if model == "typed":  # its declared inputs, by name and datatype
        variants = doc["components"]["schemas"]["ModelInput"]["oneOf"]
        assert [
            (v["properties"]["name"]["const"], v["properties"]["datatype"]["const"]) for v in variants
        ] == [
            ("x", "FP32"),
            ("label", "BYTES"),
        ]
        # and its declared outputs, which every answer of the schemathesis run below must match
        outputs = doc["components"]["schemas"]["ModelOutput"]["oneOf"]
        assert [v["properties"]["name"]["const"] for v in outputs] == ["x", "label"]
        infer = doc["paths"]["/v2/models/typed/infer"]["post"]
        assert infer["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ModelInferenceResponse"
        }
    else:  # nothing declared: the general schemas
        assert "ModelOutput" not in doc["components"]["schemas"]
    _schemathesis(server.url + "/v2/models/%s/docs/dataplane.json" % model, 25)
    r = httpx.get(server.url + "/v2/models/nope/docs/dataplane.json", timeout=30)
    assert r.status_code == 404 and "nope" in r.json()["error"]


def test_the_docs_page_renders_the_document_and_calls_the_api(server, browser):  # noqa: F811
    page = browser.new_page()
    try:
        page.goto(server.url + "/v2/docs")
        page.wait_for_selector("details.op")
        summaries = page.locator("details.op > summary").all_inner_texts()
        assert any("/v2/models/{model_name}/infer" in s for s in summaries), summaries
        assert "envserve data plane" in page.title()
        page.goto(server.url + "/v2/models/typed/docs")
        infer = page.locator("details.op", has_text="/v2/models/typed/infer")
        infer.locator(":scope > summary").click()
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.5]}]}
        infer.locator("textarea").fill(json.dumps(body))
        infer.locator("button", has_text="Send").click()
        result = infer.locator("pre.result")
        deadline = time.monotonic() + 60
        while not result.inner_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        text = result.inner_text()
        assert text.startswith("200"), text
        assert json.loads(text.split("\n", 1)[1])["outputs"][0]["data"] == [1.5, 2.5]
    finally:
        page.close()
    # nothing is fetched from anywhere but the server: the page has no external references
    html = httpx.get(server.url + "/v2/docs", timeout=30).text
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
