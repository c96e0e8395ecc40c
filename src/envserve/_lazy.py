"""A package's re-exported names, each imported from its module on first use (PEP 562).

Worker import closure: standard library only, Python 3.6 syntax (3.6 has no module ``__getattr__``; its
callers import eagerly there)."""

import importlib
from typing import Any, Callable, Dict, MutableMapping


def lazy_exports(
    package: str, modules: Dict[str, str], namespace: MutableMapping[str, Any]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports ``name`` from ``modules[name]`` (relative to the
    package, e.g. ``".cache"``, or absolute) and keeps it in the package's ``namespace``."""

    def __getattr__(name: str) -> Any:
        module = modules.get(name)
        if module is None:
            raise AttributeError("module %r has no attribute %r" % (package, name))
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    return __getattr__
