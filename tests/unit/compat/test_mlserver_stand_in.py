"""envserve's stand-in ``mlserver`` package: what MLServer's runtimes call on its pydantic types."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from envserve.compat import PATH


@pytest.fixture()
def mlserver(monkeypatch):
    monkeypatch.syspath_prepend(PATH)
    for name in [m for m in sys.modules if m == "mlserver" or m.startswith("mlserver.")]:
        monkeypatch.delitem(sys.modules, name)
    import mlserver

    assert mlserver.__envserve_compat__
    return mlserver


def test_dict_and_model_dump_take_pydantics_include_and_exclude(mlserver):
    """MLServer's content-type example prints each input with ``dict(exclude=...)``, leaving out the decoded
    payload (a numpy array, not JSON) and the headers, for the request and for every input."""
    from mlserver.codecs import DecodedParameterName
    from mlserver.types import InferenceRequest, Parameters, RequestInput

    hidden = {"parameters": {DecodedParameterName, "headers"}}
    everywhere = dict(hidden, inputs={"__all__": hidden})
    given = RequestInput(
        name="x",
        shape=[2],
        datatype="INT64",
        data=[1, 2],
        parameters=Parameters(content_type="np", headers={"a": "b"}),
    )
    setattr(given.parameters, DecodedParameterName, np.array([1, 2]))
    request = InferenceRequest(inputs=[given], parameters=Parameters(headers={"x": "y"}))
    shown = given.dict(exclude=hidden)
    assert shown == {
        "name": "x",
        "shape": [2],
        "datatype": "INT64",
        "parameters": {"content_type": "np"},
        "data": [1, 2],
    }
    json.dumps(shown)  # what the example does with it: no ndarray left
    whole = request.model_dump(exclude=everywhere)
    assert whole["inputs"][0]["parameters"] == {"content_type": "np"} and "headers" not in whole["parameters"]
    assert request.dict(include={"inputs": {0: {"name", "shape"}}}) == {
        "inputs": [{"name": "x", "shape": [2]}]
    }
    assert request.dict(exclude={"inputs": ..., "id": True, "outputs": True}) == {
        "parameters": {"content_type": None, "headers": {"x": "y"}}
    }
    assert json.loads(request.json(exclude=everywhere, exclude_none=True)) == {
        "parameters": {},
        "inputs": [
            {
                "name": "x",
                "shape": [2],
                "datatype": "INT64",
                "parameters": {"content_type": "np"},
                "data": [1, 2],
            }
        ],
    }
