"""``predict`` and ``embed``: prompts checked, the image encoded once (``Embeddings``), one decoder call.

Prompts are validated against the image size before any model work, so a bad click never costs an encoder pass.
A click by ``image_id`` on an embedding this replica used recently starts decoding at once while the shared cache
confirms the image is still there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from sam2_serve.common.limits import Limits
from sam2_serve.common.masks import mask_box
from sam2_serve.common.prompts import to_objects
from sam2_serve.common.schemas import PredictRequest
from sam2_serve.common.types import MaskPrediction, Region
from sam2_serve.services.embeddings import Embeddings


@dataclass(frozen=True)
class Prediction:
    """What ``predict`` computed: the image's id and size (pixels) and one ``MaskPrediction`` per object."""

    image_id: str
    width: int
    height: int
    predictions: list[MaskPrediction]


class PredictService:
    """``decoder``: the ``MaskDecoder`` deployment handle."""

    def __init__(self, embeddings: Embeddings, decoder, limits: Limits):
        self.embeddings, self.decoder, self.limits = embeddings, decoder, limits

    async def predict(self, image: Any, image_id: Optional[str], req: PredictRequest, with_logits: bool) -> Prediction:
        """Masks for ``req``'s prompts on ``image`` (encoded bytes, PIL image or RGB array) or a cached ``image_id``.

        ``with_logits`` adds each mask's 256 x 256 low-res logits (handle callers; HTTP answers carry none).
        """
        if image is None:
            recent = self.embeddings.recent(image_id)
            entry = recent or await self.embeddings.cached(image_id)
            rgb = None
            h, w = entry.orig_hw
        else:
            rgb, image_id = await self.embeddings.decode(image)
            recent = entry = None
            h, w = rgb.shape[:2]
        objects = to_objects(req.regions, req.dict_inputs, w, h, req.denormalize_coord, self.limits.max_points,
                             self.limits.max_objects)

        async def decode(emb):
            call = self.decoder.decode.remote(emb, objects, req.multimask_output, with_logits)
            if emb is recent:
                return await self.embeddings.confirm(call, image_id, call.cancel)
            return await call

        predictions = await self.embeddings.using(decode, image_id, rgb, entry)
        return Prediction(image_id, int(w), int(h), predictions)

    async def embed(self, image: Any = None, image_id: Optional[str] = None) -> dict:
        """Encode only: ``{"image_id", "width", "height"}`` for later calls by ``image_id``."""
        if image is None:
            entry = await self.embeddings.cached(image_id)
        else:
            rgb, image_id = await self.embeddings.decode(image)
            entry = await self.embeddings.of(rgb, image_id)
        h, w = entry.orig_hw
        return {"image_id": image_id, "width": w, "height": h}


def handle_regions(predictions: Sequence[MaskPrediction]) -> list[Region]:
    """Per-object predictions -> handle regions with boolean masks (1 per object, or 3 in SAM 2's order with
    multimask), each with its low-res logits when the decoder returned them."""
    return [Region(mask=bits.unpack(), score=float(p.scores[i]), box=mask_box(bits), track_id=p.track_id,
                   logits=p.low_res_logits[i] if p.low_res_logits is not None else None)
            for p in predictions for i, bits in enumerate(p.masks)]
