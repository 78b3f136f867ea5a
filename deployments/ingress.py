"""Ingress: the HTTP API (FastAPI) and the Python handle API, composing encoder, cache and decoder.

It owns everything about the outside world: reading and validating requests, decoding uploaded images,
grouping prompts into objects, encoding masks as PNG/RLE, and mapping domain errors to HTTP statuses (once,
here). Model work happens in the other deployments, reached through ``DeploymentHandle``s.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from common import schemas
from common.config import Limits
from common.errors import EmbeddingNotFound, InvalidRequest, PayloadTooLarge, ServiceError, UnsupportedMediaType
from common.images import as_rgb_array, b64decode, image_id as content_id
from common.prompts import to_objects
from common.responses import predict_json, regions_from_predictions
from common.types import EmbeddingRef, PredictResult
from deployments.encoder import EncodeRequest

logger = logging.getLogger("ray.serve")

app = FastAPI(
    title="sam2-serve",
    description="SAM 2.1 served: prompted masks (predict), automatic masks (segment_anything), video tracking.",
    version="0.1.0",
    responses={400: {"model": schemas.ErrorResponse}, 404: {"model": schemas.ErrorResponse},
               413: {"model": schemas.ErrorResponse}, 422: {"model": schemas.ErrorResponse}},
)


def _request_id() -> Optional[str]:
    try:
        return serve.context._get_serve_request_context().request_id or None
    except Exception:
        return None


def _error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "request_id": _request_id()}}, status_code=status)


@app.exception_handler(ServiceError)
async def _service_error(_: Request, exc: ServiceError):
    return _error_response(exc.status, exc.code, exc.message)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError):
    return _error_response(400, "invalid_request", _describe(exc.errors()))


@app.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception):
    logger.exception("request %s failed with an unexpected error", _request_id())
    return _error_response(500, "internal_error", "internal error; quote the request_id when reporting it")


def _describe(errors: list[dict]) -> str:
    """Pydantic errors -> one line naming each bad field, e.g. ``regions.0.point: List should have ...``."""
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",))
        msg = e.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _validate(model: type, data: Any):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(_describe(exc.errors())) from None


def _body_doc(model: type) -> dict:
    """OpenAPI for a route that reads JSON or multipart itself (``curl -F image=@x.jpg`` works too)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": ref},
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
            "image": {"type": "string", "format": "binary"},
            "options": {"type": "string", "description": f"the other fields of {model.__name__} as a JSON object; "
                                                          "or send them as separate form fields"}}}},
    }}}


_BODY_MODELS: list[type] = [schemas.PredictRequest, schemas.EmbedRequest]


def _openapi() -> dict:
    """FastAPI's schema plus the request bodies that routes parse themselves (see ``_body_doc``)."""
    if app.openapi_schema is None:
        schema = _fastapi_openapi()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in _BODY_MODELS:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(js.pop("$defs", {}))
            components[model.__name__] = js
        app.openapi_schema = schema
    return app.openapi_schema


_fastapi_openapi = app.openapi
app.openapi = _openapi


