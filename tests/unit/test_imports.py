"""Guards on import closures: what runs inside a model's environment, and what `envserve --help` loads."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import envserve

#: Modules that must never be imported by code that runs inside a model's environment.
SERVER_ONLY = (
    "uvicorn",
    "httptools",
    "uvloop",
    "orjson",
    "click",
    "starlette",
    "fastapi",
    "pydantic",
    "grpc",
    "httpx",
    "envserve.server",
    "envserve.cli",
)
WORKER_CLOSURE = (
    "envserve",
    "envserve.errors",
    "envserve.protocol",
    "envserve.codecs",
    "envserve.settings",
    "envserve.runtimes",
    "envserve.runtimes.sklearn",
    "envserve.runtimes.xgboost",
    "envserve.runtimes.lightgbm",
)


def _loaded_after(imports: str) -> set:
    code = "import sys, json\n%s\nprint(json.dumps(sorted(sys.modules)))" % imports
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


def _forbidden(loaded: set, names) -> list:
    return sorted(m for m in loaded for bad in names if m == bad or m.startswith(bad + "."))


def test_worker_closure_imports_no_server_dependency():
    loaded = _loaded_after("\n".join("import %s" % m for m in WORKER_CLOSURE))
    assert "envserve.runtimes" in loaded  # the check really imported them
    assert _forbidden(loaded, SERVER_ONLY) == []
    # frameworks are imported when a model loads, not when the runtime module is imported
    assert _forbidden(loaded, ("sklearn", "xgboost", "lightgbm", "pandas")) == []


def test_cli_help_imports_nothing_heavy():
    loaded = _loaded_after("import envserve.cli")
    assert _forbidden(loaded, ("uvicorn", "numpy", "orjson", "envserve.server", "sklearn")) == []
    proc = subprocess.run(
        [sys.executable, "-m", "envserve", "--help"], capture_output=True, text=True, check=True
    )
    assert "serve" in proc.stdout


def test_public_api_is_curated():
    assert envserve.__all__ == sorted(envserve.__all__)
    assert set(envserve.__all__) == {
        "EnvserveError",
        "InferenceRequest",
        "InferenceResponse",
        "ModelSettings",
        "Runtime",
        "ServerSettings",
        "__version__",
        "serve",
    }
    public = {
        n for n, v in vars(envserve).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    # submodules become attributes of the package once imported; nothing else may leak
    assert public - set(envserve.__all__) == {"annotations"}
    assert callable(envserve.serve)
