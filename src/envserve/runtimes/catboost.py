"""CatBoost runtime (``catboost``, and MLServer's ``mlserver_catboost.CatboostModel``).

Loads a model saved with ``save_model`` from ``model.cbm`` (or ``model.bin``).

- Named ``catboost``: ``predict`` gives what the model predicts (class labels for a classifier, values
  for a regressor); ``predict_proba`` a classifier's class probabilities.
- Named ``mlserver_catboost.CatboostModel``: exactly what MLServer 1.7's runtime answers: the model loaded
  as a ``CatBoostClassifier`` and the output ``predict`` holding its ``predict`` (class labels),
  whatever outputs the request names.

Worker import closure: standard library, numpy, catboost; Python 3.6+.
"""

from typing import Any, Dict

import numpy as np

from ..errors import InvalidRequest, ModelLoadError
from ..protocol.v2 import InferenceRequest
from .base import Runtime

__all__ = ["CatBoostRuntime"]

ARTIFACTS = ("model.cbm", "model.bin")
MLSERVER_NAME = "mlserver_catboost.CatboostModel"
#: Loss functions of classifiers (CatBoost's names); anything else is answered as values.
_CLASSIFIERS = (
    "Logloss",
    "CrossEntropy",
    "MultiClass",
    "MultiClassOneVsAll",
    "MultiLogloss",
    "MultiCrossEntropy",
)


class CatBoostRuntime(Runtime):
    output_names = ("predict", "predict_proba")

    def load(self) -> None:
        path = self.find_artifact(ARTIFACTS)
        self._mlserver = self.settings.implementation == MLSERVER_NAME
        self.answers_requested_outputs = not self._mlserver
        try:
            import catboost
        except ImportError as exc:  # imported when a model loads, not with the runtime module
            raise ModelLoadError(
                "model %r needs catboost, which is not installed here (%s); install it in the model's "
                "environment or the server's (pip install 'envserve[catboost]')" % (self.settings.name, exc),
                model=self.settings.name,
            ) from exc
        try:
            model = catboost.CatBoostClassifier() if self._mlserver else catboost.CatBoost()
            model.load_model(path)
        except Exception as exc:
            raise ModelLoadError(
                "could not load CatBoost model %s: %s: %s" % (path, type(exc).__name__, exc),
                model=self.settings.name,
            ) from exc
        self._model = model
        loss = str(model.get_all_params().get("loss_function", ""))
        self._classifier = loss.split(":")[0] in _CLASSIFIERS
        if self._mlserver and not self._classifier:  # MLServer loads it, then fails every request (500)
            raise ModelLoadError(
                "model %r: %s holds a CatBoost model trained with %s, not a classifier; MLServer's "
                "CatboostModel serves classifiers only: use implementation 'catboost' for this model"
                % (self.settings.name, path, loss or "an unknown loss"),
                model=self.settings.name,
            )

    def platform(self) -> str:
        return "catboost"

    def predict(self, request: InferenceRequest) -> Dict[str, Any]:
        features = self.decode_request(request)
        expected = len(getattr(self._model, "feature_names_", None) or []) or None
        self.check_features(features, expected, request)
        if self._mlserver:  # MLServer answers the classifier's predict as "predict", and nothing else
            return {"predict": np.asarray(self._call("predict", features))}
        result = {}
        for name in self.requested_outputs(request):
            if name == "predict":
                kind = "Class" if self._classifier else "RawFormulaVal"
                result[name] = np.asarray(self._call("predict", features, prediction_type=kind))
            else:
                if not self._classifier:
                    raise InvalidRequest(
                        "model %r (a CatBoost regressor) has no predict_proba output" % self.settings.name
                    )
                result[name] = np.asarray(self._call("predict", features, prediction_type="Probability"))
        return result

    def _call(self, method: str, features: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._model, method)(features, **kwargs)
        except Exception as exc:  # CatBoostError for a wrong feature count or types: the client's input
            if type(exc).__name__ in ("CatBoostError", "ValueError", "TypeError"):
                raise InvalidRequest(
                    "model %r (CatBoost) refused the input: %s" % (self.settings.name, exc)
                ) from None
            raise
