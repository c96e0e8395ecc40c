"""The one client of the MLflow tracking server's REST API (no mlflow package needed).

Used by model URIs (``storage``: ``models:/``, ``runs:/``, ``mlflow-artifacts:/``) and by the deployment
wizard and console (``deploy``: browsing the registry), so both send the same credentials
(``MLFLOW_TRACKING_TOKEN`` as a bearer token, or ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` as basic auth,
as MLflow's own client does) and report failures the same way. Errors are raised as the caller's error
class (a ``StorageError`` for a model URI, a ``SettingsError`` for the wizard), with the caller's subject
first. Standard library only.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Any, Dict, Mapping, Optional, Type

from .errors import EnvserveError

__all__ = ["MlflowClient", "open_url"]

#: Headers that carry credentials: never sent on to another origin when a server redirects.
_CREDENTIALS = ("authorization", "cookie", "proxy-authorization")


def _origin(url: str) -> tuple:  # type: ignore[type-arg]
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


class _SameOriginCredentials(urllib.request.HTTPRedirectHandler):
    """A redirect keeps the request's credentials only when it stays on the same scheme, host and port
    (urllib otherwise sends ``Authorization`` to wherever a server points, another host included)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            for name in list(new.headers):
                if name.lower() in _CREDENTIALS:
                    del new.headers[name]
            for name in list(new.unredirected_hdrs):
                if name.lower() in _CREDENTIALS:
                    del new.unredirected_hdrs[name]
        return new


_OPENER = urllib.request.build_opener(_SameOriginCredentials())


def open_url(request: urllib.request.Request, timeout: float, context: Any = None) -> Any:
    """``urllib.request.urlopen`` whose redirects drop credentials when they change origin."""
    if context is None:
        return _OPENER.open(request, timeout=timeout)
    opener = urllib.request.build_opener(
        _SameOriginCredentials(), urllib.request.HTTPSHandler(context=context)
    )
    return opener.open(request, timeout=timeout)


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class MlflowClient:
    def __init__(
        self,
        tracking_uri: str,
        environ: Optional[Mapping[str, str]] = None,
        error: Type[EnvserveError] = EnvserveError,
        subject: str = "",
        timeout: float = 30.0,
    ) -> None:
        self.error = error
        self.subject = subject
        if not tracking_uri.startswith(("http://", "https://")):
            raise self._fail(
                "MLFLOW_TRACKING_URI must be the tracking server's http(s) URL, got %r" % tracking_uri
            )
        self.base = tracking_uri.rstrip("/")
        self.timeout = timeout
        env = os.environ if environ is None else environ
        self.headers: Dict[str, str] = {}
        token = env.get("MLFLOW_TRACKING_TOKEN")
        user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
        if token:
            self.headers["Authorization"] = "Bearer " + token
        elif user and password:
            pair = ("%s:%s" % (user, password)).encode("utf-8")
            self.headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")

    def _fail(self, message: str) -> EnvserveError:
        return self.error("%s: %s" % (self.subject, message) if self.subject else message)

    def open(self, path: str, params: Optional[Dict[str, Any]] = None, body: Any = None) -> IO[bytes]:
        """The raw response of ``<tracking>/<path>`` (JSON-encoded ``body`` makes it a POST)."""
        url = "%s/%s" % (self.base, path.lstrip("/"))
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            response: IO[bytes] = open_url(
                urllib.request.Request(url, data=data, headers=headers), timeout=self.timeout
            )
            return response
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read().decode("utf-8")).get("message", "")
            except ValueError:
                message = ""
            raise self._fail("MLflow answered %d for %s: %s" % (exc.code, path, message)) from None
        except (urllib.error.URLError, OSError) as exc:
            raise self._fail(
                "cannot reach the MLflow tracking server at %s: %s"
                % (_redact(self.base), getattr(exc, "reason", exc))
            ) from None

    def call(self, path: str, params: Optional[Dict[str, Any]] = None, body: Any = None) -> Dict[str, Any]:
        """A REST call of ``/api/2.0/mlflow/<path>``, its JSON answer as a dict."""
        with self.open("api/2.0/mlflow/" + path, params, body) as r:
            try:
                doc = json.loads(r.read().decode("utf-8"))
            except ValueError:
                raise self._fail("MLflow answered %s with something that is not JSON" % path) from None
        return doc if isinstance(doc, dict) else {}
