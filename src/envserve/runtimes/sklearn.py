"""scikit-learn runtime (MLServer's ``mlserver_sklearn.SKLearnModel``).

Outputs: ``predict`` by default; ``predict_proba``, ``predict_log_proba``, ``decision_function`` and
``transform`` when requested in ``outputs`` and the estimator has them.
Worker import closure: standard library, numpy, joblib/scikit-learn; Python 3.6+.
"""

from typing import Any, Dict, Optional

from ..errors import InvalidRequest
from ..protocol.v2 import InferenceRequest
from .base import Runtime

__all__ = ["SKLearnRuntime"]

ARTIFACTS = ("model.joblib", "model.pkl", "model.pickle")
METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function", "transform")


class SKLearnRuntime(Runtime):
    output_names = METHODS

    def load(self) -> None:
        path = self.find_artifact(ARTIFACTS)
        # joblib files and plain pickles alike, through envserve's restricted loader (joblib itself is
        # not needed to read joblib's format)
        self._model = self.load_pickle(path)

    def platform(self) -> str:
        return "sklearn"

    def predict(self, request: InferenceRequest) -> Dict[str, Any]:
        features = self.decode_request(request)
        self.check_features(features, _features_in(self._model), request)
        result = {}
        for name in self.requested_outputs(request):
            method = getattr(self._model, name, None)
            if method is None:
                raise InvalidRequest(
                    "model %r (%s) has no %s(); ask for one of its outputs instead"
                    % (self.settings.name, type(self._model).__name__, name)
                )
            try:
                result[name] = method(features)
            except (ValueError, TypeError, KeyError) as exc:
                # scikit-learn validates its input and says what is wrong with it: the client's mistake
                raise InvalidRequest(
                    "model %r (%s.%s) refused the input: %s"
                    % (self.settings.name, type(self._model).__name__, name, exc)
                ) from None
        return result


def _features_in(model: Any) -> Optional[int]:
    """How many features the estimator was fitted on: ``n_features_in_`` (scikit-learn 0.24+); for older
    estimators what they kept of the training data's shape (SVMs' ``shape_fit_``, linear models'
    ``coef_``); None when it cannot tell (a pipeline, a transformer that takes any width)."""
    count = getattr(model, "n_features_in_", None)
    if isinstance(count, int):
        return count
    shape = getattr(model, "shape_fit_", None)
    if isinstance(shape, tuple) and len(shape) == 2:
        return int(shape[1])
    coef: Any = getattr(model, "coef_", None)
    if coef is not None and getattr(coef, "ndim", 0) in (1, 2) and not hasattr(coef, "tocsr"):
        return int(coef.shape[-1])
    return None
