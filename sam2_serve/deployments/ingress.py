"""Ingress: the HTTP routes and the Python handle API, composing encoder, cache, decoder and tracker.

It owns everything about the outside world: validating requests, decoding uploaded images and probing videos,
grouping prompts into objects, encoding masks as PNG/RLE. Model work happens in the other deployments, reached
through ``DeploymentHandle``s. The FastAPI app, body parsing and the mapping of errors to HTTP statuses are in
``sam2_serve.deployments.http``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from typing import Any, Optional

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from sam2_serve.common import schemas
from sam2_serve.common.auth import ApiKeys
from sam2_serve.common.config import Limits
from sam2_serve.common.errors import EmbeddingNotFound, InvalidRequest, InvalidVideo, LimitExceeded, ServiceError, SessionGone
from sam2_serve.common.images import as_rgb_array, b64decode, image_id as content_id
from sam2_serve.common.prompts import to_objects
from sam2_serve.common.responses import regions_from_predictions
from sam2_serve.common.wire import frame_json, predict_json, segment_json
from sam2_serve.common.types import EmbeddingRef, EncodeRequest, MaskPrediction, PredictResult
from sam2_serve.common.video_prompts import generate_prompts, regions_to_prompts
from sam2_serve.common.videos import b64decode_video, probe_video
from sam2_serve.common.types import TrackedFrame
from sam2_serve.deployments.http import Guard, app, as_service_error, body_doc, body_fields, dump, request_id, validate
from sam2_serve.deployments.web import add_web_routes
from sam2_serve.models import amg

logger = logging.getLogger("ray.serve")
# Embeddings an ingress replica keeps references to beyond the shared cache: at most this many (16 MB each for
# base-plus), held until a newer one pushes them out or the cache says they were evicted.
RECENT_EMBEDDINGS = 4
# Answers with at most this many masks are encoded on the event loop (see http_predict), larger ones in a thread.
INLINE_MASKS = 3


class SAM2Ingress:
    """HTTP routes and handle methods. Handle callers pass images as bytes, PIL images or RGB arrays."""

    def __init__(self, encoder: DeploymentHandle, decoder: DeploymentHandle, cache: DeploymentHandle,
                 limits: dict | None = None, tracker: DeploymentHandle | None = None, auth: dict | None = None,
                 request_timeout_s: float | None = None, retry_after_s: float = 1.0):
        self.encoder, self.decoder, self.cache = encoder, decoder, cache
        self.tracker = tracker
        self.limits = Limits.model_validate(limits or {})
        # Keys are read here, in the replica (its environment, its mounted files); a misconfiguration fails start-up.
        self.api_keys = ApiKeys.load(auth)
        self.guard = app.state.guard = Guard(self.api_keys, request_timeout_s, retry_after_s)
        logger.info("API-key authentication is %s", f"on ({len(self.api_keys)} key(s))" if self.api_keys.enabled
                    else "off (set SAM2_SERVE_API_KEY or auth.api_key_file to turn it on)")
        self._inflight: dict[str, asyncio.Future] = {}
        # The last few embeddings this replica used, so that a click by image_id can start decoding without first
        # waiting for the shared cache (~3 ms); the cache is still asked, in parallel, and stays the authority.
        self._recent: OrderedDict[str, EmbeddingRef] = OrderedDict()

    # ---- shared steps -------------------------------------------------------------------------------------

    async def _decode_image(self, image: Any):
        """Image in any accepted form -> (RGB uint8 (H, W, 3), image_id); decoding runs off the event loop."""
        rgb = await asyncio.to_thread(as_rgb_array, image, self.limits.max_image_bytes, self.limits.max_image_pixels)
        return rgb, await asyncio.to_thread(content_id, rgb)

    async def _cached(self, image_id: str) -> EmbeddingRef:
        entry = await self.cache.get.remote(image_id)
        if entry is None:
            self._recent.pop(image_id, None)
            raise EmbeddingNotFound(f"image_id {image_id!r} is unknown or was evicted from the cache; "
                                    "send the image again (image.base64)")
        self._remember(entry)
        return entry

    def _remember(self, entry: EmbeddingRef) -> None:
        self._recent[entry.image_id] = entry
        self._recent.move_to_end(entry.image_id)
        while len(self._recent) > RECENT_EMBEDDINGS:
            self._recent.popitem(last=False)

    async def _decode_cached(self, entry: EmbeddingRef, objects, multimask_output: bool, with_logits: bool):
        """Decode on a recently used embedding while the shared cache confirms it still holds it (and marks it
        recently used); if it was evicted meanwhile, the answer is the usual 404, as without this shortcut."""
        decoding = self.decoder.decode.remote(entry, objects, multimask_output, with_logits)
        try:
            await self._cached(entry.image_id)
        except EmbeddingNotFound:
            decoding.cancel()
            raise
        return await decoding

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
        self._remember(entry)
        return entry

    async def _predict(self, image: Any, options: schemas.PredictRequest | Any, image_id: Optional[str],
                       with_logits: bool) -> tuple[str, int, int, list[MaskPrediction]]:
        """(image_id, width, height, the decoder's predictions with packed masks)."""
        confirm = False  # decode on an embedding of _recent while the shared cache confirms it
        if image is None:
            entry = self._recent.get(image_id)
            confirm = entry is not None
            entry = entry or await self._cached(image_id)
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
            if confirm:
                predictions = await self._decode_cached(entry, objects, options.multimask_output, with_logits)
            else:
                predictions = await self.decoder.decode.remote(entry, objects, options.multimask_output, with_logits)
        except EmbeddingNotFound:
            self._recent.pop(image_id, None)
            if rgb is None:
                raise
            await self.cache.discard.remote(image_id)  # its encoder replica died: encode again, once
            entry = await self._embed(rgb, image_id)
            predictions = await self.decoder.decode.remote(entry, objects, options.multimask_output, with_logits)
        return image_id, w, h, predictions

    async def _segment_anything(self, image: Any, options: schemas.SegmentAnythingOptions,
                                image_id: Optional[str]) -> amg.AmgResult:
        """Automatic masks: the image (and each crop) encoded once through the encoder and the cache, grid batches
        fanned out to decoder replicas all at once, survivors merged here (``sam2_serve.models.amg``)."""
        params = amg.AmgParams(**options.model_dump(include=set(amg.AmgParams.__dataclass_fields__)))
        if params.total_points() > self.limits.max_segment_points:
            raise LimitExceeded(
                f"points_per_side={params.points_per_side} with crop_n_layers={params.crop_n_layers} and "
                f"crop_n_points_downscale_factor={params.crop_n_points_downscale_factor} asks for "
                f"{params.total_points()} grid points over all crops; the limit is {self.limits.max_segment_points}: "
                "lower points_per_side or crop_n_layers, or raise crop_n_points_downscale_factor")
        if image is None:
            if params.crop_n_layers > 0:
                raise InvalidRequest("crop_n_layers >= 1 needs the image's pixels to encode its crops: send the image "
                                     "(image.base64 or a file), not only image.image_id")
            entry, rgb = await self._cached(image_id), None
        else:
            (rgb, image_id), entry = await self._decode_image(image), None
        h, w = entry.orig_hw if entry is not None else rgb.shape[:2]
        crops = amg.plan_crops((h, w), params)

        # Crop pixels and ids are ready before any crop is sent, so the crops reach the encoder together and share
        # its batched forward passes (and its cache: a crop seen before is not encoded again).
        crop_images = [(rgb, image_id)] if rgb is not None else [None]
        if len(crops) > 1:
            crop_images += await asyncio.to_thread(_crop_images, rgb, crops[1:])

        async def crop_embedding(crop: amg.CropPlan, again: bool = False) -> EmbeddingRef:
            if crop.index == 0 and entry is not None and not again:
                return entry
            crop_rgb, crop_id = crop_images[crop.index]
            if again:
                await self.cache.discard.remote(crop_id)
            return await self._embed(crop_rgb, crop_id)

        async def decode_crop(crop: amg.CropPlan) -> list[amg.BatchMasks]:
            emb = await crop_embedding(crop)
            batches = crop.batches(params.points_per_batch)
            try:
                return await asyncio.gather(*[self.decoder.segment_batch.remote(emb, pts, crop.box, (h, w), params)
                                              for pts in batches])
            except EmbeddingNotFound:
                if rgb is None:
                    raise
                emb = await crop_embedding(crop, again=True)  # its encoder replica died: encode again, once
                return await asyncio.gather(*[self.decoder.segment_batch.remote(emb, pts, crop.box, (h, w), params)
                                              for pts in batches])

        per_crop = await asyncio.gather(*[decode_crop(c) for c in crops])
        masks = await asyncio.to_thread(amg.merge, crops, per_crop, params)
        return amg.AmgResult(image_id, int(w), int(h), masks, amg.batch_stats(per_crop))

    async def _parse(self, request: Request, model: type):
        """JSON body or multipart form -> (validated request model, uploaded image bytes or None)."""
        fields, upload, multipart = await body_fields(request, "image", 16, self.limits.max_body_bytes)
        if fields is None:
            raise InvalidRequest("the request body is empty; send a JSON object")
        if multipart:
            if upload is None and "image" not in fields:
                raise InvalidRequest("multipart requests need an 'image' file field (curl -F image=@photo.jpg)")
            if upload is not None:
                fields["image"] = {"image_id": "upload"}  # placeholder satisfying the schema; the file wins
        return validate(model, fields), upload

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

    @app.post("/v1/predict", response_model=schemas.PredictResponse, openapi_extra=body_doc(schemas.PredictRequest))
    async def http_predict(self, request: Request):
        req, upload = await self._parse(request, schemas.PredictRequest)
        image, image_id = self._image_arg(req, upload)
        result = await self._predict(image, req, image_id, with_logits=False)
        if sum(len(p.masks) for p in result[3]) <= INLINE_MASKS:
            # A click's mask or three encode in ~1-3 ms: cheaper here than a hop to a worker thread and back,
            # which measured ~5 ms more (the worker waits for the GIL behind the event loop).
            return JSONResponse(predict_json(*result, req.mask_format.value))
        return JSONResponse(await asyncio.to_thread(predict_json, *result, req.mask_format.value))

    @app.post("/v1/segment_anything", response_model=schemas.SegmentAnythingResponse,
              openapi_extra=body_doc(schemas.SegmentAnythingRequest))
    async def http_segment_anything(self, request: Request):
        req, upload = await self._parse(request, schemas.SegmentAnythingRequest)
        image, image_id = self._image_arg(req, upload)
        result = await self._segment_anything(image, req, image_id)
        return JSONResponse(await asyncio.to_thread(segment_json, result, req.mask_format.value))

    @app.post("/v1/embed", response_model=schemas.EmbedResponse, openapi_extra=body_doc(schemas.EmbedRequest))
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
        ``regions`` / ``dict_inputs``: as in the HTTP API (dicts or ``sam2_serve.common.schemas`` models).
        """
        if (image is None) == (image_id is None):
            raise InvalidRequest("give exactly one of image or image_id")
        options = validate(schemas.PredictRequest, {
            "image": {"image_id": image_id or "inline"},
            "regions": dump(regions), "dict_inputs": dump(dict_inputs),
            "multimask_output": multimask_output, "denormalize_coord": denormalize_coord})
        image_id, w, h, predictions = await self._predict(image, options, image_id, with_logits=True)
        return PredictResult(image_id, w, h, await asyncio.to_thread(regions_from_predictions, predictions))

    async def segment_anything(self, image: Any = None, image_id: Optional[str] = None,
                               **params: Any) -> amg.AmgResult:
        """Every object in the image (``SAM2AutomaticMaskGenerator``), as ``sam2_serve.models.amg.AmgResult``.

        ``params``: the fields of ``sam2_serve.common.schemas.SegmentAnythingOptions`` (same names, ranges and defaults as over
        HTTP; ``mask_format`` is ignored here). Masks come back sorted by predicted IoU, highest first, as
        ``AutoMask`` records holding COCO RLE (``.mask`` decodes one to bool (H, W)).
        """
        if (image is None) == (image_id is None):
            raise InvalidRequest("give exactly one of image or image_id")
        options = validate(schemas.SegmentAnythingOptions, params)
        return await self._segment_anything(image, options, image_id)

    async def embed(self, image: Any = None, image_id: Optional[str] = None) -> dict:
        """Encode only; returns ``{"image_id", "width", "height"}`` for later ``image_id`` calls."""
        if image is None:
            entry = await self._cached(image_id)
        else:
            rgb, image_id = await self._decode_image(image)
            entry = await self._embed(rgb, image_id)
        h, w = entry.orig_hw
        return {"image_id": image_id, "width": w, "height": h}

    # ---- video: generate and sessions (VideoTracker) ------------------------------------------------------------

    def _tracker(self, session_id: Optional[str] = None) -> DeploymentHandle:
        if self.tracker is None:
            raise ServiceError("video tracking is not deployed in this application")
        return self.tracker.options(session_id=session_id) if session_id else self.tracker

    async def _session_call(self, session_id: str, method: str, *args):
        """A unary session call; a replica that died under it means the session is gone (410), not a 500."""
        try:
            return await getattr(self._tracker(session_id), method).remote(session_id, *args)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            raise SessionGone(f"session {session_id!r} was lost with the tracker replica that held it; "
                              "create a new session") from None

    async def _probe(self, video: Any):
        if isinstance(video, (bytearray, memoryview)):
            video = bytes(video)
        if not isinstance(video, bytes):
            raise InvalidVideo(f"video must be the encoded file's bytes, not {type(video).__name__}")
        lim = self.limits
        return await asyncio.to_thread(probe_video, video, lim.max_video_bytes, lim.max_video_frames,
                                       lim.max_video_seconds, lim.max_frame_pixels), video

    async def _parse_video(self, request: Request, model: type, need_video: bool = True):
        """JSON (``video.base64``) or multipart (a ``video`` file plus JSON-valued fields) -> (request, bytes)."""
        fields, upload, multipart = await body_fields(request, "video", 32, self.limits.max_body_bytes)
        if fields is None:
            if not need_video:
                return validate(model, {}), None
            raise InvalidRequest("the request body is empty; send a JSON object")
        if multipart:
            if upload is None and need_video:
                raise InvalidRequest("multipart requests need a 'video' file field (curl -F video=@clip.mp4)")
            if upload is not None:
                fields["video"] = {"base64": ""}  # placeholder satisfying the schema; the file wins
            return validate(model, fields), upload
        req = validate(model, fields)
        video = getattr(req, "video", None)
        return req, (await asyncio.to_thread(b64decode_video, video.base64) if video is not None else None)

    async def _generate(self, video: Any, req: schemas.GenerateRequest, with_logits: bool = False):
        """Validate everything a client can get wrong, then the tracker's frame stream (not yet started)."""
        info, video = await self._probe(video)
        lim = self.limits
        prompts = generate_prompts(req.frames, req.list_dict_inputs, info, req.start_frame, req.max_frames,
                                   req.denormalize_coord, lim.max_video_objects, lim.max_points,
                                   lim.max_prompted_frames)
        return self._tracker().options(stream=True).generate.remote(
            video, info, prompts, req.start_frame, req.max_frames, with_logits)

    @staticmethod
    async def _ndjson(first: TrackedFrame, frames, mask_format: str):
        """NDJSON lines; an error after the stream began ends it with an ``{"error": ...}`` line."""
        try:
            yield json.dumps(await asyncio.to_thread(frame_json, first, mask_format)) + "\n"
            async for frame in frames:
                yield json.dumps(await asyncio.to_thread(frame_json, frame, mask_format)) + "\n"
        except Exception as exc:
            mapped = as_service_error(exc)  # a ServiceError, or a lost replica: a retryable error line
            if mapped is not None:
                retry = {} if mapped.retry_after_s is None else {"retry_after_s": mapped.retry_after_s}
                yield json.dumps({**mapped.to_dict(), **retry}) + "\n"
                return
            logger.exception("stream %s failed", request_id())
            yield json.dumps({"error": {"code": "internal_error", "message": "the stream failed; quote the "
                                        "request_id when reporting it", "request_id": request_id()}}) + "\n"
        finally:
            frames.cancel()  # client gone or stream over: stop the tracker's work

    async def _stream_response(self, frames, mask_format: str):
        try:
            first = await frames.__anext__()  # errors before the first frame keep their HTTP status
        except StopAsyncIteration:
            return StreamingResponse(iter(()), media_type="application/x-ndjson")
        except BaseException:
            frames.cancel()
            raise
        return StreamingResponse(self._ndjson(first, frames, mask_format), media_type="application/x-ndjson")

    @app.post("/v1/generate", response_class=StreamingResponse, openapi_extra=body_doc(schemas.GenerateRequest),
              responses={200: {"content": {"application/x-ndjson": {"schema": schemas.FrameOut.model_json_schema()}},
                               "description": "One JSON object per tracked frame, in order."}})
    async def http_generate(self, request: Request):
        req, video = await self._parse_video(request, schemas.GenerateRequest)
        return await self._stream_response(await self._generate(video, req), req.mask_format.value)

    @app.post("/v1/sessions", response_model=schemas.SessionOut, openapi_extra=body_doc(schemas.SessionCreateRequest))
    async def http_create_session(self, request: Request):
        req, video = await self._parse_video(request, schemas.SessionCreateRequest)
        return await self.create_session(video, req.ttl_s)

    @app.get("/v1/sessions/{session_id}")
    async def http_session(self, session_id: str):
        return await self._session_call(session_id, "session_info")

    @app.post("/v1/sessions/{session_id}/prompts", response_model=schemas.FrameOut,
              openapi_extra=body_doc(schemas.SessionPromptRequest))
    async def http_session_prompts(self, session_id: str, request: Request):
        req, _ = await self._parse_video(request, schemas.SessionPromptRequest)
        frame = await self._session_prompts(session_id, req)
        return JSONResponse(await asyncio.to_thread(frame_json, frame, req.mask_format.value))

    @app.post("/v1/sessions/{session_id}/propagate", response_class=StreamingResponse,
              openapi_extra=body_doc(schemas.PropagateRequest))
    async def http_session_propagate(self, session_id: str, request: Request):
        req, _ = await self._parse_video(request, schemas.PropagateRequest, need_video=False)
        frames = self._tracker(session_id).options(stream=True).propagate.remote(
            session_id, req.start_frame, req.max_frames, req.reverse)
        return await self._stream_response(frames, req.mask_format.value)

    @app.delete("/v1/sessions/{session_id}/objects/{track_id}")
    async def http_remove_object(self, session_id: str, track_id: str):
        return await self.remove_object(session_id, track_id)

    @app.delete("/v1/sessions/{session_id}")
    async def http_delete_session(self, session_id: str):
        return await self.delete_session(session_id)

    async def _session_prompts(self, session_id: str, req: schemas.SessionPromptRequest) -> TrackedFrame:
        meta = await self._session_call(session_id, "session_info")
        info = _SessionFrameInfo(meta["width"], meta["height"], meta["num_frames"])
        prompts = regions_to_prompts(req.index, req.regions, info, req.denormalize_coord, req.clear_old_points,
                                     set(meta["track_ids"]), "regions")
        return await self._session_call(session_id, "add_prompts", prompts, self.limits.max_video_objects)

    # Python handle API for video: frames come back as sam2_serve.common.videos.TrackedFrame with boolean numpy masks.

    async def generate(self, video: bytes, frames: Any = None, list_dict_inputs: Any = None, start_frame: int = 0,
                       max_frames: Optional[int] = None, denormalize_coord: bool = True, with_logits: bool = False):
        """Track prompted objects; use as ``handle.options(stream=True).generate.remote(video_bytes, ...)``.

        ``frames`` / ``list_dict_inputs``: as over HTTP (dicts or ``sam2_serve.common.schemas`` models). Yields one
        ``TrackedFrame`` per frame (``.objects[i].mask``: bool (H, W)); ``with_logits`` adds low-res logits.
        """
        req = validate(schemas.GenerateRequest, {
            "video": {"base64": ""}, "frames": dump(frames), "list_dict_inputs": dump(list_dict_inputs),
            "start_frame": start_frame, "max_frames": max_frames, "denormalize_coord": denormalize_coord})
        stream = await self._generate(video, req, with_logits)
        try:
            async for frame in stream:
                yield frame
        finally:
            stream.cancel()

    async def create_session(self, video: bytes, ttl_s: Optional[float] = None) -> dict:
        """Open an interactive session on a video; returns ``{"session_id", "width", "height", ...}``."""
        info, video = await self._probe(video)
        ref = await asyncio.to_thread(ray.put, video)  # one copy in the object store, even if a retry is needed
        for attempt in range(3):
            try:
                return await self._tracker().create_session.remote(ref, info, ttl_s)
            except LimitExceeded:
                if attempt == 2:  # replicas are picked at random: a full one may have a free neighbour
                    raise

    async def add_prompts(self, session_id: str, index: int, regions: Any, clear_old_points: bool = True,
                          denormalize_coord: bool = True) -> TrackedFrame:
        """Prompts on frame ``index`` (regions as over HTTP); that frame's masks for every object."""
        req = validate(schemas.SessionPromptRequest, {
            "index": index, "regions": dump(regions), "clear_old_points": clear_old_points,
            "denormalize_coord": denormalize_coord})
        return await self._session_prompts(session_id, req)

    async def propagate(self, session_id: str, start_frame: Optional[int] = None, max_frames: Optional[int] = None,
                        reverse: bool = False):
        """Stream a session's tracked frames (``handle.options(stream=True).propagate.remote(...)``)."""
        stream = self._tracker(session_id).options(stream=True).propagate.remote(
            session_id, start_frame, max_frames, reverse)
        try:
            async for frame in stream:
                yield frame
        finally:
            stream.cancel()

    async def remove_object(self, session_id: str, track_id: str) -> dict:
        return await self._session_call(session_id, "remove_object", track_id)

    async def delete_session(self, session_id: str) -> dict:
        return await self._session_call(session_id, "delete_session")


class _SessionFrameInfo:
    """What prompt validation needs to know of a session's video."""

    def __init__(self, width: int, height: int, num_frames: int):
        self.width, self.height, self.num_frames = width, height, num_frames


def _crop_images(rgb: np.ndarray, crops: list) -> list[tuple[np.ndarray, str]]:
    """(RGB pixels, content id) of each crop box (x0, y0, x1, y1) of ``rgb``."""
    out = []
    for crop in crops:
        x0, y0, x1, y1 = crop.box
        pixels = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        out.append((pixels, content_id(pixels)))
    return out


add_web_routes(app)  # the browser page at / (sam2_serve/deployments/web.py), public; the /v1 API it calls keeps auth

# Serve's class-based-view transform rewrites ``app``'s routes; it must run wherever this module is imported
# (the replica re-imports it), so it is applied here rather than in ``sam2_serve.deployments.app``.
HTTPIngress = serve.ingress(app)(SAM2Ingress)
