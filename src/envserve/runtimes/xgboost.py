"""XGBoost runtime (MLServer's ``mlserver_xgboost.XGBoostModel``).

Loads a Booster from ``model.json``/``model.ubj``/``model.bst``. ``predict`` gives class labels for
classification objectives and values for the rest; ``predict_proba`` gives class probabilities.
Worker import closure: standard library, numpy, xgboost; Python 3.6+.
"""

import json
from typing import Any, Dict

import numpy as np

from ..errors import InvalidRequest, ModelLoadError
from ..protocol.v2 import InferenceRequest
from .base import Runtime

__all__ = ["XGBoostRuntime"]

ARTIFACTS = ("model.json", "model.ubj", "model.bst")


class XGBoostRuntime(Runtime):
    output_names = ("predict", "predict_proba")

    def load(self) -> None:
        path = self.find_artifact(ARTIFACTS)
        try:
            import xgboost as xgb

            booster = xgb.Booster()
            booster.load_model(path)
            self._objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        except Exception as exc:
            raise ModelLoadError(
                "could not load XGBoost model %s: %s: %s" % (path, type(exc).__name__, exc),
                model=self.settings.name,
            ) from exc
        self._xgb = xgb
        self._booster = booster

    def platform(self) -> str:
        return "xgboost"

    def predict(self, request: InferenceRequest) -> Dict[str, Any]:
        features = self.decode_request(request)
        self.check_features(features, self._booster.num_features() or None, request)
        try:
            raw = self._booster.predict(self._xgb.DMatrix(features))
        except (ValueError, TypeError, self._xgb.core.XGBoostError) as exc:
            raise InvalidRequest(
                "model %r (XGBoost) refused the input: %s" % (self.settings.name, exc)
            ) from None
        result = {}
        for name in self.requested_outputs(request):
            if name == "predict":
                result[name] = _labels(raw, self._objective)
            else:
                result[name] = _probabilities(raw, self._objective, self.settings.name)
        return result


def _labels(raw: np.ndarray, objective: str) -> np.ndarray:
    if objective.startswith("binary:") and objective != "binary:hinge":
        return (raw > 0.5).astype(np.int64)
    if objective == "multi:softprob":
        return np.asarray(np.argmax(raw, axis=1))
    if objective == "multi:softmax":
        return raw.astype(np.int64)
    return raw


def _probabilities(raw: np.ndarray, objective: str, model: str) -> np.ndarray:
    if objective.startswith("binary:") and objective != "binary:hinge":
        return np.column_stack([1.0 - raw, raw])
    if objective == "multi:softprob":
        return raw
    raise InvalidRequest("model %r (objective %s) has no predict_proba output" % (model, objective))
