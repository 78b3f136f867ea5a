"""Build API responses from decoder output: boolean masks for handles, PNG/RLE for HTTP."""

from __future__ import annotations

from typing import Sequence

from sam2_serve.common.masks import mask_box
from sam2_serve.common.types import MaskPrediction, Region


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

