"""scikit-learn runtime (MLServer's ``mlserver_sklearn.SKLearnModel``).

Outputs: ``predict`` by default; ``predict_proba``, ``predict_log_proba``, ``decision_function`` and
``transform`` when requested in ``outputs`` and the estimator has them.
Worker import closure: standard library, numpy, joblib/scikit-learn; Python 3.8+.
"""

from __future__ import annotations

import pickle
from typing import Any, Dict

from ..errors import InvalidRequest, ModelLoadError
from ..protocol.v2 import InferenceRequest
from .base import Runtime

__all__ = ["SKLearnRuntime"]

ARTIFACTS = ("model.joblib", "model.pkl", "model.pickle")
METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function", "transform")


class SKLearnRuntime(Runtime):
    output_names = METHODS

    def load(self) -> None:
        path = self.find_artifact(ARTIFACTS)
        try:
            import joblib
        except ImportError:
            joblib = None
        try:
            if joblib is not None:
                self._model = joblib.load(path)
            else:  # a plain pickle still works without joblib
                with open(path, "rb") as f:
                    self._model = pickle.load(f)
        except Exception as exc:
            raise ModelLoadError(
                "could not load scikit-learn model %s: %s: %s" % (path, type(exc).__name__, exc),
                model=self.settings.name,
            ) from exc

    def platform(self) -> str:
        return "sklearn"

    def predict(self, request: InferenceRequest) -> Dict[str, Any]:
        features = self.decode_request(request)
        self.check_features(features, getattr(self._model, "n_features_in_", None), request)
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
