"""Guards on import closures: what runs inside a model's environment, and what `envserve --help` loads."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import types
from pathlib import Path

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
SRC = Path(__file__).resolve().parents[2] / "src" / "envserve"

#: Every module that runs inside a model's environment: the worker entry point and all it can import.
WORKER_SIDE = (
    [
        "envserve",
        "envserve._lazy",
        "envserve.errors",
        "envserve.settings",
        "envserve.settings.model",
        "envserve.settings.paths",
    ]
    + ["envserve.protocol." + p.stem for p in sorted((SRC / "protocol").glob("*.py")) if p.stem != "__init__"]
    + ["envserve.codecs." + p.stem for p in sorted((SRC / "codecs").glob("*.py")) if p.stem != "__init__"]
    + ["envserve.runtimes." + p.stem for p in sorted((SRC / "runtimes").glob("*.py")) if p.stem != "__init__"]
    + ["envserve.protocol", "envserve.codecs", "envserve.runtimes"]
    + ["envserve.workers.entry", "envserve.workers.ipc", "envserve.workers.link"]
)
WORKER_CLOSURE = tuple(WORKER_SIDE)

#: The layers (STYLE.md): a module may import its own layer or lower ones, never higher.
LAYERS = {
    "_lazy": 0,
    "errors": 0,
    "logcontext": 0,
    "compat": 0,  # the stand-in packages (mlserver) import nothing of envserve
    "protocol": 0,
    "codecs": 1,
    "settings": 1,
    "mlflow_rest": 1,
    "runtimes": 2,
    "environments": 2,
    "storage": 2,
    "workers": 2,
    "server": 3,
    "cli": 4,
    "mlflow_plugin": 5,  # MLflow's deployment plugin: drives the CLI's functions from MLflow's process
    # the side packages see settings, errors and what is below them, never the server or workers
    "deploy": 2.5,
    "image": 2.5,
}
SIDE_FORBIDDEN = {"deploy": ("server", "workers"), "image": ("server", "workers")}


def _loaded_after(imports: str) -> set:
    code = "import sys, json\n%s\nprint(json.dumps(sorted(sys.modules)))" % imports
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


def _forbidden(loaded: set, names) -> list:
    return sorted(m for m in loaded for bad in names if m == bad or m.startswith(bad + "."))


def test_worker_closure_imports_no_server_dependency():
    loaded = _loaded_after("\n".join("import %s" % m for m in WORKER_CLOSURE))
    assert {"envserve.runtimes.mlflow", "envserve.workers.entry", "envserve.workers.link"} <= loaded
    assert _forbidden(loaded, SERVER_ONLY) == []
    # frameworks are imported when a model loads, not when the runtime module is imported
    assert _forbidden(loaded, ("sklearn", "xgboost", "lightgbm", "catboost", "pandas")) == []


def test_worker_side_has_no_syntax_newer_than_python_36():
    """Model environments go back to Python 3.6 (docs/environments.md): the worker side must not postpone
    annotations (a SyntaxError there) -- caught here in a second, and on real 3.6/3.7 environments by
    tests/integration/test_old_pythons.py."""
    files = [SRC.parent / (m.replace(".", "/") + ".py") for m in WORKER_SIDE]
    files = [f if f.exists() else f.with_suffix("") / "__init__.py" for f in files]
    files += sorted((SRC / "compat").rglob("*.py"))
    offenders = [str(f) for f in files if "from __future__ import annotations" in f.read_text()]
    assert offenders == []


def test_mlserver_stand_in_is_standalone():
    """envserve's ``mlserver`` runs in model environments without MLServer: standard library and numpy
    (pandas only when present), no pydantic, nothing of the server; a real MLServer on the path wins."""
    from envserve.compat import PATH

    code = (
        "import sys; sys.path.append(%r)\nimport mlserver, mlserver.codecs, mlserver.types, mlserver.errors"
        % PATH
    )
    code += (
        "\nimport mlserver.utils, mlserver.settings, mlserver.handlers\nassert mlserver.__envserve_compat__"
    )
    loaded = _loaded_after(code)
    assert "mlserver.codecs.decorator" in loaded
    assert _forbidden(loaded, (*SERVER_ONLY, "pydantic", "envserve.server", "envserve.workers")) == []


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
    assert public - set(envserve.__all__) == set()
    assert callable(envserve.serve)


def _imports(path: Path, package: str):
    """The envserve modules a file imports (relative imports resolved), at any depth of the file."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                names = [module] + [module + "." + a.name for a in node.names]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("envserve."):
                yield name


def _layer_of(module: str):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_no_module_imports_a_higher_layer():
    violations = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = module if rel.name == "__init__" else module.rsplit(".", 1)[0]
        own = _layer_of(module)
        if own not in LAYERS:
            continue
        for target in _imports(path, package):
            other = _layer_of(target)
            if other not in LAYERS or other == own:
                continue
            if LAYERS[other] > LAYERS[own] or other in SIDE_FORBIDDEN.get(own, ()):
                violations.append("%s imports %s" % (module, target))
    assert violations == []


def test_every_module_has_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in SRC.iterdir() if not p.name.startswith("__")}
    tops -= {"py", "console_static"}
    assert tops - set(LAYERS) == set(), "give the new module a layer in LAYERS (STYLE.md)"


def test_lazy_exports_import_on_first_use_and_name_what_is_missing():
    code = (
        "import sys, envserve.environments as e\n"
        "assert 'envserve.environments.cache' not in sys.modules\n"
        "assert e.EnvironmentCache is sys.modules['envserve.environments.cache'].EnvironmentCache\n"
        "assert 'EnvironmentCache' in vars(e)\n"
        "import envserve.settings as s\n"
        "assert s.scan_repository.__module__ == 'envserve.settings.repository'\n"
        "try:\n"
        "    envserve.settings.nothing\n"
        "except AttributeError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", "import envserve\n" + code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "module 'envserve.settings' has no attribute 'nothing'"
