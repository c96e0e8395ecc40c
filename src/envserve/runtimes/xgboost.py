"""XGBoost runtime (``xgboost``, and MLServer's ``mlserver_xgboost.XGBoostModel``).

Loads a Booster from ``model.json``/``model.ubj``/``model.bst``.

- Named ``xgboost``: ``predict`` gives class labels for classification objectives and values for the
  rest; ``predict_proba`` gives class probabilities.
- Named ``mlserver_xgboost.XGBoostModel``: exactly what MLServer 1.7's runtime answers, which loads the
  file through XGBoost's scikit-learn classes: a model saved by ``XGBClassifier`` answers class labels and
  ``predict_proba``; any other (a Booster's, an ``XGBRegressor``'s) answers what the booster predicts —
  the probability of class 1 for ``binary:logistic``, the class probabilities for ``multi:softprob`` —
  and has no ``predict_proba``; only ``predict`` and ``predict_proba`` may be requested.

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
MLSERVER_NAME = "mlserver_xgboost.XGBoostModel"


class XGBoostRuntime(Runtime):
    output_names = ("predict", "predict_proba")

    def load(self) -> None:
        path = self.find_artifact(ARTIFACTS)
        try:
            import xgboost as xgb

            booster = xgb.Booster()
            booster.load_model(path)
            self._objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
            sklearn = json.loads(booster.attr("scikit_learn") or "{}")
            best = booster.attr("best_iteration")
        except Exception as exc:
            raise ModelLoadError(
                "could not load XGBoost model %s: %s: %s" % (path, type(exc).__name__, exc),
                model=self.settings.name,
            ) from exc
        self._xgb = xgb
        self._booster = booster
        self._mlserver = self.settings.implementation == MLSERVER_NAME
        #: saved through XGBClassifier (MLServer then serves it as one)
        self._classifier = isinstance(sklearn, dict) and sklearn.get("_estimator_type") == "classifier"
        #: the trees XGBoost's scikit-learn classes predict with: up to the best iteration, when known
        self._iterations = (0, int(best) + 1) if best is not None else (0, 0)

    def platform(self) -> str:
        return "xgboost"

    def predict(self, request: InferenceRequest) -> Dict[str, Any]:
        features = self.decode_request(request)
        self.check_features(features, self._booster.num_features() or None, request)
        if self._mlserver:
            return self._as_mlserver(features, request)
        raw = self._predict(features, (0, 0))
        result = {}
        for name in self.requested_outputs(request):
            if name == "predict":
                result[name] = _labels(raw, self._objective)
            else:
                result[name] = _probabilities(raw, self._objective, self.settings.name)
        return result

    def _predict(self, features: Any, iterations: Any) -> np.ndarray:
        try:
            return self._booster.predict(self._xgb.DMatrix(features), iteration_range=iterations)
        except (ValueError, TypeError, self._xgb.core.XGBoostError) as exc:
            raise InvalidRequest(
                "model %r (XGBoost) refused the input: %s" % (self.settings.name, exc)
            ) from None

    def _as_mlserver(self, features: Any, request: InferenceRequest) -> Dict[str, Any]:
        names = [o.name for o in request.outputs] or ["predict"]
        for name in names:
            if name not in self.output_names:
                raise InvalidRequest(
                    "XGBoostModel only supports 'predict' and 'predict_proba' as outputs (%s was received)"
                    % name
                )
        if "predict_proba" in names and not self._classifier:
            raise InvalidRequest("XGBRegressor models do not support 'predict_proba'")
        raw = self._predict(features, self._iterations)
        result = {}
        for name in names:
            if not self._classifier:
                result[name] = raw
            elif name == "predict":
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
