"""Build API responses from decoder output: boolean masks for handles, PNG/RLE for HTTP."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from sam2_serve.common.masks import encode_mask, mask_box
from sam2_serve.common.types import BitMask, MaskPrediction, Region


def regions_from_predictions(predictions: Sequence[MaskPrediction]) -> list[Region]:
    """Flatten per-object predictions into handle regions with boolean masks (1 per object, or 3 in SAM2's order
    with multimask), with each mask's low-res logits when the decoder returned them."""
    regions = []
    for p in predictions:
        for i, bits in enumerate(p.masks):
            regions.append(Region(
                mask=bits.unpack(),
                score=float(p.scores[i]),
                box=mask_box(bits),
                track_id=p.track_id,
                logits=p.low_res_logits[i] if p.low_res_logits is not None else None,
            ))
    return regions


def region_json(mask: np.ndarray | BitMask, score: float, track_id: Optional[str], mask_format: str) -> dict:
    box = mask_box(mask)
    out = {
        "mask": encode_mask(mask, mask_format),
        "score": score,
        "concepts": [{"name": "1", "value": score}],
        "box": list(box) if box is not None else None,
    }
    if track_id is not None:
        out["track_id"] = track_id
    return out


def predict_json(image_id: str, width: int, height: int, predictions: Sequence[MaskPrediction],
                 mask_format: str) -> dict:
    """The HTTP answer of ``/v1/predict``, encoded straight from the decoder's packed masks."""
    return {
        "image_id": image_id,
        "width": width,
        "height": height,
        "regions": [region_json(bits, float(p.scores[i]), p.track_id, mask_format)
                    for p in predictions for i, bits in enumerate(p.masks)],
    }
