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

from ..environments.tarball import MAX_MEMBERS, MAX_UNPACKED_BYTES, safe_extract
from . import DownloadCache, StorageError, redact

__all__ = ["fetch_http", "unzip"]


def unzip(archive: str, target: str, source: str, max_bytes: int = MAX_UNPACKED_BYTES) -> None:
    """Unpack a ``.zip`` under the caps tarballs have: no member outside ``target`` (absolute, ``..``,
    a drive or a backslash path), no more than ``MAX_MEMBERS`` members, and no more than ``max_bytes``
    unpacked — counted from what each member really inflates to, not from what the archive declares."""
    with zipfile.ZipFile(archive) as z:
        members = z.infolist()
        if len(members) > MAX_MEMBERS:
            raise StorageError(
                "model URI %s: archive has more than %d members; refusing" % (source, MAX_MEMBERS)
            )
        for m in members:
            name = m.filename
            if name.startswith(("/", "\\")) or "\\" in name or ":" in name or ".." in name.split("/"):
                raise StorageError("model URI %s: archive member %r escapes" % (source, name))
        total = 0
        for m in members:
            path = os.path.join(target, *[p for p in m.filename.split("/") if p])
            if m.is_dir():
                os.makedirs(path, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with z.open(m) as src, open(path, "wb") as out:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    total += len(chunk)
                    if total > max_bytes:
                        raise StorageError(
                            "model URI %s unpacks to more than %d bytes; refusing (decompression bomb?)"
                            % (source, max_bytes)
                        )
                    out.write(chunk)


def fetch_http(uri: str, cache: DownloadCache, env: Mapping[str, str], cache_root: str) -> str:
    tmp_dir = tempfile.mkdtemp(prefix="envserve-http-")
    try:
        name = os.path.basename(uri.split("?", 1)[0].rstrip("/")) or "model"
        local = os.path.join(tmp_dir, name)
        h = hashlib.sha256()
        try:
            with urllib.request.urlopen(uri, timeout=60) as response, open(local, "wb") as out:
                size = 0
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    size += len(chunk)
                    if size > MAX_UNPACKED_BYTES:
                        raise StorageError(
                            "model URI %s is larger than %d bytes; refusing"
                            % (redact(uri), MAX_UNPACKED_BYTES)
                        )
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
                unzip(local, target, redact(uri))
            else:
                shutil.copy(local, os.path.join(target, name))

        folder = cache.get_or_fetch("http|" + h.hexdigest(), uri, unpack)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    entries = os.listdir(folder)
    if len(entries) == 1 and os.path.isdir(os.path.join(folder, entries[0])):
        return os.path.join(folder, entries[0])  # an archive of one top-level folder
    return folder
