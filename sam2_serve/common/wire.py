"""Every JSON body the HTTP API writes (the schemas are ``sam2_serve.common.schemas``), built from the hand-off types.

Masks are written as ``{"png": base64}`` (8-bit, 255 inside) or ``{"rle": {"size": [H, W], "counts": str}}`` (COCO);
boxes and points as fractions of the image's width (x) and height (y).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from sam2_serve.common.masks import encode_mask, encode_png, mask_box
from sam2_serve.common.types import AmgResult, AutoMask, BitMask, MaskPrediction, TrackedFrame


# Answers with at most this many mask pixels in all are encoded on the caller's event loop, larger ones in a worker
# thread: RLE costs ~1.1 ms a megapixel (PNG ~0.25), so up to ~4-5 ms of loop time, against ~3-5 ms more for a hop to
# a worker thread and back (it waits for the GIL). A click's mask at 1800x1200 is 2.2 megapixels.
INLINE_ENCODE_PIXELS = 4_000_000


def encode_inline(pixels: int) -> bool:
    """Whether an answer with ``pixels`` mask pixels (width x height x masks) is cheaper encoded where it is."""
    return pixels <= INLINE_ENCODE_PIXELS


# ---- predict ---------------------------------------------------------------------------------------------------

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


# ---- segment_anything ------------------------------------------------------------------------------------------

def segment_region_json(m: AutoMask, width: int, height: int, mask_format: str) -> dict:
    """One API region: ``mask`` (png | rle as in predict), scores, area, normalized ``box`` and ``point``."""
    if mask_format == "rle":
        counts = m.rle["counts"]
        mask = {"rle": {"size": [int(v) for v in m.rle["size"]],
                        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}}
    else:
        mask = {"png": encode_png(m.mask)}
    stability = m.stability_score if math.isfinite(m.stability_score) else 0.0
    return {
        "mask": mask,
        "score": m.score,
        "stability_score": stability,
        "area": m.area,
        "box": m.normalized_box(width, height),
        "point": [m.point[0] / width, m.point[1] / height],
        "concepts": [{"name": "1", "value": m.score}],
    }


def segment_json(result: AmgResult, mask_format: str) -> dict:
    return {"image_id": result.image_id, "width": result.width, "height": result.height,
            "regions": [segment_region_json(m, result.width, result.height, mask_format) for m in result.masks]}


# ---- video (generate, sessions) ---------------------------------------------------------------------------------

def frame_json(frame: TrackedFrame, mask_format: str = "png") -> dict:
    """One NDJSON line: ``{"index", "time", "regions": [{"track_id", "mask", "box", "score"}]}``."""
    return {
        "index": frame.index,
        "time": round(frame.time_s, 6),
        "regions": [{"track_id": o.track_id, "mask": encode_mask(o.mask, mask_format),
                     "box": list(o.box) if o.box is not None else None, "score": o.score}
                    for o in frame.objects],
    }


def live_frame_json(frame: TrackedFrame, mask_format: str, kind: str = "frame", skipped: Sequence[int] = (),
                    message_id=None) -> dict:
    """A live stream's answer (``sam2_serve.common.live_schemas.LiveFrameOut``): ``kind`` ``frame`` for a pushed
    frame, ``prompt`` for a prompt's answer; ``skipped``: frames dropped before it; ``message_id``: the prompt's id."""
    return {"type": kind, **frame_json(frame, mask_format), "skipped": list(skipped), "id": message_id}
