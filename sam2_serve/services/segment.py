"""``segment_anything``: automatic masks as ``SAM2AutomaticMaskGenerator`` computes them, spread over replicas.

The image and each crop are encoded once through the encoder and the shared cache (``Embeddings``), every batch of
grid points goes to the MaskDecoder replicas at once, and the survivors are merged here with upstream's NMS
(``sam2_serve.models.amg``: plan, decode, merge).
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

import numpy as np

from sam2_serve.common.errors import InvalidRequest, LimitExceeded
from sam2_serve.common.images import image_id as content_id
from sam2_serve.common.limits import Limits
from sam2_serve.common.schemas import SegmentAnythingOptions
from sam2_serve.common.types import AmgParams, AmgResult, BatchMasks
from sam2_serve.models import amg
from sam2_serve.services.embeddings import Embeddings


class SegmentService:
    """``decoder``: the ``MaskDecoder`` deployment handle."""

    def __init__(self, embeddings: Embeddings, decoder, limits: Limits):
        self.embeddings, self.decoder, self.limits = embeddings, decoder, limits

    def params(self, options: SegmentAnythingOptions) -> AmgParams:
        """The generator's parameters, refused (422) when the grid over all crops is over the limit."""
        params = AmgParams(**options.model_dump(include=set(AmgParams.__dataclass_fields__)))
        if params.total_points() > self.limits.max_segment_points:
            raise LimitExceeded(
                f"points_per_side={params.points_per_side} with crop_n_layers={params.crop_n_layers} and "
                f"crop_n_points_downscale_factor={params.crop_n_points_downscale_factor} asks for "
                f"{params.total_points()} grid points over all crops; the limit is {self.limits.max_segment_points}: "
                "lower points_per_side or crop_n_layers, or raise crop_n_points_downscale_factor")
        return params

    async def segment(self, image: Any, image_id: Optional[str], options: SegmentAnythingOptions) -> AmgResult:
        """Every object in ``image`` (encoded bytes, PIL image or RGB array) or in a cached ``image_id``."""
        params = self.params(options)
        if image is None:
            if params.crop_n_layers > 0:
                raise InvalidRequest("crop_n_layers >= 1 needs the image's pixels to encode its crops: send the image "
                                     "(image.base64 or a file), not only image.image_id")
            entry, rgb = await self.embeddings.cached(image_id), None
            h, w = entry.orig_hw
        else:
            (rgb, image_id), entry = await self.embeddings.decode(image), None
            h, w = rgb.shape[:2]
        crops = amg.plan_crops((h, w), params)
        # Crop pixels and ids are ready before any crop is sent, so the crops reach the encoder together and share
        # its batched forward passes (and its cache: a crop seen before is not encoded again).
        crop_images = [(rgb, image_id)]
        if len(crops) > 1:
            crop_images += await asyncio.to_thread(_crop_images, rgb, [c.box for c in crops[1:]])

        async def decode_crop(crop: amg.CropPlan) -> list[BatchMasks]:
            async def batches(emb):
                return await asyncio.gather(*[self.decoder.segment_batch.remote(emb, pts, crop.box, (h, w), params)
                                              for pts in crop.batches(params.points_per_batch)])

            crop_rgb, crop_id = crop_images[crop.index]
            return await self.embeddings.using(batches, crop_id, crop_rgb, entry if crop.index == 0 else None)

        per_crop = await asyncio.gather(*[decode_crop(c) for c in crops])
        masks = await asyncio.to_thread(amg.merge, crops, per_crop, params)
        return AmgResult(image_id, int(w), int(h), masks, amg.batch_stats(per_crop))


def _crop_images(rgb: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> list[tuple[np.ndarray, str]]:
    """(RGB pixels, content id) of each crop box (x0, y0, x1, y1), ends exclusive, of ``rgb``."""
    out = []
    for x0, y0, x1, y1 in boxes:
        pixels = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        out.append((pixels, content_id(pixels)))
    return out
