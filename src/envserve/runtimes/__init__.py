"""Model runtimes: a name -> ``"module:Class"`` table, imported lazily, plus users' own classes.

``implementation`` in model-settings.json may be:

- one of our short names (``sklearn``, ``xgboost``, ``lightgbm``, ``catboost``, ``huggingface``,
  ``mlflow``);
- MLServer's name for the same runtime (``mlserver_sklearn.SKLearnModel``, ...);
- ``module.Class`` of a custom runtime: ``module.py`` (or a package ``module/``) in the model folder, or
  an importable module; a Seldon Core v1 model class there (``predict(X, features_names)``) is served
  with Seldon's wrapper's behaviour (:mod:`.seldon_model`);
- ``seldon``: a Seldon model class named as Seldon names it, ``parameters.extra.model_name`` (``MyModel``
  for class ``MyModel`` in ``MyModel.py``, or ``module.Class``), constructed with
  ``parameters.extra.parameters`` (Seldon's ``[{"name", "value", "type"}]`` list, or an object);
- ``module.Class`` of an MLServer custom runtime (deriving from ``mlserver.MLModel``), under any module
  name, ``mlserver_*`` packages installed in the model's environment included: driven as MLServer drives
  it (:mod:`.mlserver_model`); ``import mlserver`` finds the environment's own MLServer, else envserve's
  stand-in (:mod:`envserve.compat.mlserver`, appended to ``sys.path``);
- absent: the runtime is guessed from the artifact in the model folder.

Worker import closure: standard library only at import time, Python 3.6+.
"""

import importlib
import importlib.machinery
import importlib.util
import os
import sys
from typing import Any, Dict, Type

from ..errors import ModelLoadError
from ..settings.model import ModelSettings
from .base import Runtime

__all__ = ["BUILTIN_RUNTIMES", "Runtime", "create_runtime", "resolve_runtime"]

BUILTIN_RUNTIMES: Dict[str, str] = {
    "sklearn": "envserve.runtimes.sklearn:SKLearnRuntime",
    "xgboost": "envserve.runtimes.xgboost:XGBoostRuntime",
    "lightgbm": "envserve.runtimes.lightgbm:LightGBMRuntime",
    "catboost": "envserve.runtimes.catboost:CatBoostRuntime",
    "huggingface": "envserve.runtimes.huggingface:HuggingFaceRuntime",
    "mlflow": "envserve.runtimes.mlflow:MLflowRuntime",
}
MLSERVER_NAMES: Dict[str, str] = {
    "mlserver_sklearn.SKLearnModel": "sklearn",
    "mlserver_xgboost.XGBoostModel": "xgboost",
    "mlserver_lightgbm.LightGBMModel": "lightgbm",
    "mlserver_catboost.CatboostModel": "catboost",
    "mlserver_huggingface.HuggingFaceRuntime": "huggingface",
    "mlserver_mlflow.MLflowRuntime": "mlflow",
}
# When no implementation is given: which artifact file names which runtime (first match wins).
_GUESS = (
    ("MLmodel", "mlflow"),
    ("model.joblib", "sklearn"),
    ("model.pkl", "sklearn"),
    ("model.pickle", "sklearn"),
    ("model.json", "xgboost"),
    ("model.ubj", "xgboost"),
    ("model.txt", "lightgbm"),
    ("model.cbm", "catboost"),
)


