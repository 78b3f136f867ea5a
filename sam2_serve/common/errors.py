"""Every error the service reports on purpose, with its HTTP status.

Deployments raise these; the ingress maps them to ``{"error": {"code", "message"}}`` responses in one place.
Anything that is not a ``ServiceError`` is a bug and is answered 500 without internals.
The classes keep only a message so they pickle cleanly across Ray (a ``RayTaskError`` wrapping one is still
an instance of it in the caller).
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: an error with a stable machine-readable ``code`` and an HTTP ``status``."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        return (type(self), (self.message,))

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}

    #: Seconds after which a retry may succeed (sent as ``Retry-After``); None: retrying will not help.
    retry_after_s: float | None = None

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with this error (``Retry-After`` for retryable ones)."""
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(0, int(-(-self.retry_after_s // 1))))}  # whole seconds, rounded up


class InvalidRequest(ServiceError):
    """The request is malformed or its values are out of range (names the field and what is allowed)."""

    status, code = 400, "invalid_request"


class InvalidImage(InvalidRequest):
    """The uploaded bytes are not a decodable image (not an image, truncated, empty, bad base64)."""

    code = "invalid_image"


class InvalidVideo(InvalidRequest):
    """The uploaded bytes are not a decodable video."""

    code = "invalid_video"


class Unauthorized(ServiceError):
    """A missing or wrong API key (``Authorization: Bearer <key>``)."""

    status, code = 401, "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="sam2-serve"'}


class NotFound(ServiceError):
    status, code = 404, "not_found"


class EmbeddingNotFound(NotFound):
    """An ``image_id`` that is unknown or was evicted from the embedding cache."""

    code = "image_not_found"


class SessionNotFound(NotFound):
    code = "session_not_found"


class SessionGone(ServiceError):
    """A session that existed but expired or was lost with its replica."""

    status, code = 410, "session_gone"


class PayloadTooLarge(ServiceError):
    """Bytes, pixels, frames or duration over a configured limit."""

    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class LimitExceeded(ServiceError):
    """Too much work asked of one request (points, objects, sessions...)."""

    status, code = 422, "limit_exceeded"


class Overloaded(ServiceError):
    """Backpressure: queues are full; the client should retry later."""

    status, code = 503, "overloaded"
    retry_after_s = 1.0


class ReplicaUnavailable(ServiceError):
    """A replica died or was unreachable while serving the request; Serve replaces it. Nothing was stored, so the
    same request can be sent again."""

    status, code = 503, "replica_unavailable"
    retry_after_s = 2.0


class RequestTimeout(ServiceError):
    """The request took longer than the service's ``request_timeout_s``; its model work was cancelled."""

    status, code = 504, "request_timeout"


class ModelUnavailable(ServiceError):
    """A checkpoint cannot be found, downloaded or loaded. Raised at replica start-up."""

    status, code = 503, "model_unavailable"
