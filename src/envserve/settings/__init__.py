"""Settings as data: the server's (settings.json, ENVSERVE_* variables, flags) and each model's
(MLServer's model-settings.json). Standard library only, Python 3.8+ (workers receive model settings)."""

from .model import MODEL_SETTINGS_FILE, ModelSettings
from .repository import RepositoryEntry, scan_repository
from .server import ENV_PREFIX, SERVER_SETTINGS_FILE, ServerSettings

__all__ = [
    "ENV_PREFIX",
    "MODEL_SETTINGS_FILE",
    "SERVER_SETTINGS_FILE",
    "ModelSettings",
    "RepositoryEntry",
    "ServerSettings",
    "scan_repository",
]
