"""Azure Blob Storage: ``https://<account>.blob.core.windows.net/<container>/<prefix>``,
``wasbs://<container>@<account>.blob.core.windows.net/<prefix>`` and ``abfss://<container>@<account>.dfs.core.windows.net/<prefix>``
(ADLS Gen2 paths are blobs too), with azure-storage-blob (extra ``azure``).

Credentials, first found: ``AZURE_STORAGE_CONNECTION_STRING`` (its ``BlobEndpoint`` also points at another
endpoint, such as the Azurite emulator), ``AZURE_STORAGE_SAS_TOKEN``, ``AZURE_STORAGE_ACCOUNT_KEY`` (or
KServe's ``AZURE_STORAGE_ACCESS_KEY``), else azure-identity's ``DefaultAzureCredential`` when installed
(workload identity, managed identity, ``AZURE_CLIENT_ID``/``AZURE_TENANT_ID``/``AZURE_CLIENT_SECRET``),
else anonymous access (public containers). All may come from ``ENVSERVE_SECRET_DIR``.
"""

from __future__ import annotations

import re
from typing import Any, Collection, Iterator, Mapping, Optional, Tuple

from . import DownloadCache, StorageError, fetch_objects, redact

__all__ = ["fetch_azure", "is_azure_uri"]

_HTTPS = re.compile(r"^https://([a-z0-9]{3,24})\.blob\.core\.windows\.net/([^/?#]+)/?([^?#]*)$")
_HADOOP = re.compile(
    r"^(?:wasbs?|abfss?)://([^@/]+)@([a-z0-9]{3,24})\.(?:blob|dfs)\.core\.windows\.net/?([^?#]*)$"
)


def is_azure_uri(uri: str) -> bool:
    return bool(_HTTPS.match(uri) or _HADOOP.match(uri))


def _parse(uri: str) -> Tuple[str, str, str]:
    """(account, container, prefix) of an Azure Blob URI."""
    m = _HTTPS.match(uri)
    if m:
        return m.group(1), m.group(2), m.group(3)
    m = _HADOOP.match(uri)
    if m:
        return m.group(2), m.group(1), m.group(3)
    raise StorageError(
        "model URI %s is not an Azure Blob URI (https://<account>.blob.core.windows.net/<container>/<path>, "
        "wasbs://<container>@<account>.blob.core.windows.net/<path> or abfss://...dfs.core.windows.net/...)"
        % redact(uri)
    )


def _container(env: Mapping[str, str], account: str, container: str) -> Any:
    try:
        from azure.storage.blob import BlobServiceClient
    except ImportError:
        raise StorageError(
            "Azure Blob model URIs need azure-storage-blob: pip install 'envserve[azure]'"
        ) from None
    url = "https://%s.blob.core.windows.net" % account
    connection = env.get("AZURE_STORAGE_CONNECTION_STRING")
    if connection:
        service = BlobServiceClient.from_connection_string(connection)
    elif env.get("AZURE_STORAGE_SAS_TOKEN"):
        service = BlobServiceClient(url, credential=env["AZURE_STORAGE_SAS_TOKEN"].lstrip("?"))
    elif env.get("AZURE_STORAGE_ACCOUNT_KEY") or env.get("AZURE_STORAGE_ACCESS_KEY"):
        key = env.get("AZURE_STORAGE_ACCOUNT_KEY") or env.get("AZURE_STORAGE_ACCESS_KEY") or ""
        service = BlobServiceClient(url, credential={"account_name": account, "account_key": key})
    else:
        credential = None
        try:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        except ImportError:
            pass  # anonymous: public containers only
        service = BlobServiceClient(url, credential=credential)
    return service.get_container_client(container)


def _explain(exc: Exception, uri: str) -> StorageError:
    code = str(getattr(exc, "error_code", "") or "")
    status = getattr(exc, "status_code", None)
    hints = {
        "ContainerNotFound": "the container does not exist",
        "BlobNotFound": "the blob does not exist",
        "AuthenticationFailed": "the credentials were refused (check the key, SAS or connection string)",
        "AuthorizationFailure": "access denied for these credentials",
        "AuthorizationPermissionMismatch": "access denied for these credentials",
    }
    detail = hints.get(code)
    if detail is None and status == 403:
        detail = "access denied for these credentials"
    if detail is None and status == 404:
        detail = "not found"
    if detail is None:
        name = type(exc).__name__
        detail = "cannot reach Azure Blob Storage" if name == "ServiceRequestError" else name
    return StorageError("model URI %s: %s" % (redact(uri), detail))


def fetch_azure(
    uri: str,
    cache: DownloadCache,
    env: Mapping[str, str],
    cache_root: str,
    only: Optional[Collection[str]] = None,
) -> str:
    account, container_name, prefix = _parse(uri)
    try:
        container = _container(env, account, container_name)
    except StorageError:
        raise
    except Exception as exc:  # a connection string or credential the client cannot use
        raise _explain(exc, uri) from None

    def list_objects() -> Iterator[Tuple[str, str]]:
        for blob in container.list_blobs(name_starts_with=prefix or None):
            yield blob.name, str(blob.etag)

    def download_one(name: str, path: str) -> None:
        with open(path, "wb") as f:
            container.download_blob(name).readinto(f)

    store = "azure|%s|%s" % (container.url.split("?", 1)[0], account)
    return fetch_objects(
        uri, cache, store, prefix, list_objects, only, download_one, lambda exc: _explain(exc, uri)
    )
