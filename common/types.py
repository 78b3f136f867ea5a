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
class BitMask:
    """A boolean (H, W) mask, 8 pixels a byte: how masks travel between replicas (8x smaller than bool).

    Attributes:
        bits: uint8 (H, ceil(W / 8)), ``np.packbits(mask, axis=-1)``: row-major, a row's first pixel in the high
            bit, rows padded to whole bytes.
        width: W in pixels.
    """

    bits: np.ndarray
    width: int

    @classmethod
    def pack(cls, mask: np.ndarray) -> "BitMask":
        mask = np.asarray(mask, dtype=bool)
        return cls(np.packbits(mask, axis=-1), int(mask.shape[-1]))

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the mask."""
        return int(self.bits.shape[0]), self.width

    def unpack(self) -> np.ndarray:
        """bool (H, W)."""
        return np.unpackbits(self.bits, axis=-1, count=self.width).view(bool)


@dataclass(frozen=True)
class MaskPrediction:
    """The decoder's answer for one object.

    Attributes:
        masks: C ``BitMask``s of the original image size (H, W); C = 1, or 3 with ``multimask_output``.
        scores: float32 (C,) predicted IoU of each mask.
        low_res_logits: float32 (C, 256, 256) mask logits before upsampling (clamped to [-32, 32] like upstream),
            or None when the caller did not ask for them (HTTP answers carry no logits).
    """

    masks: tuple[BitMask, ...]
    scores: np.ndarray
    low_res_logits: Optional[np.ndarray]
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
