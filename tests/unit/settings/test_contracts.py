"""Contract detection from the variables each operator sets (settings/contracts.py), and its place in the
settings' precedence."""

from __future__ import annotations

import json

import pytest

from envserve.errors import SettingsError
from envserve.settings.contracts import detect
from envserve.settings.server import ServerSettings

SELDON = {
    "PREDICTIVE_UNIT_ID": "classifier",
    "PREDICTIVE_UNIT_HTTP_SERVICE_PORT": "9000",
    "PREDICTIVE_UNIT_GRPC_SERVICE_PORT": "9500",
    "PREDICTIVE_UNIT_METRICS_SERVICE_PORT": "6000",
    "PREDICTIVE_UNIT_METRICS_ENDPOINT": "/prometheus",
    "PREDICTIVE_UNIT_PARAMETERS": json.dumps(
        [
            {"name": "xtype", "value": "DataFrame", "type": "STRING"},
            {"name": "threshold", "value": "0.5", "type": "FLOAT"},
            {"name": "model_uri", "value": "/mnt/models", "type": "STRING"},
        ]
    ),
    "MLSERVER_HTTP_PORT": "9000",
}


def test_seldon_v1_protocol_seldon():
    contract = detect(SELDON)
    assert contract.name == "seldon-v1"
    s = contract.settings
    assert (s["host"], s["http_port"], s["grpc_port"], s["metrics_port"]) == ("0.0.0.0", 9000, 9500, 6000)
    assert (s["model_uri"], s["model_name"], s["metrics_endpoint"]) == (
        "/mnt/models",
        "classifier",
        "/prometheus",
    )
    assert json.loads(s["model_extra"]) == {"xtype": "DataFrame", "threshold": 0.5}


def test_seldon_v2_protocol_is_mlserver_variables():
    contract = detect(dict(SELDON, MLSERVER_MODEL_IMPLEMENTATION="mlserver_sklearn.SKLearnModel"))
    assert contract.name == "mlserver" and "Seldon Core v1, protocol v2" in contract.description


def test_seldon_core_2_and_defaults():
    contract = detect(
        {
            "MLSERVER_MODELS_DIR": "/mnt/agent/models",
            "MLSERVER_LOAD_MODELS_AT_STARTUP": "false",
            "MLSERVER_PARALLEL_WORKERS": "0",
        }
    )
    s = contract.settings
    assert "Seldon Core 2" in contract.description
    assert (s["http_port"], s["grpc_port"], s["metrics_port"]) == (8080, 8081, 8082)  # MLServer's defaults
    assert s["model_repository"] == "/mnt/agent/models" and s["load_models_at_startup"] is False
    assert s["parallel_workers"] == 0  # MLServer's "in the main process": accepted as it is
    assert detect({}).name == "envserve"


def test_envserve_variables_and_flags_win_over_the_contract(tmp_path):
    environ = dict(SELDON, ENVSERVE_HTTP_PORT="7000")
    settings = ServerSettings.from_sources(None, {"grpc_port": 7001}, environ)
    assert (settings.http_port, settings.grpc_port, settings.metrics_port) == (7000, 7001, 6000)
    assert settings.model_repository == "" and settings.contract.startswith("Seldon Core v1")
    # an explicit repository argument wins over the contract's
    assert ServerSettings.from_sources(str(tmp_path), None, environ).model_repository == str(tmp_path)


@pytest.mark.parametrize(
    "environ, message",
    [
        (
            {"PREDICTIVE_UNIT_ID": "c", "PREDICTIVE_UNIT_GRPC_SERVICE_PORT": "70000"},
            "PREDICTIVE_UNIT_GRPC_SERVICE_PORT",
        ),
        (
            {"PREDICTIVE_UNIT_PARAMETERS": '[{"name":"xtype","value":"csv","type":"STRING"}]'},
            "xtype 'csv' is not one of ndarray, DataFrame",
        ),
        (
            {"PREDICTIVE_UNIT_PARAMETERS": '[{"name":"n","value":"x","type":"INT"}]'},
            "parameter 'n' with value 'x' cannot be read as INT",
        ),
        (
            {"MLSERVER_MODELS_DIR": "/m", "MLSERVER_LOAD_MODELS_AT_STARTUP": "maybe"},
            "MLSERVER_LOAD_MODELS_AT_STARTUP",
        ),
    ],
)
def test_malformed_variables_are_named(environ, message):
    with pytest.raises(SettingsError, match=message):
        detect(environ)
