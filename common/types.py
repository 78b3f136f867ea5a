"""Small frozen dataclasses handed between deployments (and returned to Python handle callers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class ImageEmbedding:
    """What the decoder needs of one encoded image.

    Attributes:
        image_id: content hash of the decoded RGB pixels (see ``common.images.image_id``).
        orig_hw: original image size as (height, width) in pixels.
        image_embed: float32 array (1, 256, 64, 64): the lowest-resolution backbone features (+ no-mem embed).
        high_res_feats: float32 arrays (1, 32, 256, 256) and (1, 64, 128, 128) for the mask decoder's upsampler.
    """

    image_id: str
    orig_hw: tuple[int, int]
    image_embed: np.ndarray
    high_res_feats: tuple[np.ndarray, ...]

    @property
    def nbytes(self) -> int:
        return self.image_embed.nbytes + sum(f.nbytes for f in self.high_res_feats)


@dataclass(frozen=True)
class ObjectPrompt:
    """The prompts for one object, in pixels of the original image.

    Attributes:
        point_coords: float32 (N, 2) as (x, y) = (column, row) in pixels, or None.
        point_labels: int32 (N,), 1 positive / 0 negative, or None.
        box: float32 (4,) as (xmin, ymin, xmax, ymax) in pixels, or None.
        track_id: the caller's name for the object, echoed back.
    """

    point_coords: Optional[np.ndarray] = None
    point_labels: Optional[np.ndarray] = None
    box: Optional[np.ndarray] = None
    track_id: Optional[str] = None


@dataclass(frozen=True)
class MaskPrediction:
    """The decoder's answer for one object.

    Attributes:
        masks: bool (C, H, W) at the original image size; C = 1, or 3 with ``multimask_output``.
        scores: float32 (C,) predicted IoU of each mask.
        low_res_logits: float32 (C, 256, 256) mask logits before upsampling (clamped to [-32, 32] like upstream).
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    track_id: Optional[str] = None


@dataclass(frozen=True)
class Region:
    """One mask in a handle response: boolean mask at the original size plus its metadata.

    ``box`` is the mask's bounds as normalized (xmin, ymin, xmax, ymax), or None for an empty mask.
    """

    mask: np.ndarray
    score: float
    box: Optional[tuple[float, float, float, float]]
    track_id: Optional[str] = None
    logits: Optional[np.ndarray] = field(default=None, repr=False)


@dataclass(frozen=True)
class PredictResult:
    """``predict`` over a Python handle: masks as boolean numpy arrays, no PNG round trip."""

    image_id: str
    width: int
    height: int
    regions: list[Region]


@dataclass(frozen=True)
class EncodeRequest:
    """One image for the encoder: RGB uint8 (H, W, 3) and its content hash (``common.images.image_id``)."""

    image_id: str
    rgb: np.ndarray


@dataclass(frozen=True)
class EmbeddingRef:
    """A cached image embedding in Ray's object store: metadata plus the reference, never the arrays.

    ``ref`` is a ``ray.ObjectRef`` to an ``ImageEmbedding``, owned by the encoder replica that made it (if that
    replica dies, the decoder gets an error and the ingress re-encodes). Passing this dataclass between
    deployments copies ~100 bytes; the decoder reads the 16 MB of features zero-copy on its own node.
    """

    image_id: str
    orig_hw: tuple[int, int]
    nbytes: int
    ref: object
