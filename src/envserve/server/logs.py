"""Log lines people can ship: text or JSON lines, a request id on every line written for a request
(the worker's own output included), an access log, and MLServer's ``logging_settings`` file.

The request id is the client's ``X-Request-Id`` when it sends a sane one (what ingresses and meshes
set), else a fresh one; it is returned in the ``X-Request-Id`` response header (gRPC: trailing
metadata ``x-request-id``).
"""

from __future__ import annotations

import itertools
import json
import logging
import logging.config
import os
import re
import sys
import time
from typing import Any, Callable, Dict, Optional

from ..errors import SettingsError
from ..logcontext import REQUEST_ID

__all__ = [
    "ACCESS",
    "JsonFormatter",
    "TextFormatter",
    "access",
    "announce",
    "configure",
    "request_id",
]

#: The logger of access lines (``access_log`` setting); each carries method, path, model, status, latency.
ACCESS = logging.getLogger("envserve.access")

_SANE = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}\Z")
# record attributes a JSON line carries when set (the access log's and the worker lines' extras)
_FIELDS = ("request_id", "model", "worker", "method", "path", "status", "latency_ms", "protocol")


# New ids: 16 random hex digits per process, then a counter (32 hex digits, like a UUID's): unique across
# replicas, and cheaper than uuid4 on every request (0.4 us against 2-9 us here).
_PREFIX = os.urandom(8).hex()
_COUNTER = itertools.count(1)


def request_id(incoming: Optional[str]) -> str:
    """The client's id when it is a sane token (at most 128 characters, no spaces or controls), else new."""
    if incoming and _SANE.match(incoming):
        return incoming
    return "%s%016x" % (_PREFIX, next(_COUNTER))


def _with_request_id(factory: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """A LogRecord factory giving every record the current request's id as ``request_id`` (""
    outside a request), so any handler's format may use ``%(request_id)s``, user-configured ones too."""

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        record.request_id = REQUEST_ID.get()
        return record

    make.envserve = True  # type: ignore[attr-defined]
    return make


class TextFormatter(logging.Formatter):
    """``time level logger: message``, then ``request_id=...`` when the line belongs to a request."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", "")
        return "%s request_id=%s" % (text, rid) if rid else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the request's id and the
    access log's fields when set, and the traceback as ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: Dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + ".%03dZ" % int(record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None and value != "":
                doc[name] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def access(method: str, path: str, model: str, status: Any, started: float, protocol: str) -> None:
    """One access line: ``started`` is the request's ``time.perf_counter()`` on arrival."""
    latency = round((time.perf_counter() - started) * 1000, 3)
    ACCESS.info(
        "%s %s %s %.1f ms",
        method,
        path,
        status,
        latency,
        extra={
            "method": method,
            "path": path,
            "model": model,
            "status": status,
            "latency_ms": latency,
            "protocol": protocol,
        },
    )


class _LinesToLog:
    """sys.stdout / sys.stderr of a server logging JSON: what in-process model code prints becomes log
    records (one per line, with the request's id), so every line on the stream stays JSON. A write from
    inside logging itself (a handler pointed at this stream) goes to the real stream."""

    def __init__(self, logger: logging.Logger, level: int, stream: Any) -> None:
        self._logger = logger
        self._level = level
        self._stream = stream
        self._partial = ""
        self._busy = False

    def write(self, text: str) -> int:
        if self._busy:
            return int(self._stream.write(text))
        self._busy = True
        try:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
            for line in lines:
                if line.strip():
                    self._logger.log(self._level, "%s", line.rstrip())
        finally:
            self._busy = False
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def announce(settings: Any) -> None:
    """A server's first log lines: its version and the contract it follows (or its own settings), then what
    reading the settings noticed (MLServer settings accepted and not acted on, with the reason)."""
    from .. import __version__

    log = logging.getLogger("envserve")
    log.info("envserve %s: %s", __version__, settings.contract or "envserve's own settings")
    for level, message in getattr(settings, "_notices", ()):
        logging.getLogger("envserve.settings").log(level, "%s", message)


def configure(level: str, fmt: str = "text", logging_settings: str = "") -> None:
    """The server's logging: one stderr handler in ``fmt``; then MLServer's ``logging_settings`` (a file
    or an inline JSON object) applied on top, as MLServer applies it; every record has ``request_id``."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "envserve", False):
        logging.setLogRecordFactory(_with_request_id(factory))
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if fmt == "json":
        logging.captureWarnings(True)
        sys.stdout = _LinesToLog(logging.getLogger("stdout"), logging.INFO, sys.stdout)
        sys.stderr = _LinesToLog(logging.getLogger("stderr"), logging.WARNING, sys.stderr)
    if logging_settings:
        _apply(logging_settings)


def _apply(logging_settings: str) -> None:
    """MLServer's ``logging_settings``: a dict (here inline JSON), a ``.json`` or YAML file for
    ``dictConfig``, or any other file for ``fileConfig`` (the INI format)."""
    text = logging_settings.strip()
    try:
        if text.startswith("{"):
            logging.config.dictConfig(json.loads(text))
            return
        if not os.path.isfile(text):
            raise SettingsError("logging_settings: no such file %r" % text)
        suffix = os.path.splitext(text)[1].lower()
        if "json" in suffix:
            with open(text, encoding="utf-8") as f:
                logging.config.dictConfig(json.load(f))
        elif suffix in (".yaml", ".yml"):
            import yaml

            with open(text, encoding="utf-8") as f:
                logging.config.dictConfig(yaml.safe_load(f))
        else:
            logging.config.fileConfig(text, disable_existing_loggers=False)
    except SettingsError:
        raise
    except Exception as exc:  # dictConfig/fileConfig raise ValueError, KeyError, configparser errors...
        raise SettingsError(
            "logging_settings %r cannot be applied: %s: %s" % (text[:200], type(exc).__name__, exc)
        ) from None
