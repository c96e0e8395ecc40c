"""LightGBM runtime (``lightgbm``, and MLServer's ``mlserver_lightgbm.LightGBMModel``).

Loads a Booster from ``model.txt``/``model.bst``.

- Named ``lightgbm``: ``predict`` gives class labels for binary and multiclass objectives and values
  otherwise; ``predict_proba`` gives class probabilities.
- Named ``mlserver_lightgbm.LightGBMModel``: exactly what MLServer 1.7's runtime answers: the output
  ``predict`` holding what the booster predicts (the probability of class 1 for ``binary``, the class
  probabilities for ``multiclass``, values otherwise), whatever outputs the request names.

Worker import closure: standard library, numpy, lightgbm; Python 3.6+.
"""

from typing import Any, Dict

import numpy as np

from ..errors import InvalidRequest, ModelLoadError
from ..protocol.v2 import InferenceRequest
from .base import Runtime

__all__ = ["LightGBMRuntime"]

ARTIFACTS = ("model.txt", "model.bst")
MLSERVER_NAME = "mlserver_lightgbm.LightGBMModel"
_CLASSIFIERS = ("binary", "multiclass", "softmax", "multiclassova", "cross_entropy")


class LightGBMRuntime(Runtime):
    output_names = ("predict", "predict_proba")

    def load(self) -> None:
        path = self.find_artifact(ARTIFACTS)
        try:
            import lightgbm as lgb

            self._booster = lgb.Booster(model_file=path)
        except Exception as exc:
            raise ModelLoadError(
                "could not load LightGBM model %s: %s: %s" % (path, type(exc).__name__, exc),
                model=self.settings.name,
            ) from exc
        objective = str(self._booster.dump_model(num_iteration=1).get("objective", ""))
        self._objective = objective.split()[0] if objective else ""
        self._mlserver = self.settings.implementation == MLSERVER_NAME
        self.answers_requested_outputs = not self._mlserver

    def platform(self) -> str:
        return "lightgbm"

    def predict(self, request: InferenceRequest) -> Dict[str, Any]:
        features = self.decode_request(request)
        self.check_features(features, self._booster.num_feature() or None, request)
        try:
            raw = np.asarray(self._booster.predict(features))
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(
                "model %r (LightGBM) refused the input: %s" % (self.settings.name, exc)
            ) from None
        if self._mlserver:  # MLServer answers the booster's prediction as "predict", and nothing else
            return {"predict": raw}
        classifier = self._objective in _CLASSIFIERS
        result = {}
        for name in self.requested_outputs(request):
            if name == "predict":
                if not classifier:
                    result[name] = raw
                elif raw.ndim == 1:
                    result[name] = (raw > 0.5).astype(np.int64)
                else:
                    result[name] = np.argmax(raw, axis=1)
            else:
                if not classifier:
                    raise InvalidRequest(
                        "model %r (objective %s) has no predict_proba output"
                        % (self.settings.name, self._objective)
                    )
                result[name] = np.column_stack([1.0 - raw, raw]) if raw.ndim == 1 else raw
        return result
