"""Build API responses from decoder output: boolean masks for handles, PNG/RLE for HTTP."""

from __future__ import annotations

from typing import Sequence

from common.masks import encode_mask, mask_box
from common.types import MaskPrediction, PredictResult, Region


def regions_from_predictions(predictions: Sequence[MaskPrediction], with_logits: bool = True) -> list[Region]:
    """Flatten per-object predictions into regions (1 per object, or 3 in SAM2's order with multimask)."""
    regions = []
    for p in predictions:
        for i in range(p.masks.shape[0]):
            regions.append(Region(
                mask=p.masks[i],
                score=float(p.scores[i]),
                box=mask_box(p.masks[i]),
                track_id=p.track_id,
                logits=p.low_res_logits[i] if with_logits else None,
            ))
    return regions


def region_json(region: Region, mask_format: str) -> dict:
    out = {
        "mask": encode_mask(region.mask, mask_format),
        "score": region.score,
        "concepts": [{"name": "1", "value": region.score}],
        "box": list(region.box) if region.box is not None else None,
    }
    if region.track_id is not None:
        out["track_id"] = region.track_id
    return out


def predict_json(result: PredictResult, mask_format: str) -> dict:
    return {
        "image_id": result.image_id,
        "width": result.width,
        "height": result.height,
        "regions": [region_json(r, mask_format) for r in result.regions],
    }
