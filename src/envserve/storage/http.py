"""``https://`` model URIs: an archive (``.tar.gz``/``.tgz``/``.zip``), unpacked safely, or a single file."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from typing import Mapping

from ..environments.tarball import safe_extract
from . import DownloadCache, StorageError, redact

__all__ = ["fetch_http"]


def fetch_http(uri: str, cache: DownloadCache, env: Mapping[str, str], cache_root: str) -> str:
    tmp_dir = tempfile.mkdtemp(prefix="envserve-http-")
    try:
        name = os.path.basename(uri.split("?", 1)[0].rstrip("/")) or "model"
        local = os.path.join(tmp_dir, name)
        h = hashlib.sha256()
        try:
            with urllib.request.urlopen(uri, timeout=60) as response, open(local, "wb") as out:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as exc:
            raise StorageError("model URI %s: the server answered %d" % (redact(uri), exc.code)) from None
        except (urllib.error.URLError, OSError) as exc:
            raise StorageError("model URI %s: %s" % (redact(uri), getattr(exc, "reason", exc))) from None

        def unpack(target: str) -> None:
            if name.endswith((".tar.gz", ".tgz", ".tar")):
                safe_extract(local, target)
            elif name.endswith(".zip"):
                with zipfile.ZipFile(local) as z:
                    for member in z.namelist():
                        if member.startswith("/") or ".." in member.split("/"):
                            raise StorageError(
                                "model URI %s: archive member %r escapes" % (redact(uri), member)
                            )
                    z.extractall(target)
            else:
                shutil.copy(local, os.path.join(target, name))

        folder = cache.get_or_fetch("http|" + h.hexdigest(), uri, unpack)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    entries = os.listdir(folder)
    if len(entries) == 1 and os.path.isdir(os.path.join(folder, entries[0])):
        return os.path.join(folder, entries[0])  # an archive of one top-level folder
    return folder
