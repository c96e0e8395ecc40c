"""MLServer's HuggingFace settings, read as MLServer reads them (no transformers needed)."""

import json

import pytest

from envserve.errors import ModelLoadError
from envserve.runtimes.huggingface import huggingface_settings


def test_the_models_settings_win_over_variables_which_win_over_seldons_parameters():
    environ = {
        "PREDICTIVE_UNIT_PARAMETERS": json.dumps(
            [
                {"name": "task", "value": "fill-mask", "type": "STRING"},
                {"name": "optimum_model", "value": "true", "type": "BOOL"},
                {"name": "intra_op_threads", "value": "2", "type": "INT"},
            ]
        ),
        "MLSERVER_MODEL_HUGGINGFACE_TASK": "text-classification",
        "MLSERVER_MODEL_HUGGINGFACE_DEVICE": "-1",
        "MLSERVER_MODEL_HUGGINGFACE_MODEL_KWARGS": '{"torch_dtype": "float32"}',
    }
    found = huggingface_settings({"pretrained_model": "/models/x", "ignored": 1}, environ)
    assert found == {
        "task": "text-classification",
        "optimum_model": True,
        "intra_op_threads": 2,
        "device": -1,
        "model_kwargs": {"torch_dtype": "float32"},
        "pretrained_model": "/models/x",
    }
    assert (
        huggingface_settings({"task": "translation", "task_suffix": "_en_to_fr"}, {})["task_suffix"]
        == "_en_to_fr"
    )


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"PREDICTIVE_UNIT_PARAMETERS": "[{"}, "PREDICTIVE_UNIT_PARAMETERS is not JSON"),
        (
            {"PREDICTIVE_UNIT_PARAMETERS": '[{"name": "intra_op_threads", "value": "two", "type": "INT"}]'},
            "parameter 'intra_op_threads': 'two' is not a INT",
        ),
        (
            {"MLSERVER_MODEL_HUGGINGFACE_INTER_OP_THREADS": "many"},
            "MLSERVER_MODEL_HUGGINGFACE_INTER_OP_THREADS must be a number",
        ),
    ],
)
def test_malformed_settings_are_named(environ, message):
    with pytest.raises(ModelLoadError, match=message):
        huggingface_settings({}, environ)
