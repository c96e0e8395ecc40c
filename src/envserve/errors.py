"""envserve's domain errors: one root, no transport codes.

Each edge of the product maps these to its own codes in exactly one table (HTTP status codes in
``envserve.server.status``, which are also the metrics' status label; gRPC codes in
``envserve.server.grpc.errors``; CLI exit codes in ``envserve.cli``). Messages name what went wrong and
what to change, never a transport's route or status: the same error reaches REST, gRPC and CLI users.
This module is part of the worker's import closure, so it uses the standard library only and stays
Python 3.6-compatible.

    EnvserveError
    ├── InvalidRequest                 the request is malformed; the caller must change it
    │   ├── ShapeMismatch              declared shape does not match the number of elements
    │   ├── DatatypeMismatch           data cannot be represented in the declared datatype
    │   ├── UnknownContentType         no codec of that name
    │   └── UnsupportedMediaType       the body's media type is not one the protocol takes
    ├── PayloadTooLarge                the body is over the configured limit
    ├── ModelNotFound                  no model (or version) of that name
    ├── ModelNotReady                  known, but not READY (loading, unloading, failed, unloaded)
    ├── ModelLoadError                 the model could not be loaded (the reason becomes its state)
    │   ├── StorageError               its URI cannot be fetched (named without credentials)
    │   └── UnsafePickle               a model file would import a global outside the pickle allow-list
    ├── InferenceError                 the model raised while predicting (its message is kept)
    ├── WorkerUnavailable              the worker serving the request died or is restarting
    ├── Overloaded                     the model's queue is full: shed, retry later
    ├── InferenceTimeout               the model did not answer within the configured time
    ├── SettingsError                  server or model settings are invalid
    ├── EnvironmentSetupError          a model's environment cannot be prepared or cannot start
    │   ├── SpecError                  the environment spec cannot be read or built as written
    │   └── UnsafeArchive              the tarball is corrupt, or a member would escape the target
    ├── InvalidManifest                a generated or given Kubernetes manifest fails validation
    ├── ImageBuildError                a container image could not be built
    ├── NoScanner                      no vulnerability scanner is installed: nothing was scanned
    ├── VulnerabilitiesFound           a scan found vulnerabilities at or above the chosen severity
    ├── UpgradeMismatch                a model answers differently (or not at all) in a candidate environment
    └── Cancelled                      the user stopped an interactive command; nothing was written
"""

from typing import Optional

__all__ = [
    "Cancelled",
    "DatatypeMismatch",
    "EnvironmentSetupError",
    "EnvserveError",
    "ImageBuildError",
    "InferenceError",
    "InferenceTimeout",
    "InvalidManifest",
    "InvalidRequest",
    "ModelLoadError",
    "ModelNotFound",
    "ModelNotReady",
    "NoScanner",
    "Overloaded",
    "PayloadTooLarge",
    "SettingsError",
    "ShapeMismatch",
    "SpecError",
    "StorageError",
    "UnknownContentType",
    "UnsafeArchive",
    "UnsafePickle",
    "UnsupportedMediaType",
    "UpgradeMismatch",
    "VulnerabilitiesFound",
    "WorkerUnavailable",
]


class EnvserveError(Exception):
    """Root of every error envserve raises on purpose.

    ``model`` and ``version`` name the model the error belongs to, when there is one.
    """

    def __init__(self, message: str, *, model: Optional[str] = None, version: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.model = model
        self.version = version

    def __str__(self) -> str:
        return self.message


class InvalidRequest(EnvserveError):
    """The request is malformed; nothing was run."""


class ShapeMismatch(InvalidRequest):
    """The declared shape does not match the data."""


class DatatypeMismatch(InvalidRequest):
    """The data cannot be represented in the declared datatype."""


class UnknownContentType(InvalidRequest):
    """No codec is registered under the requested content type."""


class UnsupportedMediaType(InvalidRequest):
    """The request body's media type (or its charset) is not one the protocol accepts."""


class PayloadTooLarge(EnvserveError):
    """The request body exceeds the configured limit."""


class ModelNotFound(EnvserveError):
    """No model, or no such version of it, is known to the server."""


class ModelNotReady(EnvserveError):
    """The model is known but cannot serve now (loading, unloading, failed or unloaded)."""


class ModelLoadError(EnvserveError):
    """Loading the model failed; the message becomes the model's UNAVAILABLE reason."""


class StorageError(ModelLoadError):
    """A model URI cannot be fetched (the message names the URI, never credentials)."""


class UnsafePickle(ModelLoadError):
    """A pickled model file would import a global outside the allow-list, or cannot be read to tell
    (truncated, corrupt); nothing in it was run."""


class InferenceError(EnvserveError):
    """The model raised while predicting."""


class WorkerUnavailable(EnvserveError):
    """The worker process serving the model died or is restarting."""


class Overloaded(EnvserveError):
    """The model already has as many requests waiting as it may (``max_queue_size``); nothing was run."""


class InferenceTimeout(EnvserveError):
    """The model did not answer within the configured inference timeout."""


class SettingsError(EnvserveError):
    """Server or model settings are invalid."""


class EnvironmentSetupError(EnvserveError):
    """A model's environment could not be prepared (extracted, built, found) or its Python cannot start."""


class SpecError(EnvironmentSetupError):
    """The environment spec cannot be read or cannot be built as written."""


class UnsafeArchive(EnvironmentSetupError):
    """The tarball is corrupt or truncated, or holds a member that would escape or abuse the target."""


class InvalidManifest(EnvserveError):
    """A Kubernetes manifest fails offline validation; the message names each document and field."""


class ImageBuildError(EnvserveError):
    """The image could not be built (the builder's own output is in the log)."""


class NoScanner(EnvserveError):
    """Neither trivy nor grype is installed: nothing was scanned."""


class VulnerabilitiesFound(EnvserveError):
    """A scan found vulnerabilities at or above the severity the caller fails on."""


class UpgradeMismatch(EnvserveError):
    """An upgrade check found outputs beyond the tolerance, or a side that failed; the report says which."""


class Cancelled(EnvserveError):
    """The user stopped an interactive command before it wrote anything."""
