"""Every small frozen dataclass handed between deployments, and those returned to Python handle callers.

Images: ``EncodeRequest`` -> encoder -> ``ImageEmbedding`` (in the object store) behind an ``EmbeddingRef``;
``ObjectPrompt`` -> decoder -> ``MaskPrediction`` (masks as ``BitMask``); handles get ``PredictResult``.
Automatic masks: ``AmgParams`` + grid points -> decoder -> ``BatchMasks``; handles get ``AmgResult`` of ``AutoMask``.
Video: ``VideoInfo`` + ``VideoObjectPrompt`` -> tracker -> ``TrackedFrame`` of ``TrackedObject``.

Coordinates: (x, y) = (column, row); pixel coordinates unless a docstring says normalized (fractions of W and H).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class ImageEmbedding:
    """What the decoder needs of one encoded image.

    Attributes:
        image_id: content hash of the decoded RGB pixels (see ``sam2_serve.common.images.image_id``).
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
    """One image for the encoder: RGB uint8 (H, W, 3) and its content hash (``sam2_serve.common.images.image_id``)."""

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


# ---- automatic masks (segment_anything) -------------------------------------------------------------------------

# Upstream's default; kept as the one fraction SAM2 documents (512 / 1500).
DEFAULT_CROP_OVERLAP_RATIO = 512 / 1500


@dataclass(frozen=True)
class AmgParams:
    """``SAM2AutomaticMaskGenerator`` parameters (same names, meanings and defaults, except ``multimask_output``).

    ``multimask_output`` defaults to False, as in the hosted SAM 2 API this service mirrors (upstream: True).
    ``min_mask_region_area`` is passed to the predictor as ``max_hole_area``/``max_sprinkle_area`` exactly as
    upstream does; that post-processing needs sam2's CUDA extension and is skipped (with upstream's warning) without
    it. ``mask_threshold`` is upstream's binarisation threshold on logits (not exposed over HTTP).
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    mask_threshold: float = 0.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = DEFAULT_CROP_OVERLAP_RATIO
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0
    multimask_output: bool = False
    use_m2m: bool = False

    def upstream_kwargs(self) -> dict:
        """Keyword arguments that make ``SAM2AutomaticMaskGenerator`` compute the same thing."""
        return asdict(self)

    def points_per_layer(self) -> list[int]:
        """Grid points per side in each crop layer (upstream: ``int(n / factor**i)``)."""
        return [int(self.points_per_side / (self.crop_n_points_downscale_factor ** i))
                for i in range(self.crop_n_layers + 1)]

    def total_points(self) -> int:
        """Point prompts over all crops: layer i has 4**i crops of ``points_per_layer()[i]**2`` points each."""
        return sum((4 ** i) * n * n for i, n in enumerate(self.points_per_layer()))


@dataclass(frozen=True)
class BatchMasks:
    """The survivors of one decoded batch: compact, ready to merge (what a decoder replica returns).

    Attributes:
        iou_preds: float32 (K,) predicted IoU.
        stability: float32 (K,) stability score (NaN when the mask is empty even at the low cut-off, as upstream).
        boxes: int64 (K, 4) mask bounds (x0, y0, x1, y1) in pixels of the *crop*, inclusive; zeros if empty.
        points: float32 (K, 2) the prompt (x, y) in pixels of the crop.
        rles: K COCO compressed RLEs ``{"size": [H, W], "counts": bytes}`` of the mask in the *original* image.
        areas: int64 (K,) mask areas in pixels.
        candidates: masks the decoder produced for the batch; ``upsampled``: how many passed the IoU filter;
        ``stopped``: prompts whose decode stopped after the transformer (no mask could pass the IoU filter).
    """

    iou_preds: np.ndarray
    stability: np.ndarray
    boxes: np.ndarray
    points: np.ndarray
    rles: list
    areas: np.ndarray
    candidates: int = 0
    upsampled: int = 0
    stopped: int = 0

    def __len__(self) -> int:
        return len(self.rles)


@dataclass(frozen=True)
class AutoMask:
    """One generated mask, as upstream's record plus what the API reports.

    ``rle`` is COCO compressed RLE at the original size; ``bbox`` is (x0, y0, x1, y1) inclusive pixels, None when
    the mask is empty; ``point`` the (x, y) pixel prompt; ``crop_box`` (x0, y0, x1, y1) exclusive pixels.
    """

    rle: dict = field(repr=False)
    score: float
    stability_score: float
    area: int
    bbox: Optional[tuple[int, int, int, int]]
    point: tuple[float, float]
    crop_box: tuple[int, int, int, int]

    @property
    def mask(self) -> np.ndarray:
        """The mask as bool (H, W)."""
        from pycocotools import mask as mask_utils

        return mask_utils.decode(self.rle).astype(bool)

    def normalized_box(self, width: int, height: int) -> Optional[list[float]]:
        """(xmin, ymin, xmax, ymax) as fractions of W/H, far edges at (last pixel + 1) like ``predict``'s boxes."""
        if self.bbox is None:
            return None
        x0, y0, x1, y1 = self.bbox
        return [x0 / width, y0 / height, (x1 + 1) / width, (y1 + 1) / height]


