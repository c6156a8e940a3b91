"""Typed errors of the serving package; each message says what was received and what was expected."""
from __future__ import annotations

from runtime.errors import EdgeattnError


class TritonError(EdgeattnError):
    """Base of every error serve/ raises on purpose."""


class RepositoryError(TritonError):
    """The model repository cannot be written: no verified artifact, a missing file, a spec Triton cannot express."""


class ServerError(TritonError):
    """The bundled tritonserver is missing, did not start, did not get ready in time, or did not stop."""


class ClientError(TritonError):
    """A request to the server failed or its response is not what the model's config promises."""


class LoadTestError(TritonError):
    """The load test cannot run: bad arguments, a non-loopback URL, or no server."""
