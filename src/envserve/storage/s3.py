"""``s3://bucket/prefix``: every object under the prefix (or the one object), with boto3."""

from __future__ import annotations

from typing import Any, Collection, Iterator, Mapping, Optional, Tuple

from . import DownloadCache, StorageError, fetch_objects, redact

__all__ = ["fetch_s3"]


def _client(env: Mapping[str, str]) -> Any:
    try:
        import boto3
        import botocore.config
    except ImportError:
        raise StorageError("s3:// model URIs need boto3: pip install 'envserve[s3]'") from None
    endpoint = env.get("AWS_ENDPOINT_URL") or env.get("S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL_S3")
    if endpoint and not endpoint.startswith(("http://", "https://")):
        endpoint = ("https://" if env.get("USE_SSL", "1") not in ("0", "false") else "http://") + endpoint
    session = boto3.session.Session(
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=env.get("AWS_SESSION_TOKEN"),
        region_name=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1",
        profile_name=env.get("AWS_PROFILE") if not env.get("AWS_ACCESS_KEY_ID") else None,
    )
    config = botocore.config.Config(
        retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60
    )
    return session.client("s3", endpoint_url=endpoint or None, config=config)


def _explain(exc: Exception, uri: str) -> StorageError:
    code = ""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    hints = {
        "NoSuchBucket": "the bucket does not exist",
        "InvalidAccessKeyId": "the access key is not valid (check the credentials secret)",
        "SignatureDoesNotMatch": "the secret key does not match the access key (check the secret)",
        "AccessDenied": "access denied for these credentials",
        "403": "access denied for these credentials",
        "404": "not found",
    }
    detail = hints.get(code) or type(exc).__name__
    if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
        detail = "no S3 credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ENVSERVE_SECRET_DIR)"
    elif type(exc).__name__ in ("EndpointConnectionError", "ConnectTimeoutError"):
        detail = "cannot reach the S3 endpoint"
    return StorageError("model URI %s: %s" % (redact(uri), detail))


def fetch_s3(
    uri: str,
    cache: DownloadCache,
    env: Mapping[str, str],
    cache_root: str,
    only: Optional[Collection[str]] = None,
) -> str:
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StorageError("model URI %s has no bucket" % redact(uri))
    client = _client(env)

    def list_objects() -> Iterator[Tuple[str, str]]:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                yield o["Key"], str(o.get("ETag", ""))

    def download_one(name: str, path: str) -> None:
        client.download_file(bucket, name, path)

    store = "s3|%s|%s" % (env.get("AWS_ENDPOINT_URL", ""), bucket)
    return fetch_objects(
        uri, cache, store, prefix, list_objects, only, download_one, lambda exc: _explain(exc, uri)
    )