class SAM2Ingress:
    """HTTP routes and handle methods. Handle callers pass images as bytes, PIL images or RGB arrays."""

    def __init__(self, encoder: DeploymentHandle, decoder: DeploymentHandle, cache: DeploymentHandle,
                 limits: dict | None = None):
        self.encoder, self.decoder, self.cache = encoder, decoder, cache
        self.limits = Limits.model_validate(limits or {})
        self._inflight: dict[str, asyncio.Future] = {}

    # ---- shared steps -------------------------------------------------------------------------------------

    async def _decode_image(self, image: Any):
        """Image in any accepted form -> (RGB uint8 (H, W, 3), image_id); decoding runs off the event loop."""
        rgb = await asyncio.to_thread(as_rgb_array, image, self.limits.max_image_bytes, self.limits.max_image_pixels)
        return rgb, await asyncio.to_thread(content_id, rgb)

    async def _cached(self, image_id: str) -> EmbeddingRef:
        entry = await self.cache.get.remote(image_id)
        if entry is None:
            raise EmbeddingNotFound(f"image_id {image_id!r} is unknown or was evicted from the cache; "
                                    "send the image again (image.base64)")
        return entry

    async def _embed(self, rgb, image_id: str) -> EmbeddingRef:
        """The cached embedding of this image, encoding it once even when requests for it arrive together."""
        entry = await self.cache.get.remote(image_id)
        if entry is not None:
            return entry
        pending = self._inflight.get(image_id)
        if pending is None:
            pending = self._inflight[image_id] = asyncio.ensure_future(self._encode(rgb, image_id))
            pending.add_done_callback(lambda _: self._inflight.pop(image_id, None))
        return await asyncio.shield(pending)

    async def _encode(self, rgb, image_id: str) -> EmbeddingRef:
        entry = await self.encoder.encode.remote(EncodeRequest(image_id, rgb))
        await self.cache.put.remote(entry)
        return entry

    async def _predict(self, image: Any, options: schemas.PredictRequest | Any, image_id: Optional[str]) -> PredictResult:
        if image is None:
            entry = await self._cached(image_id)
            rgb = None
        else:
            rgb, image_id = await self._decode_image(image)
            entry = None
        h, w = entry.orig_hw if entry is not None else rgb.shape[:2]
        # Prompts are checked before any model work, so a bad click never costs an encoder pass.
        objects = to_objects(options.regions, options.dict_inputs, w, h, options.denormalize_coord,
                             self.limits.max_points, self.limits.max_objects)
        if entry is None:
            entry = await self._embed(rgb, image_id)
        try:
            predictions = await self.decoder.decode.remote(entry, objects, options.multimask_output)
        except EmbeddingNotFound:
            if rgb is None:
                raise
            await self.cache.discard.remote(image_id)  # its encoder replica died: encode again, once
            entry = await self._embed(rgb, image_id)
            predictions = await self.decoder.decode.remote(entry, objects, options.multimask_output)
        return PredictResult(image_id, w, h, regions_from_predictions(predictions))

    async def _read_body(self, request: Request) -> bytes:
        limit = self.limits.max_body_bytes
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
        return body

    async def _parse(self, request: Request, model: type):
        """JSON body or multipart form -> (validated request model, uploaded image bytes or None)."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await self._read_body(request)
        if ctype == "multipart/form-data":
            form = await request.form(max_files=1, max_fields=16)
            fields: dict[str, Any] = {}
            upload = None
            for key, value in form.multi_items():
                if key == "image" and hasattr(value, "read"):
                    upload = await value.read()
                elif key == "options":
                    fields.update(_json_field(key, value, dict))
                elif key in ("image_id",):
                    fields["image"] = {"image_id": value}
                else:
                    fields[key] = _json_field(key, value) if key not in ("mask_format",) else value
            if upload is None and "image" not in fields:
                raise InvalidRequest("multipart requests need an 'image' file field (curl -F image=@photo.jpg)")
            if upload is not None:
                fields["image"] = {"image_id": "upload"}  # placeholder satisfying the schema; the file wins
            return _validate(model, fields), upload
        if ctype not in ("application/json", ""):
            raise UnsupportedMediaType(f"content-type {ctype!r} is not accepted; send application/json "
                                       "or multipart/form-data")
        if not body:
            raise InvalidRequest("the request body is empty; send a JSON object")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"the body is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise InvalidRequest(f"the body must be a JSON object with the fields of {model.__name__}")
        return _validate(model, data), None

    @staticmethod
    def _image_arg(req, upload: Optional[bytes]):
        """(image bytes or None, image_id or None) from a parsed request."""
        if upload is not None:
            return upload, None
        if req.image.base64 is not None:
            return b64decode(req.image.base64), None
        return None, req.image.image_id

    # ---- HTTP routes --------------------------------------------------------------------------------------

    @app.get("/healthz", include_in_schema=False)
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/v1/models", response_model=list[schemas.ModelInfo])
    async def http_models(self):
        return [await self.encoder.info.remote()]

    @app.post("/v1/predict", response_model=schemas.PredictResponse, openapi_extra=_body_doc(schemas.PredictRequest))
    async def http_predict(self, request: Request):
        req, upload = await self._parse(request, schemas.PredictRequest)
        image, image_id = self._image_arg(req, upload)
        result = await self._predict(image, req, image_id)
        return JSONResponse(await asyncio.to_thread(predict_json, result, req.mask_format.value))

    @app.post("/v1/embed", response_model=schemas.EmbedResponse, openapi_extra=_body_doc(schemas.EmbedRequest))
    async def http_embed(self, request: Request):
        req, upload = await self._parse(request, schemas.EmbedRequest)
        image, image_id = self._image_arg(req, upload)
        return await self.embed(image=image, image_id=image_id)

    # ---- Python handle API (serve.get_app_handle("sam2").predict.remote(...)) -------------------------------

    async def predict(self, image: Any = None, regions: Any = None, dict_inputs: Any = None,
                      multimask_output: bool = False, denormalize_coord: bool = True,
                      image_id: Optional[str] = None) -> PredictResult:
        """Masks from prompts, as ``PredictResult`` with boolean numpy masks (and low-res logits).

        ``image``: encoded bytes, a PIL image or an RGB uint8 array (H, W, 3); or ``image_id`` of a cached image.
        ``regions`` / ``dict_inputs``: as in the HTTP API (dicts or ``common.schemas`` models).
        """
        if (image is None) == (image_id is None):
            raise InvalidRequest("give exactly one of image or image_id")
        options = _validate(schemas.PredictRequest, {
            "image": {"image_id": image_id or "inline"},
            "regions": _dump(regions), "dict_inputs": _dump(dict_inputs),
            "multimask_output": multimask_output, "denormalize_coord": denormalize_coord})
        return await self._predict(image, options, image_id)

    async def embed(self, image: Any = None, image_id: Optional[str] = None) -> dict:
        """Encode only; returns ``{"image_id", "width", "height"}`` for later ``image_id`` calls."""
        if image is None:
            entry = await self._cached(image_id)
        else:
            rgb, image_id = await self._decode_image(image)
            entry = await self._embed(rgb, image_id)
        h, w = entry.orig_hw
        return {"image_id": image_id, "width": w, "height": h}


def _dump(value):
    if value is None:
        return None
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value.model_dump() if hasattr(value, "model_dump") else value


def _json_field(key: str, value: Any, expect: type | None = None):
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


# Serve's class-based-view transform rewrites ``app``'s routes; it must run wherever this module is imported
# (the replica re-imports it), so it is applied here rather than in ``deployments.app``.
HTTPIngress = serve.ingress(app)(SAM2Ingress)
