"""Settings as data: the server's (settings.json, ENVSERVE_* variables, flags) and each model's
(MLServer's model-settings.json).

Only the model's settings are imported here eagerly: workers receive them, and workers run in model
environments down to Python 3.6. The server's settings and the repository scan (Python 3.10+, the server
side) are imported from :mod:`.server` and :mod:`.repository` by the server's code, and are reachable
here lazily for everyone else.
"""

from .._lazy import lazy_exports
from .model import MODEL_SETTINGS_FILE, ModelSettings

__all__ = [
    "ENV_PREFIX",
    "MODEL_SETTINGS_FILE",
    "SERVER_SETTINGS_FILE",
    "ModelSettings",
    "RepositoryEntry",
    "ServerSettings",
    "scan_repository",
]

_LAZY = {
    "ENV_PREFIX": ".server",
    "SERVER_SETTINGS_FILE": ".server",
    "ServerSettings": ".server",
    "RepositoryEntry": ".repository",
    "scan_repository": ".repository",
}

__getattr__ = lazy_exports(__name__, _LAZY, globals())