@dataclass(frozen=True)
class AmgResult:
    """``segment_anything`` over a Python handle: masks sorted by predicted IoU, highest first."""

    image_id: str
    width: int
    height: int
    masks: list[AutoMask]
    stats: dict = field(default_factory=dict)


# ---- video -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """What a probe learned about a video.

    Attributes:
        width, height: displayed frame size in pixels (after rotation metadata).
        num_frames: frames in the stream (counted from packets, not the container's claim).
        fps: average frame rate (frames per second), 0 when unknown.
        duration_s: seconds from the first to past the last frame.
        container, codec: FFmpeg names, e.g. ``mov,mp4,m4a,3gp,3g2,mj2`` and ``h264``.
        times_s: presentation time of each frame in seconds, from the first frame (length ``num_frames``).
    """

    width: int
    height: int
    num_frames: int
    fps: float
    duration_s: float
    container: str
    codec: str
    times_s: tuple[float, ...]


@dataclass(frozen=True)
class VideoObjectPrompt:
    """One object's prompt on one frame, in pixels of the original frame.

    Attributes:
        frame: video frame index (0-based).
        track_id: the caller's object name (``obj_id`` of upstream's ``add_new_points_or_box``, as a string).
        points: float32 (N, 2) as (x, y) = (column, row) in pixels, or None.
        labels: int32 (N,), 1 positive / 0 negative, or None.
        box: float32 (4,) as (xmin, ymin, xmax, ymax) in pixels, or None.
        mask: bool (H, W) at the frame's size, or None (then points and/or box).
        clear_old_points: replace this object's earlier points on this frame (upstream's default) or add to them.
    """

    frame: int
    track_id: str
    points: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    box: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None
    clear_old_points: bool = True


@dataclass(frozen=True)
class TrackedObject:
    """One object on one tracked frame.

    Attributes:
        mask: bool (H, W) at the video's size.
        score: the object-score logit (> 0: sam2 sees the object on this frame), None where it has no output.
        box: normalized (xmin, ymin, xmax, ymax) of the mask, None when empty.
        logits: float32 low-res mask logits (S/4, S/4) for S = model input size, only when asked for.
    """

    track_id: str
    mask: np.ndarray
    score: Optional[float]
    box: Optional[tuple[float, float, float, float]]
    logits: Optional[np.ndarray] = field(default=None, repr=False)

    def __reduce__(self):
        # Between replicas the mask travels 8 pixels a byte (65 kB instead of 518 kB at 960x540): small enough for
        # Ray to carry it inline in the reply instead of through the object store (measured 7.4 -> 3.4 ms a call).
        return _tracked_object, (self.track_id, BitMask.pack(self.mask), self.score, self.box, self.logits)


def _tracked_object(track_id, mask: BitMask, score, box, logits) -> TrackedObject:
    return TrackedObject(track_id, mask.unpack(), score, box, logits)


@dataclass(frozen=True)
class TrackedFrame:
    """One frame of a tracking stream: ``index`` in the video, ``time_s`` from the first frame, its objects."""

    index: int
    time_s: float
    width: int
    height: int
    objects: list[TrackedObject]
