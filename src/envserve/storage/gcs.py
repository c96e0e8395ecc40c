"""``gs://bucket/prefix``: every object under the prefix (or the one object), with google-cloud-storage
(extra ``gcs``).

Credentials as Google's libraries find them: ``GOOGLE_APPLICATION_CREDENTIALS`` (a service-account or
workload-identity JSON file; also from ``ENVSERVE_SECRET_DIR``), else Application Default Credentials
(the metadata server on GKE, gcloud's). ``STORAGE_EMULATOR_HOST`` (the variable Google's clients read) or
``GCS_ENDPOINT`` points at another endpoint, such as an emulator, which is then used without credentials
unless a credentials file is given.
"""

from __future__ import annotations

from typing import Any, Collection, Iterator, Mapping, Optional, Tuple

from . import DownloadCache, StorageError, fetch_objects, redact

__all__ = ["fetch_gs"]


def _client(env: Mapping[str, str], uri: str) -> Any:
    try:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage
    except ImportError:
        raise StorageError(
            "gs:// model URIs need google-cloud-storage: pip install 'envserve[gcs]'"
        ) from None
    endpoint = env.get("STORAGE_EMULATOR_HOST") or env.get("GCS_ENDPOINT") or ""
    if endpoint and not endpoint.startswith(("http://", "https://")):
        endpoint = "http://" + endpoint
    options = {"api_endpoint": endpoint} if endpoint else None
    project = env.get("GOOGLE_CLOUD_PROJECT") or env.get("GCLOUD_PROJECT")
    keyfile = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    try:
        if keyfile:
            return storage.Client.from_service_account_json(keyfile, project=project, client_options=options)
        if endpoint:
            return storage.Client(
                project=project or "envserve",
                credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                client_options=options,
            )
        return storage.Client(project=project)
    except Exception as exc:
        raise StorageError("model URI %s: %s" % (redact(uri), _credentials_problem(exc, keyfile))) from None


def _credentials_problem(exc: Exception, keyfile: Optional[str]) -> str:
    name = type(exc).__name__
    if keyfile and isinstance(exc, (OSError, ValueError)):
        return "the credentials file in GOOGLE_APPLICATION_CREDENTIALS cannot be used (%s)" % name
    if name == "DefaultCredentialsError":
        return (
            "no Google Cloud credentials (set GOOGLE_APPLICATION_CREDENTIALS or run with workload identity)"
        )
    return "cannot create a Google Cloud Storage client (%s)" % name


def _explain(exc: Exception, uri: str) -> StorageError:
    code = getattr(exc, "code", None)
    hints = {
        401: "the credentials were refused",
        403: "access denied for these credentials",
        404: "the bucket or object does not exist",
    }
    detail = hints.get(code) if isinstance(code, int) else None
    if detail is None:
        name = type(exc).__name__
        detail = "cannot reach Google Cloud Storage" if "Connection" in name else name
    return StorageError("model URI %s: %s" % (redact(uri), detail))


def fetch_gs(
    uri: str,
    cache: DownloadCache,
    env: Mapping[str, str],
    cache_root: str,
    only: Optional[Collection[str]] = None,
) -> str:
    bucket_name, _, prefix = uri[len("gs://") :].partition("/")
    if not bucket_name:
        raise StorageError("model URI %s has no bucket" % redact(uri))
    client = _client(env, uri)
    bucket = client.bucket(bucket_name)

    def list_objects() -> Iterator[Tuple[str, str]]:
        for blob in client.list_blobs(bucket_name, prefix=prefix or None):
            yield blob.name, "%s/%s" % (blob.generation, blob.md5_hash)

    def download_one(name: str, path: str) -> None:
        bucket.blob(name).download_to_filename(path)

    store = "gs|%s|%s" % (env.get("STORAGE_EMULATOR_HOST") or env.get("GCS_ENDPOINT") or "", bucket_name)
    return fetch_objects(
        uri, cache, store, prefix, list_objects, only, download_one, lambda exc: _explain(exc, uri)
    )
