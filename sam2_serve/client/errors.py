"""Exceptions of the client: what the server said (status, code, message, request_id), or why it could not be asked."""

from __future__ import annotations

from typing import Optional


class Sam2ServeError(Exception):
    """Base class. ``status``: HTTP status (None when no response came); ``code``: the server's error code;
    ``request_id``: quote it when reporting a problem; ``retry_after_s``: when a retry may succeed."""

    def __init__(self, message: str, status: Optional[int] = None, code: Optional[str] = None,
                 request_id: Optional[str] = None, retry_after_s: Optional[float] = None):
        super().__init__(message)
        self.message, self.status, self.code = message, status, code
        self.request_id, self.retry_after_s = request_id, retry_after_s

    def __str__(self) -> str:
        head = " ".join(str(x) for x in (self.status, self.code) if x is not None)
        tail = f" (request_id {self.request_id})" if self.request_id else ""
        return f"{head}: {self.message}{tail}" if head else f"{self.message}{tail}"


class ClientError(Sam2ServeError):
    """A 4xx: the request needs fixing; ``message`` says what (retrying the same request will not help)."""


class AuthenticationError(ClientError):
    """401/403: a missing or wrong API key (``Model(url, api_key=...)`` or ``$SAM2_SERVE_API_KEY``)."""


class ServerError(Sam2ServeError):
    """A 5xx other than 503, or a stream that failed on the server after it began."""


class ServiceUnavailable(ServerError):
    """503 (backpressure, a replica being replaced) still answered after ``max_retries`` retries."""


ServerBusy = ServiceUnavailable


class StreamError(ServerError):
    """A frame stream ended with an ``{"error": ...}`` line (frames before it were delivered)."""


class RequestTimeout(Sam2ServeError):
    """No answer within the client's ``timeout`` (the request may still have run on the server)."""


class ConnectionFailed(Sam2ServeError):
    """The server could not be reached (after retries where a retry was safe)."""
