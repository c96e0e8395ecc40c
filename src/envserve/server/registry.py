"""The model registry: which models exist, in which state, and the handle that serves each one.

States follow the repository extension of the Open Inference Protocol: LOADING, READY, UNLOADING and
UNAVAILABLE (failed to load, or unloaded; ``reason`` says which). A model that fails to load is recorded
UNAVAILABLE with the reason and never affects the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ..environments import EnvironmentCache
from ..errors import (
    EnvserveError,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    SettingsError,
)
from ..settings.model import ModelSettings
from ..settings.repository import RepositoryEntry, scan_repository
from ..settings.server import ServerSettings
from ..storage import fetch, is_remote, name_from_uri, redact
from .handle import ModelHandle, ModelState
from .placement import Placement
from .shadow import Shadow

__all__ = ["ModelRecord", "ModelRegistry"]

logger = logging.getLogger("envserve.registry")

#: Whether the server answers (method, path) itself: a model's own REST route there would never be reached.
RouteTaken = Callable[[str, str], bool]


@dataclass
class ModelRecord:
    settings: ModelSettings
    state: ModelState = ModelState.LOADING
    reason: str = ""
    handle: Optional[ModelHandle] = None

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def version(self) -> Optional[str]:
        return self.settings.version

    def ready_handle(self) -> ModelHandle:
        """The handle, when the model is READY; ModelNotReady saying its state and why otherwise."""
        handle = self.handle
        if self.state is not ModelState.READY or handle is None:
            detail = ": %s" % self.reason if self.reason else ""
            hint = ""
            if self.reason == "unloaded":
                hint = "; load it again through the repository API (load %s)" % self.name
            raise ModelNotReady(
                "model %r is %s%s%s" % (self.name, self.state, detail, hint),
                model=self.name,
                version=self.version,
            )
        return handle


def _version_key(version: Optional[str]) -> List[Any]:
    # "10" after "9"; non-numeric parts compared as text; no version sorts first.
    if version is None:
        return []
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", version) if p]


class ModelRegistry:
    """All models of the repository, by name and version.

    ``placement`` makes each version's handle (in process or in workers); ``route_taken`` says which
    REST routes the server answers itself, so a model whose own route is one of them fails to load.
    """

    def __init__(
        self,
        settings: ServerSettings,
        placement: Optional[Placement] = None,
        route_taken: Optional[RouteTaken] = None,
    ) -> None:
        self.settings = settings
        self.placement = placement or Placement(settings, EnvironmentCache(settings.environments_dir or None))
        self.route_taken = route_taken
        self.models: Dict[str, Dict[Optional[str], ModelRecord]] = {}
        #: Settings files that could not be parsed: name -> reason (shown in the index as UNAVAILABLE).
        self.broken: Dict[str, str] = {}
        #: Shadows of the models that name a ``shadow_environment``, by model key (server/shadow.py).
        self.shadows: Dict[str, Shadow] = {}
        self._shadow_loads: Set[asyncio.Task[Any]] = set()

    @property
    def environments(self) -> EnvironmentCache:
        return self.placement.environments

    # -- lookups ------------------------------------------------------------------------------------------

    def get(self, name: str, version: Optional[str] = None) -> ModelRecord:
        versions = self.models.get(name)
        if not versions:
            if name in self.broken:
                raise ModelNotReady("model %r is unavailable: %s" % (name, self.broken[name]), model=name)
            raise ModelNotFound(
                "model %r not found; the repository index lists the models served" % name, model=name
            )
        if version is None:
            record = versions[max(versions, key=_version_key)]
        else:
            found = versions.get(version)
            if found is None:
                known = ", ".join(sorted((v for v in versions if v is not None), key=_version_key)) or "none"
                raise ModelNotFound(
                    "model %r has no version %r (versions: %s)" % (name, version, known),
                    model=name,
                    version=version,
                )
            record = found
        return record

    def records(self) -> List[ModelRecord]:
        return [
            r
            for name in sorted(self.models)
            for _, r in sorted(self.models[name].items(), key=lambda kv: _version_key(kv[0]))
        ]

    @property
    def settled(self) -> bool:
        return all(r.state not in (ModelState.LOADING, ModelState.UNLOADING) for r in self.records())

    def index(self, ready_only: bool = False) -> List[Dict[str, Any]]:
        rows = []
        for r in self.records():
            if ready_only and r.state is not ModelState.READY:
                continue
            reason = r.reason
            if r.state is ModelState.READY and r.handle is not None:
                reason = r.handle.problem() or ""
            row: Dict[str, Any] = {"name": r.name, "state": r.state.value, "reason": reason}
            if r.version is not None:
                row["version"] = r.version
            rows.append(row)
        if not ready_only:
            rows.extend(
                {"name": name, "state": ModelState.UNAVAILABLE, "reason": reason}
                for name, reason in sorted(self.broken.items())
                if name not in self.models
            )
        return rows

    def status(self) -> List[Dict[str, Any]]:
        """The index with what envserve knows beyond the protocol: runtime, environment, workers."""
        rows = self.index()
        details = {(r.name, r.version): r.handle.describe() for r in self.records() if r.handle is not None}
        for row in rows:
            row.update(details.get((row["name"], row.get("version")), {}))
        for record in self.records():
            shadow = self.shadows.get(record.settings.key)
            if shadow is None:
                continue
            found = shadow.snapshot()
            summary = {k: found[k] for k in ("environment", "state", "error", "sample", "rows", "agreement")}
            summary["max_abs_diff"] = found["max_abs_diff"]
            for row in rows:
                if (row["name"], row.get("version")) == (record.name, record.version):
                    row["shadow"] = summary
        return rows

    # -- loading ------------------------------------------------------------------------------------------

    def _scan(self) -> List[RepositoryEntry]:
        entries = scan_repository(self.settings.model_repository) if self.settings.model_repository else []
        if self.settings.model_uri:  # a model named only by its URI (envserve serve --model-uri)
            s = self.settings
            uri = s.model_uri
            name = s.model_name or name_from_uri(uri)
            try:
                extra = json.loads(s.model_extra) if s.model_extra else {}
            except ValueError:
                extra = None
            if not isinstance(extra, dict):
                raise SettingsError("model_extra must be a JSON object, got %r" % s.model_extra[:200])
            model = ModelSettings(
                name=name,
                uri=uri,
                implementation=s.model_implementation or None,
                version=s.model_version or None,
                extra=extra,
            )
            entries.append(RepositoryEntry("<--model-uri %s>" % redact(uri), model))
        return entries

    async def load_repository(self) -> None:
        """Load every model found in the repository, concurrently; failures are recorded, not raised."""
        entries = self._scan()
        try:
            await asyncio.gather(*(self._load_entry(e) for e in entries))
        finally:
            self.environments.drop_early()  # begun for a model that did not ask for it after all

    async def load_model(self, name: str) -> List[ModelRecord]:
        """(Re)load every version of ``name`` from the repository (repository extension ``load``)."""
        entries = [e for e in self._scan() if e.name == name]
        if not entries:
            raise ModelNotFound(
                "no model named %r in repository %s" % (name, self.settings.model_repository), model=name
            )
        previous = self.models.get(name, {})
        if not any(r.state is ModelState.READY for r in previous.values()):
            await self.unload_model(name, missing_ok=True)
            self.models.pop(name, None)
            await asyncio.gather(*(self._load_entry(e) for e in entries))
            return list(self.models.get(name, {}).values())
        # A reload: the new versions load off to the side while the old ones keep serving; they replace
        # the old ones only when every one of them is READY. A failed reload leaves the old ones in place.
        problems = ["%s: %s" % (e.path, e.error) for e in entries if e.settings is None]
        fresh = {e.settings.version: ModelRecord(e.settings) for e in entries if e.settings is not None}
        await asyncio.gather(*(self.load_record(r) for r in fresh.values()))
        problems += [r.reason for r in fresh.values() if r.state is not ModelState.READY]
        if problems:
            await asyncio.gather(*(self._unload_record(r) for r in fresh.values()))
            raise ModelLoadError(
                "reloading model %r failed, the loaded version keeps serving: %s"
                % (name, "; ".join(problems)),
                model=name,
            )
        self.models[name] = fresh
        # Requests already running keep their handle: a worker finishes what it has queued before "stop".
        await asyncio.gather(*(self._unload_record(r) for r in previous.values()))
        logger.info("model %s reloaded", name)
        return list(fresh.values())

    def add_settings(self, settings: ModelSettings) -> ModelRecord:
        versions = self.models.setdefault(settings.name, {})
        if settings.version in versions and versions[settings.version].state is not ModelState.UNAVAILABLE:
            raise SettingsError(
                "two model settings declare %r; give them different parameters.version values" % settings.key
            )
        record = ModelRecord(settings)
        versions[settings.version] = record
        self.broken.pop(settings.name, None)
        return record

    async def _load_entry(self, entry: RepositoryEntry) -> None:
        if entry.settings is None:
            reason = str(entry.error)
            logger.error("model settings %s are invalid: %s", entry.path, reason)
            self.broken[entry.name] = reason
            return
        try:
            record = self.add_settings(entry.settings)
        except SettingsError as exc:
            logger.error("%s", exc)
            return
        await self.load_record(record)

    async def load_record(self, record: ModelRecord) -> None:
        previous = self.shadows.pop(record.settings.key, None)
        if previous is not None:
            await previous.unload()
        record.state, record.reason = ModelState.LOADING, ""
        try:
            settings = record.settings
            self._check_roots(settings)
            if settings.uri is not None and is_remote(settings.uri):
                loop = asyncio.get_running_loop()
                downloads = os.path.dirname(self.environments.root)
                local = await loop.run_in_executor(None, fetch, settings.uri, downloads)
                settings = dataclasses.replace(settings, uri=local)
                if not _within(local, downloads):  # a registry or URI that resolved to a local path
                    self._check_roots(settings)
            settings = self._with_pickle_policy(settings)
            handle = self.placement.make(settings)
            await handle.load()
            try:
                self._check_routes(record.settings, handle)
            except BaseException:
                await handle.unload()
                raise
        except Exception as exc:  # any failure belongs to this model alone
            record.state = ModelState.UNAVAILABLE
            record.reason = (
                str(exc) if isinstance(exc, EnvserveError) else "%s: %s" % (type(exc).__name__, exc)
            )
            # the traceback of what the model's own code (or a framework) raised; none for our own errors
            cause = exc.__cause__ if isinstance(exc, EnvserveError) else exc
            shown = cause if cause is not None and not isinstance(cause, EnvserveError) else None
            logger.error("model %s failed to load: %s", record.settings.key, record.reason, exc_info=shown)
            return
        record.handle, record.state = handle, ModelState.READY
        logger.info("model %s is ready", record.settings.key)
        self._start_shadow(settings)

    def _start_shadow(self, settings: ModelSettings) -> None:
        """A model with ``parameters.shadow_environment``: its shadow loads in the background (the primary
        is READY already; a shadow that fails to load fails alone)."""
        environment = settings.parameters.get("shadow_environment")
        if not environment:
            return
        from ..environments.source import with_environment

        try:
            sample = float(settings.parameters.get("shadow_sample", 0.1))
            if not 0.0 <= sample <= 1.0:
                raise ValueError("not between 0 and 1")
            rtol = float(settings.parameters.get("shadow_rtol", 1e-7))
            atol = float(settings.parameters.get("shadow_atol", 0.0))
            target = environment if environment == "server" else settings.resolve(str(environment))
            shadow = Shadow(settings.key, str(environment), sample, rtol, atol)
            handle = self.placement.make(with_environment(settings, target))
        except (ValueError, TypeError, EnvserveError) as exc:
            shadow = Shadow(settings.key, str(environment), 0.0)
            shadow.state, shadow.error = ModelState.UNAVAILABLE.value, "invalid shadow settings: %s" % exc
            self.shadows[settings.key] = shadow
            logger.error("model %s: %s", settings.key, shadow.error)
            return
        self.shadows[settings.key] = shadow
        task = asyncio.ensure_future(shadow.load(handle))
        self._shadow_loads.add(task)
        task.add_done_callback(self._shadow_loads.discard)

    def _with_pickle_policy(self, settings: ModelSettings) -> ModelSettings:
        """The operator's policy for what a model's files may run, carried to the runtime in the model's
        parameters: ``pickle_allow`` (server-wide; a model's own list may only narrow it), ``pickle_code``
        (the operator's ``pickle_scan=false``) and ``model_code`` (``trust_model_code``). A model's settings
        come from the same place as its files, so they cannot widen any of it."""
        params = dict(settings.parameters)
        server_allow = [r.strip() for r in self.settings.pickle_allow.split(",") if r.strip()]
        own_scan = params.pop("pickle_scan", None)
        if own_scan in (False, "false", "0", 0) and self.settings.pickle_scan:
            raise SettingsError(
                "model %r: parameters.pickle_scan=false cannot be set by a model's settings (they come from "
                "the same place as its files); the operator can set pickle_scan=false server-wide"
                % settings.name
            )
        own = params.pop("pickle_allow", None)
        own_rules = [own] if isinstance(own, str) else list(own or [])
        wider = [r for r in own_rules if r not in server_allow]
        if wider:
            raise SettingsError(
                "model %r: parameters.pickle_allow cannot widen what the server unpickles (%s); the operator "
                "allows classes server-wide with pickle_allow (ENVSERVE_PICKLE_ALLOW)"
                % (settings.name, ", ".join(map(str, wider)))
            )
        params["pickle_allow"] = own_rules if own is not None else server_allow
        params["pickle_code"] = not self.settings.pickle_scan
        params["model_code"] = bool(self.settings.trust_model_code)
        return dataclasses.replace(settings, parameters=params)

    def _check_routes(self, settings: ModelSettings, handle: ModelHandle) -> None:
        """A model's own REST routes must not be the server's nor another model's."""
        for route in handle.capabilities().get("handlers") or ():
            method, path = route["method"], route["path"]
            if self.route_taken is not None and self.route_taken(method, path):
                raise ModelLoadError(
                    "model %r: custom handler %s %s (%s) is a route envserve serves itself; choose another "
                    "rest_path" % (settings.name, method, path, route["name"]),
                    model=settings.name,
                )
            found = self.custom_route(method, path)
            if found is not None and found[0].name != settings.name:
                raise ModelLoadError(
                    "model %r: custom handler %s %s (%s) is already served by model %r"
                    % (settings.name, method, path, route["name"], found[0].name),
                    model=settings.name,
                )

    def custom_route(self, method: str, path: str) -> Optional[Tuple[ModelRecord, Dict[str, str]]]:
        """The READY model whose own REST route (``@custom_handler``) is (method, path), and the route."""
        for versions in self.models.values():
            for record in versions.values():
                if record.state is not ModelState.READY or record.handle is None:
                    continue
                for route in record.handle.capabilities().get("handlers") or ():
                    if route["path"] == path and route["method"] == method:
                        return record, route
        return None

    def _check_roots(self, settings: ModelSettings) -> None:  # after every resolution of the model's URI
        """With ``allowed_roots`` set, local paths a model reads must resolve inside one of them."""
        if not self.settings.allowed_roots:
            return
        roots = [r for r in self.settings.allowed_roots.split(":") if r]
        paths = []
        if settings.uri is not None and not is_remote(settings.uri):
            paths.append(
                settings.resolve(
                    settings.uri[len("file://") :] if settings.uri.startswith("file://") else settings.uri
                )
            )
        for key in ("environment_tarball", "environment_path", "environment"):
            value = settings.parameters.get(key)
            if isinstance(value, str) and value and value != "server":
                paths.append(settings.resolve(value))
        for path in paths:
            if not any(_within(path, root) for root in roots):
                raise SettingsError(
                    "model %r: %s is outside the allowed roots (allowed_roots)" % (settings.name, path)
                )

    async def unload_model(self, name: str, missing_ok: bool = False) -> None:
        versions = self.models.get(name)
        if not versions:
            if missing_ok:
                return
            raise ModelNotFound("model %r is not loaded" % name, model=name)
        for record in versions.values():
            await self._unload_record(record)

    async def _unload_record(self, record: ModelRecord) -> None:
        shadow = self.shadows.pop(record.settings.key, None)
        if shadow is not None:
            await shadow.unload()
        handle, record.handle = record.handle, None
        record.state = ModelState.UNLOADING
        try:
            if handle is not None:
                await handle.unload()
        finally:
            record.state, record.reason = ModelState.UNAVAILABLE, "unloaded"

    async def close(self) -> None:
        for task in list(self._shadow_loads):  # a shadow still loading stops; its model's unload below
            task.cancel()
        await asyncio.gather(*self._shadow_loads, return_exceptions=True)
        await asyncio.gather(*(self.unload_model(n, missing_ok=True) for n in list(self.models)))
        self.environments.drop_early()
        self.placement.close()


def _within(path: str, folder: str) -> bool:
    """Whether ``path`` (symlinks resolved) is ``folder`` or under it."""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)
