"""HTTP plumbing of the ingress: the FastAPI app, request parsing, and the one place errors become HTTP statuses.

Every API route goes through ``GuardedRoute`` (API key, request timeout, Ray failures mapped to retryable 503s, one
log line per request). ``ServiceError``s (``sam2_serve.common.errors``) carry their own status; anything else is logged with
the request id and answered 500 without internals. The routes themselves live in ``sam2_serve.deployments.ingress``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from ray import serve

from sam2_serve.common import schemas
from sam2_serve.common.auth import ApiKeys
from sam2_serve.common.errors import (InvalidRequest, Overloaded, PayloadTooLarge, ReplicaUnavailable, RequestTimeout,
                           ServiceError, UnsupportedMediaType)

logger = logging.getLogger("ray.serve")

app = FastAPI(
    title="sam2-serve",
    description="SAM 2.1 served: prompted masks (predict), automatic masks (segment_anything), video tracking.",
    version="0.1.0",
    responses={400: {"model": schemas.ErrorResponse}, 404: {"model": schemas.ErrorResponse},
               413: {"model": schemas.ErrorResponse}, 422: {"model": schemas.ErrorResponse}},
)


def request_id() -> Optional[str]:
    try:
        return serve.context._get_serve_request_context().request_id or None
    except Exception:
        return None


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "request_id": request_id()}}, status_code=status,
                        headers=headers)


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


@app.exception_handler(ServiceError)
async def _service_error(_: Request, exc: ServiceError):
    return error_response(exc.status, exc.code, exc.message, exc.headers())


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError):
    return error_response(400, "invalid_request", describe(exc.errors()))


@app.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception):
    mapped = as_service_error(exc)
    if mapped is not None:
        return error_response(mapped.status, mapped.code, mapped.message, mapped.headers())
    logger.exception("request %s failed with an unexpected error", request_id())
    return error_response(500, "internal_error", "internal error; quote the request_id when reporting it")


class GuardedRoute(APIRoute):
    """Every API route: API-key check (before the body is read), the request timeout, Ray failures mapped to
    retryable errors, and one log line with the request id and sizes (never the content).

    ``/healthz`` stays open. Settings come from the replica's ingress instance (``Guard.of``).
    """

    OPEN_PATHS = frozenset({"/healthz"})

    def get_route_handler(self):
        handler = super().get_route_handler()
        is_open = self.path in self.OPEN_PATHS

        async def guarded(request: Request):
            guard = Guard.of(request)
            start, status, out_bytes = time.perf_counter(), 500, None
            try:
                if guard is not None and not is_open:
                    guard.api_keys.check(request.headers.get("authorization"))
                timeout = guard.request_timeout_s if guard is not None else None
                try:
                    response = await asyncio.wait_for(handler(request), timeout)
                except Exception as exc:
                    mapped = as_service_error(exc, guard.retry_after_s if guard is not None else 1.0)
                    if mapped is None or mapped is exc:
                        raise
                    raise mapped from None
                status = response.status_code
                out_bytes = len(response.body) if hasattr(response, "body") else None  # None: streamed
                return response
            except ServiceError as exc:
                status = exc.status
                raise
            finally:
                if not is_open:
                    logger.info("request %s %s %s: status %s, body %s bytes in, %s bytes out, %.0f ms",
                                request_id(), request.method, self.path, status,
                                getattr(request.state, "body_bytes", request.headers.get("content-length", 0)),
                                out_bytes if out_bytes is not None else ("stream" if status < 400 else "-"),
                                1000 * (time.perf_counter() - start))

        return guarded


class Guard:
    """Per-replica request settings read by ``GuardedRoute``."""

    def __init__(self, api_keys: ApiKeys, request_timeout_s: Optional[float], retry_after_s: float):
        self.api_keys, self.request_timeout_s, self.retry_after_s = api_keys, request_timeout_s, retry_after_s

    @staticmethod
    def of(request: Request) -> Optional["Guard"]:
        """The serving ingress's settings. In a replica the FastAPI app is a copy of this module's ``app`` (Serve
        ships it pickled), so they are read from the replica's instance; ``app.state`` serves in-process use."""
        try:
            return serve.get_replica_context().servable_object.guard
        except Exception:
            return getattr(request.app.state, "guard", None)


app.router.route_class = GuardedRoute


def describe(errors: list[dict]) -> str:
    """Pydantic errors -> one line naming each bad field, e.g. ``regions.0.point: List should have ...``."""
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",))
        msg = e.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def validate(model: type, data: Any):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(describe(exc.errors())) from None


def body_doc(model: type) -> dict:
    """OpenAPI for a route that reads JSON or multipart itself (``curl -F image=@x.jpg`` works too)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": ref},
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary"},
            "options": {"type": "string", "description": f"the other fields of {model.__name__} as a JSON object; "
                                                          "or send them as separate form fields"}}}},
    }}}


BODY_MODELS: list[type] = [schemas.PredictRequest, schemas.EmbedRequest, schemas.SegmentAnythingRequest,
                            schemas.GenerateRequest, schemas.SessionCreateRequest, schemas.SessionPromptRequest,
                            schemas.PropagateRequest]


def _openapi() -> dict:
    """FastAPI's schema plus the request bodies that routes parse themselves (see ``_body_doc``)."""
    if app.openapi_schema is None:
        schema = _fastapi_openapi()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in BODY_MODELS:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(js.pop("$defs", {}))
            components[model.__name__] = js
        app.openapi_schema = schema
    return app.openapi_schema


_fastapi_openapi = app.openapi
app.openapi = _openapi


# ---- request bodies ------------------------------------------------------------------------------------------

async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is over ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is {declared} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # lets request.form() parse what was already read
    request.state.body_bytes = size
    return body


async def body_fields(request: Request, file_field: str, max_fields: int, max_body_bytes: int):
    """A JSON object or a multipart form -> (fields or None for an empty body, uploaded file bytes, multipart?).

    Multipart text fields are JSON-decoded where they parse (``regions``, booleans); ``options`` may carry the
    other fields as one JSON object; the file comes from the ``file_field`` part.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, max_body_bytes)
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=max_fields)
        fields: dict[str, Any] = {}
        upload = None
        for key, value in form.multi_items():
            if key == file_field and hasattr(value, "read"):
                upload = await value.read()
            elif key == "options":
                fields.update(json_field(key, value, dict))
            elif key == "image_id" and file_field == "image":
                fields["image"] = {"image_id": value}
            else:
                fields[key] = value if key == "mask_format" else json_field(key, value)
        return fields, upload, True
    if ctype not in ("application/json", ""):
        raise UnsupportedMediaType(f"content-type {ctype!r} is not accepted; send application/json "
                                   "or multipart/form-data")
    if not body:
        return None, None, False
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object with the fields of the request")
    return data, None, False


def dump(value):
    if value is None:
        return None
    if isinstance(value, list):
        return [dump(v) for v in value]
    return value.model_dump() if hasattr(value, "model_dump") else value


def json_field(key: str, value: Any, expect: type | None = None):
    """A multipart text field: JSON when it parses (``regions``, booleans), else the string itself."""
    if hasattr(value, "read"):
        raise InvalidRequest(f"form field {key!r} must be text, not a file")
    try:
        parsed = json.loads(value)
    except ValueError:
        if expect is not None:
            raise InvalidRequest(f"form field {key!r} must be a JSON object") from None
        return value
    if expect is not None and not isinstance(parsed, expect):
        raise InvalidRequest(f"form field {key!r} must be a JSON object")
    return parsed