def _import_from_string(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


def runtime_name(settings: ModelSettings) -> str:
    """The canonical runtime name (built-in short name or the custom ``module.Class``)."""
    implementation = settings.implementation
    if implementation is None:
        folder = settings.model_path
        for filename, name in _GUESS:
            if folder is not None and (
                os.path.basename(folder) == filename or os.path.isfile(os.path.join(folder, filename))
            ):
                return name
        raise ModelLoadError(
            "model %r has no 'implementation' in its settings and no known artifact (%s) in %s"
            % (settings.name, ", ".join(f for f, _ in _GUESS), folder),
            model=settings.name,
        )
    return MLSERVER_NAMES.get(implementation, implementation)


def resolve_runtime(settings: ModelSettings) -> Type[Runtime]:
    """The runtime class for ``settings``; for a Seldon model, the user's class (see create_runtime)."""
    name = runtime_name(settings)
    if name == "seldon":
        model_name = settings.extra.get("model_name")
        if not isinstance(model_name, str) or not model_name:
            raise ModelLoadError(
                "model %r: implementation 'seldon' needs parameters.extra.model_name, the Seldon model class "
                "('MyModel' for class MyModel in MyModel.py, or 'module.Class')" % settings.name,
                model=settings.name,
            )
        return _load_custom(settings, model_name if "." in model_name else "%s.%s" % (model_name, model_name))
    target = BUILTIN_RUNTIMES.get(name)
    if target is not None:
        try:
            cls: Type[Runtime] = _import_from_string(target)
            return cls
        except ImportError as exc:
            raise ModelLoadError(
                "model %r needs the %s runtime, whose library is not installed here (%s); install it in the "
                "model's environment or the server's (e.g. pip install 'envserve[%s]')"
                % (settings.name, name, exc, name),
                model=settings.name,
            ) from exc
    if name.startswith("mlserver") and not _importable(settings, name):
        package = name.split(".")[0]
        raise ModelLoadError(
            "model %r uses %r, an MLServer runtime envserve does not build in, and %s is not installed in "
            "the model's environment: install it there (pip install %s) or use a built-in runtime (%s)"
            % (
                settings.name,
                name,
                package,
                package.replace("_", "-"),
                ", ".join(sorted(MLSERVER_NAMES)),
            ),
            model=settings.name,
        )
    return _load_custom(settings, name)


def _importable(settings: ModelSettings, implementation: str) -> bool:
    """Whether the module of ``module.Class`` is in the model's folder or installed where it runs."""
    top = implementation.split(".")[0]
    folder = settings.folder
    if folder is not None and (
        os.path.isfile(os.path.join(folder, top + ".py")) or os.path.isdir(os.path.join(folder, top))
    ):
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _load_custom(settings: ModelSettings, implementation: str) -> Type[Runtime]:
    if settings.parameters.get("model_code") is False:
        raise ModelLoadError(
            "model %r: implementation %r is Python code that is not envserve's, and this server does not run "
            "model code (trust_model_code=false); use a built-in runtime (%s), or the operator allows model "
            "code server-wide" % (settings.name, implementation, ", ".join(sorted(BUILTIN_RUNTIMES))),
            model=settings.name,
        )
    module_name, _, class_name = implementation.rpartition(".")
    if not module_name or not class_name:
        raise ModelLoadError(
            "model %r: implementation %r is neither a built-in runtime (%s) nor 'module.Class'"
            % (settings.name, implementation, ", ".join(sorted(BUILTIN_RUNTIMES))),
            model=settings.name,
        )
    module = _import_custom_module(settings, module_name)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ModelLoadError(
            "model %r: module %s has no class %r" % (settings.name, module.__name__, class_name),
            model=settings.name,
        )
    if not (
        isinstance(cls, type)
        and (callable(getattr(cls, "predict", None)) or callable(getattr(cls, "predict_raw", None)))
    ):
        raise ModelLoadError(
            "model %r: %s must be a class with load() and predict(request); see docs/runtimes.md"
            % (settings.name, implementation),
            model=settings.name,
        )
    return cls


def _import_custom_module(settings: ModelSettings, module_name: str) -> Any:
    from ..compat import PATH as compat_path

    if compat_path not in sys.path:  # after site-packages: an installed MLServer wins over the stand-in
        sys.path.append(compat_path)
    folder = settings.folder
    top = module_name.split(".")[0]
    local = folder is not None and (
        os.path.isfile(os.path.join(folder, top + ".py")) or os.path.isdir(os.path.join(folder, top))
    )
    try:
        if not local:
            return importlib.import_module(module_name)
        # The model folder goes on sys.path only while its module is imported (a deliberate, scoped
        # exception to "process state only at entry points": users' modules import their siblings, as
        # they do under MLServer). A fresh import each time, so two models' "model.py" never collide.
        sys.path.insert(0, folder)  # type: ignore[arg-type]
        try:
            module = _exec_fresh(top, folder)  # type: ignore[arg-type]
            return module if module_name == top else importlib.import_module(module_name)
        finally:
            sys.path.remove(folder)  # type: ignore[arg-type]
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            "model %r: importing %s failed: %s: %s" % (settings.name, module_name, type(exc).__name__, exc),
            model=settings.name,
        ) from exc


def _exec_fresh(top: str, folder: str) -> Any:
    """Run ``folder``'s module ``top`` afresh and leave it in ``sys.modules`` (its submodules and the
    model's siblings import it by that name): found in ``folder`` only, so another model's module of the
    same name, imported earlier, is never what this model gets; registered, run and returned by
    reference."""
    for cached in [m for m in list(sys.modules) if m == top or m.startswith(top + ".")]:
        sys.modules.pop(cached, None)
    spec = importlib.machinery.PathFinder.find_spec(top, [folder])
    if spec is None or spec.loader is None:
        raise ImportError("no module named %r in %s" % (top, folder))
    module = importlib.util.module_from_spec(spec)
    sys.modules[top] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if sys.modules.get(top) is module:
            del sys.modules[top]
        raise
    sys.modules[top] = module
    return module


def create_runtime(settings: ModelSettings) -> Runtime:
    """Instantiate (not load) the runtime for ``settings``."""
    from .mlserver_model import MLServerModelRuntime, is_mlserver_class
    from .seldon_model import SeldonModelRuntime, is_seldon_class

    cls = resolve_runtime(settings)
    if is_mlserver_class(cls):
        return MLServerModelRuntime(settings, cls)
    if runtime_name(settings) == "seldon" or is_seldon_class(cls):
        return SeldonModelRuntime(settings, cls)
    try:
        return cls(settings)
    except Exception as exc:
        raise ModelLoadError(
            "model %r: creating %s failed: %s: %s" % (settings.name, cls.__name__, type(exc).__name__, exc),
            model=settings.name,
        ) from exc
