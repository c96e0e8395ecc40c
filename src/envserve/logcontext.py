"""The request a piece of server work belongs to, for log lines and the worker's IPC frames.

A context variable, set by the REST and gRPC edges for each request (and by adaptive batching to the ids
of the requests it merged), read by the log filter and by the worker dispatcher, which sends it with the
call so the worker's own output is tagged with it. The bottom layer, so every layer may read it.
"""

from contextvars import ContextVar

__all__ = ["REQUEST_ID"]

#: The current request's id ("" outside a request).
REQUEST_ID: "ContextVar[str]" = ContextVar("envserve_request_id", default="")
