"""The README's first screen works as written: its curl body against the example repository."""

from __future__ import annotations

import json
import re

from tests.conftest import EXAMPLES, ROOT


def test_readme_curl_returns_the_documented_answer(start_server, digits):
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"curl -s localhost:8080(\S+) .*?-d '(\{.*?\})'\n# (\{.*?\})\n", readme, re.S)
    assert m, "README lost its curl example"
    path, body, expected = m.group(1), json.loads(m.group(2)), json.loads(m.group(3))
    assert (EXAMPLES / "models" / "mnist-svm" / "model.joblib").exists(), "run scripts/setup first"
    x, y = digits
    # the README's pixels are a real digit of the data set, and the answer is its true label
    assert body["inputs"][0]["data"][0] == x[0].tolist() and expected["outputs"][0]["data"] == [int(y[0])]
    server = start_server(EXAMPLES / "models")
    with server.client() as client:
        r = client.post(path, json=body)
    assert r.status_code == 200 and r.json() == expected
