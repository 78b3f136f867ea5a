"""What every API route goes through, and the one place errors become HTTP statuses.

``GuardedRoute``: the API key (before the body is read), the request timeout, Ray failures mapped to retryable
503s, one log line per request with its id and sizes (never the content), and the request counted by route and
status (``sam2_requests_total``). ``ServiceError``s (``sam2_serve.common.errors``) carry their own status; anything
else is logged with the request id and answered 500 without internals (``install_error_handlers``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from sam2_serve.common.errors import Overloaded, ReplicaUnavailable, RequestTimeout, ServiceError
from sam2_serve.common.schemas import describe
from sam2_serve.deployments.ray_internals import request_id

logger = logging.getLogger("ray.serve")


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message, "request_id": request_id()}}


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def as_service_error(exc: BaseException, retry_after_s: float = 1.0) -> Optional[ServiceError]:
    """A Ray/Serve failure of a call to another deployment -> the retryable 503 the client gets (None: not one).

    Backpressure (a deployment's ``max_queued_requests`` reached) and a replica that died or became unreachable
    mid-request are both transient: nothing was stored, Serve sheds or replaces, and the same request can be sent
    again after ``Retry-After``. A ``RayTaskError`` wrapping one of these is an instance of it too.
    """
    from ray.exceptions import (NodeDiedError, ObjectLostError, OutOfMemoryError, RayActorError,
                                WorkerCrashedError)
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, BackPressureError):
        err = Overloaded("the service is at capacity (a model deployment's queue is full); retry after the "
                         "Retry-After delay, or send fewer requests at once")
        err.retry_after_s = exc.retry_after_s if exc.retry_after_s is not None else retry_after_s
        return err
    if isinstance(exc, (RayActorError, ReplicaUnavailableError, WorkerCrashedError, ObjectLostError, OutOfMemoryError,
                        NodeDiedError)):  # OutOfMemoryError: Ray's memory monitor killed the replica
        logger.warning("request %s: a replica it used was lost (%s)", request_id(), type(exc).__name__)
        err = ReplicaUnavailable("a replica serving this request stopped and is being replaced; nothing was kept: "
                                 "retry the same request after the Retry-After delay")
        err.retry_after_s = max(retry_after_s, ReplicaUnavailable.retry_after_s)
        return err
    if isinstance(exc, DeploymentUnavailableError):
        err = ReplicaUnavailable(f"a model deployment is unavailable ({exc.message}); see `serve status`")
        err.retry_after_s = max(retry_after_s, 10.0)
        return err
    if isinstance(exc, asyncio.TimeoutError):
        return RequestTimeout("the request took longer than the service's request_timeout_s and was cancelled; "
                              "ask for less work (fewer points, frames or crop layers) or raise the limit")
    return None


def stream_error_line(exc: BaseException) -> dict:
    """The last line of a stream that failed after it began: a mapped (maybe retryable) error, or an internal one
    (logged here with the request id)."""
    mapped = as_service_error(exc)
    if mapped is not None:
        retry = {} if mapped.retry_after_s is None else {"retry_after_s": mapped.retry_after_s}
        return {**error_body(mapped.code, mapped.message), **retry}
    logger.exception("stream %s failed", request_id())
    return error_body("internal_error", "the stream failed; quote the request_id when reporting it")


def install_error_handlers(app: FastAPI) -> None:
    async def service_error(_: Request, exc: ServiceError):
        return error_response(exc.status, exc.code, exc.message, exc.headers())

    async def validation_error(_: Request, exc: RequestValidationError):
        return error_response(400, "invalid_request", describe(exc.errors()))

    async def unexpected(_: Request, exc: Exception):
        mapped = as_service_error(exc)
        if mapped is not None:
            return error_response(mapped.status, mapped.code, mapped.message, mapped.headers())
        logger.exception("request %s failed with an unexpected error", request_id())
        return error_response(500, "internal_error", "internal error; quote the request_id when reporting it")

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


class GuardedRoute(APIRoute):
    """Every API route: API-key check (before the body is read), the request timeout, Ray failures mapped to
    retryable errors, one log line with the request id and sizes (never the content), and one count by route
    template, method and status (``app.state.request_metrics``, a ``RequestMetrics``).

    ``/healthz`` stays open (and unlogged: probes call it). Settings come from the ingress the app was built for
    (``app.state.ingress``).
    """

    OPEN_PATHS = frozenset({"/healthz"})

    def get_route_handler(self):
        handler = super().get_route_handler()
        is_open = self.path in self.OPEN_PATHS

        async def guarded(request: Request):
            ingress = request.app.state.ingress
            start, status, out_bytes = time.perf_counter(), 500, None
            try:
                if not is_open:
                    ingress.api_keys.check(request.headers.get("authorization"))
                try:
                    response = await asyncio.wait_for(handler(request), ingress.request_timeout_s)
                except Exception as exc:
                    mapped = as_service_error(exc, ingress.retry_after_s)
                    if mapped is None or mapped is exc:
                        raise
                    raise mapped from None
                status = response.status_code
                out_bytes = len(response.body) if hasattr(response, "body") else None  # None: streamed
                return response
            except ServiceError as exc:
                status = exc.status
                raise
            except RequestValidationError:  # answered 400 by install_error_handlers
                status = 400
                raise
            except asyncio.CancelledError:  # the client went away first (nginx's "client closed request")
                status = 499
                raise
            finally:
                request.app.state.request_metrics.count(self.path, request.method, status)
                if not is_open:
                    logger.info("request %s %s %s: status %s, body %s bytes in, %s bytes out, %.0f ms",
                                request_id(), request.method, self.path, status,
                                getattr(request.state, "body_bytes", request.headers.get("content-length", 0)),
                                out_bytes if out_bytes is not None else ("stream" if status < 400 else "-"),
                                1000 * (time.perf_counter() - start))

        return guarded
