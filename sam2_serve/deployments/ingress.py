"""SAM2Ingress: the Python handle API and (through ``sam2_serve.http``) the HTTP routes, over the other deployments.

The ingress owns everything about the outside world: validating requests, decoding uploads, grouping prompts into
objects, encoding answers. The work per operation is in ``sam2_serve.services``; model work happens in the
encoder, decoder and tracker deployments, reached through ``DeploymentHandle``s. ``deployments.app`` wraps this
class with ``serve.ingress()``, which builds the FastAPI app per replica from ``__serve_build_asgi_app__``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional

from ray.serve.handle import DeploymentHandle

from sam2_serve.common.auth import ApiKeys
from sam2_serve.common.errors import InvalidRequest
from sam2_serve.common.limits import Limits
from sam2_serve.common.schemas import (GenerateRequest, PredictRequest, SegmentAnythingOptions, SessionPromptRequest,
                                       dump, parse)
from sam2_serve.common.types import AmgResult, PredictResult, TrackedFrame
from sam2_serve.services.embeddings import Embeddings
from sam2_serve.services.predict import PredictService, handle_regions
from sam2_serve.services.segment import SegmentService
from sam2_serve.services.video import VideoService

logger = logging.getLogger("ray.serve")


class SAM2Ingress:
    """Handle methods take images as encoded bytes, PIL images or RGB arrays, and prompts as dicts or
    ``sam2_serve.common.schemas`` models, with the names, ranges and defaults of the HTTP API."""

    def __init__(self, encoder: DeploymentHandle, decoder: DeploymentHandle, cache: DeploymentHandle,
                 tracker: Optional[DeploymentHandle] = None, limits: dict | None = None, auth: dict | None = None,
                 request_timeout_s: float | None = None, retry_after_s: float = 1.0):
        self.encoder = encoder
        self.limits = Limits.model_validate(limits or {})
        # Keys are read here, in the replica (its environment, its mounted files); a misconfiguration fails start-up.
        self.api_keys = ApiKeys.load(auth)
        self.request_timeout_s, self.retry_after_s = request_timeout_s, retry_after_s
        logger.info("API-key authentication is %s", f"on ({len(self.api_keys)} key(s))" if self.api_keys.enabled
                    else "off (set SAM2_SERVE_API_KEY or auth.api_key_file to turn it on)")
        embeddings = Embeddings(encoder, cache, self.limits)
        self.images = PredictService(embeddings, decoder, self.limits)
        self.segmenter = SegmentService(embeddings, decoder, self.limits)
        self.video = VideoService(tracker, self.limits)

    def __serve_build_asgi_app__(self):
        """The replica's FastAPI app, its routes bound to this instance (Serve calls this after ``__init__``)."""
        from sam2_serve.http.routes import build_http_app

        return build_http_app(self)

    # ---- images ---------------------------------------------------------------------------------------------

    async def predict(self, image: Any = None, regions: Any = None, dict_inputs: Any = None,
                      multimask_output: bool = False, denormalize_coord: bool = True,
                      image_id: Optional[str] = None) -> PredictResult:
        """Masks from prompts, as ``PredictResult`` with boolean numpy masks (and 256 x 256 low-res logits).

        ``image``: encoded bytes, a PIL image or an RGB uint8 array (H, W, 3); or ``image_id`` of a cached image.
        ``regions`` / ``dict_inputs``: as in the HTTP API; coordinates are fractions of W/H unless
        ``denormalize_coord`` is false (pixels).
        """
        _one_image(image, image_id)
        req = parse(PredictRequest, {
            "image": {"image_id": image_id or "inline"}, "regions": dump(regions), "dict_inputs": dump(dict_inputs),
            "multimask_output": multimask_output, "denormalize_coord": denormalize_coord})
        out = await self.images.predict(image, image_id, req, with_logits=True)
        regions = await asyncio.to_thread(handle_regions, out.predictions)
        return PredictResult(out.image_id, out.width, out.height, regions)

    async def segment_anything(self, image: Any = None, image_id: Optional[str] = None, **params: Any) -> AmgResult:
        """Every object in the image (``SAM2AutomaticMaskGenerator``), as ``AmgResult``.

        ``params``: the fields of ``SegmentAnythingOptions`` (same names, ranges and defaults as over HTTP;
        ``mask_format`` is ignored here). Masks come sorted by predicted IoU, highest first, as ``AutoMask``
        records holding COCO RLE (``.mask`` decodes one to bool (H, W)).
        """
        _one_image(image, image_id)
        return await self.segmenter.segment(image, image_id, parse(SegmentAnythingOptions, params))

    async def embed(self, image: Any = None, image_id: Optional[str] = None) -> dict:
        """Encode only; returns ``{"image_id", "width", "height"}`` for later ``image_id`` calls."""
        _one_image(image, image_id)
        return await self.images.embed(image, image_id)

    async def models(self) -> list[dict]:
        """What ``GET /v1/models`` reports: model name, checkpoint sha256, device, dtype, input size."""
        return [await self.encoder.info.remote()]

    # ---- video: frames come back as TrackedFrame with boolean numpy masks --------------------------------------

    async def generate(self, video: bytes, frames: Any = None, list_dict_inputs: Any = None, start_frame: int = 0,
                       max_frames: Optional[int] = None, denormalize_coord: bool = True, with_logits: bool = False):
        """Track prompted objects; use as ``handle.options(stream=True).generate.remote(video_bytes, ...)``.

        ``frames`` / ``list_dict_inputs``: as over HTTP. Yields one ``TrackedFrame`` per frame
        (``.objects[i].mask``: bool (H, W)); ``with_logits`` adds low-res logits.
        """
        req = parse(GenerateRequest, {
            "video": {"base64": ""}, "frames": dump(frames), "list_dict_inputs": dump(list_dict_inputs),
            "start_frame": start_frame, "max_frames": max_frames, "denormalize_coord": denormalize_coord})
        async for frame in _relay(await self.video.generate(video, req, with_logits)):
            yield frame

    async def create_session(self, video: bytes, ttl_s: Optional[float] = None) -> dict:
        """Open an interactive session on a video; returns ``{"session_id", "width", "height", ...}``."""
        return await self.video.create_session(video, ttl_s)

    async def add_prompts(self, session_id: str, index: int, regions: Any, clear_old_points: bool = True,
                          denormalize_coord: bool = True) -> TrackedFrame:
        """Prompts on frame ``index`` (regions as over HTTP); that frame's masks for every object."""
        req = parse(SessionPromptRequest, {"index": index, "regions": dump(regions),
                                           "clear_old_points": clear_old_points, "denormalize_coord": denormalize_coord})
        return await self.video.add_prompts(session_id, req)

    async def propagate(self, session_id: str, start_frame: Optional[int] = None, max_frames: Optional[int] = None,
                        reverse: bool = False):
        """Stream a session's tracked frames (``handle.options(stream=True).propagate.remote(...)``)."""
        async for frame in _relay(self.video.propagate(session_id, start_frame, max_frames, reverse)):
            yield frame

    async def session_info(self, session_id: str) -> dict:
        return await self.video.call(session_id, "session_info")

    async def remove_object(self, session_id: str, track_id: str) -> dict:
        return await self.video.call(session_id, "remove_object", track_id)

    async def delete_session(self, session_id: str) -> dict:
        return await self.video.call(session_id, "delete_session")


def _one_image(image: Any, image_id: Optional[str]) -> None:
    if (image is None) == (image_id is None):
        raise InvalidRequest("give exactly one of image or image_id")


async def _relay(stream):
    """Yield a tracker stream's frames; cancel the tracker's work when the caller stops early or goes away."""
    try:
        async for frame in stream:
            yield frame
    finally:
        stream.cancel()
