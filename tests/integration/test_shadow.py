"""Shadow serving on a real server: the primary answers, a sampled share of live requests goes to the
model's candidate environment off the request path, and agreement is exported. One side runs in the
Python 3.8 environment (a worker), the other in the server's own; the model's answers depend on which."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from examples import old_sklearn as envs

pytestmark = pytest.mark.slow  # the Python 3.8 environment is built once per session

MODEL = '''
import sys
import time

import numpy as np

from envserve.runtimes.base import Runtime

NEW = sys.version_info >= (3, 9)


class Probe(Runtime):
    """Doubles its input. mode "drift": from Python 3.9 on, values above 5 get 0.5 more; "slow-old": on
    Python 3.8 every call takes 30 s; "fail-new": from Python 3.9 on every call raises."""

    def predict(self, request):
        x = np.asarray(request.inputs[0].data, dtype=float)
        mode = self.settings.extra.get("mode")
        if mode == "slow-old" and not NEW:
            time.sleep(30)
        if mode == "fail-new" and NEW:
            raise RuntimeError("the candidate broke")
        return x * 2 + (0.5 if mode == "drift" and NEW else 0.0) * (x > 5)
'''


def _model(repo, old, name, mode, **parameters):
    folder = repo / name
    folder.mkdir(parents=True)
    (folder / "probe.py").write_text(MODEL)
    shutil.copy(old["tarball"], folder / "env.tar.gz")
    settings = {
        "name": name,
        "implementation": "probe.Probe",
        "parameters": {"extra": {"mode": mode}, **parameters},
    }
    (folder / "model-settings.json").write_text(json.dumps(settings))


def _body(values):
    return {"inputs": [{"name": "x", "shape": [len(values), 1], "datatype": "FP64", "data": values}]}


def _wait(client, name, predicate, what, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = client.get("/envserve/models/%s/shadow" % name).json()
        if predicate(doc):
            return doc
        time.sleep(0.1)
    raise AssertionError("timed out waiting for %s: %s" % (what, doc))


def test_shadow_environments_answer_off_the_request_path(tmp_path, start_server):
    old = envs.old_sklearn()
    repo = tmp_path / "repo"
    # primary in Python 3.8 (a worker), shadow in the server's environment, every request mirrored
    _model(repo, old, "drift", "drift", environment_tarball="./env.tar.gz", shadow_environment="server",
           shadow_sample=1.0)  # fmt: skip
    # primary in the server, shadow in Python 3.8 taking 30 s a call: the answers must not wait for it
    _model(repo, old, "slow", "slow-old", environment="server", shadow_environment="./env.tar.gz",
           shadow_sample=1.0)  # fmt: skip
    # a shadow that raises on every call, and one whose environment cannot be prepared
    _model(repo, old, "failing", "fail-new", environment_tarball="./env.tar.gz", shadow_environment="server",
           shadow_sample=1.0)  # fmt: skip
    _model(repo, old, "broken", "drift", environment="server", shadow_environment="./missing.tar.gz")
    server = start_server(repo, env={"ENVSERVE_ENV_CACHE": str(tmp_path / "cache")})
    with server.client() as client:
        for name in ("drift", "slow", "failing"):
            _wait(client, name, lambda d: d["state"] == "READY", "the shadow of %s to load" % name)

        # drift: the primary's answers, the shadow's disagreement counted row by row
        for values in ([1.0, 2.0], [7.0, 3.0], [9.0]):
            r = client.post("/v2/models/drift/infer", json=_body(values))
            assert r.status_code == 200, r.text
            assert r.json()["outputs"][0]["data"] == [2 * v for v in values]  # the primary (Python 3.8)
        found = _wait(client, "drift", lambda d: d["requests"]["compared"] == 3, "3 comparisons")
        assert found["rows"] == {"identical": 3, "close": 0, "different": 2}
        assert found["agreement"] == pytest.approx(0.6) and found["max_abs_diff"] == pytest.approx(0.5)
        largest = found["largest_differences"][0]
        assert largest["primary"] in ([14.0], [18.0]) and largest["shadow"][0] == largest["primary"][0] + 0.5
        assert largest["input"]["x"] == [largest["primary"][0] / 2]
        assert found["shadow"]["runtime"]  # the shadow's own description (in process here)

        # slow: answered while the shadow still computes; beyond 4 calls in flight the rest are skipped
        for i in range(6):
            r = client.post("/v2/models/slow/infer", json=_body([float(i)]))
            assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2.0 * i], r.text
        slow = client.get("/envserve/models/slow/shadow").json()
        assert slow["requests"]["in_flight"] == 4 and slow["requests"]["skipped"] == 2, slow
        assert slow["requests"]["compared"] == 0  # none of the 30 s calls has finished: nobody waited
        assert slow["shadow"]["environment"]["python"].startswith("3.8.")

        # failing: every mirrored call fails, every answer is the primary's
        for i in range(3):
            r = client.post("/v2/models/failing/infer", json=_body([float(i)]))
            assert r.status_code == 200, r.text
        failing = _wait(client, "failing", lambda d: d["requests"]["errors"] == 3, "3 shadow errors")
        assert "the candidate broke" in failing["last_error"] and failing["requests"]["compared"] == 0

        # broken: the shadow is UNAVAILABLE, the model serves
        broken = _wait(client, "broken", lambda d: d["state"] == "UNAVAILABLE", "the broken shadow")
        assert "missing.tar.gz" in broken["error"]
        assert client.post("/v2/models/broken/infer", json=_body([1.0])).status_code == 200

        # the counts are in /metrics, and a model without a shadow says so
        metrics = client.get("/metrics").text
        assert re.search(r'envserve_shadow_rows_total\{model="drift",result="different"\} 2\.0', metrics), (
            metrics
        )
        assert re.search(r'envserve_shadow_requests_total\{model="failing",outcome="errors"\} 3\.0', metrics)
        assert re.search(r'envserve_shadow_requests_total\{model="slow",outcome="skipped"\} 2\.0', metrics)
        assert 'envserve_shadow_max_abs_diff{model="drift"} 0.5' in metrics
        r = client.get("/envserve/models/nope/shadow")
        assert r.status_code == 404
        status = {m["name"]: m for m in client.get("/envserve/models").json()}
        assert status["drift"]["shadow"]["rows"]["different"] == 2
    assert server.stop() == 0  # with four 30 s shadow calls still running
