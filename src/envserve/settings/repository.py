"""Finding model settings in a model repository: every ``model-settings.json`` below the root."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

from ..errors import SettingsError
from .model import MODEL_SETTINGS_FILE, ModelSettings

__all__ = ["RepositoryEntry", "scan_repository"]

_SKIP_DIRS = {".git", "__pycache__", ".venv", "node_modules"}


@dataclass
class RepositoryEntry:
    """A settings file found in the repository: parsed settings, or the error that stopped parsing."""

    path: str
    settings: Optional[ModelSettings] = None
    error: Optional[SettingsError] = None

    @property
    def name(self) -> str:
        if self.settings is not None:
            return self.settings.name
        return os.path.basename(os.path.dirname(self.path))


def scan_repository(root: str) -> List[RepositoryEntry]:
    """All model settings under ``root``, sorted by path. Broken files are reported, not raised."""
    if not os.path.isdir(root):
        raise SettingsError("model repository %s is not a directory" % root)
    entries = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        if MODEL_SETTINGS_FILE in filenames:
            path = os.path.join(dirpath, MODEL_SETTINGS_FILE)
            try:
                entries.append(RepositoryEntry(path, settings=ModelSettings.load(path)))
            except SettingsError as exc:
                entries.append(RepositoryEntry(path, error=exc))
    return sorted(entries, key=lambda e: e.path)
