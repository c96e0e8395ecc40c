"""The README's first screen works as written: its curl body against the example repository."""

from __future__ import annotations

import json
import re

from tests.conftest import EXAMPLES, ROOT


def test_readme_curls_return_the_documented_answers(start_server, digits, tmp_path):
    readme = (ROOT / "README.md").read_text()
    examples = re.findall(r"curl -s localhost:8080(\S+) .*?-d '(\{.*?\})'\n# (\{.*?\})\n", readme, re.S)
    assert len(examples) == 2, "README lost its curl examples"
    for folder in ("mnist-svm", "mnist-svm-py38"):
        assert (EXAMPLES / "models" / folder / "model.joblib").exists(), "run scripts/setup first"
    x, y = digits
    server = start_server(EXAMPLES / "models", env={"ENVSERVE_ENV_CACHE": str(tmp_path / "cache")})
    with server.client() as client:
        for path, body, expected in examples:
            body, expected = json.loads(body), json.loads(expected)
            # the README's pixels are a real digit of the data set, and the answer is its true label
            assert body["inputs"][0]["data"][0] == x[0].tolist() and expected["outputs"][0]["data"] == [
                int(y[0])
            ]
            r = client.post(path, json=body)
            assert r.status_code == 200 and r.json() == expected
        py38 = [m for m in client.get("/envserve/models").json() if m["name"] == "mnist-svm-py38"]
        assert py38[0]["environment"]["python"].startswith("3.8.")
