"""Request and response schemas of the HTTP API (and the OpenAPI at /docs).

Unknown fields are rejected everywhere (``extra="forbid"``) so that a misspelt option is a 400, not silently
ignored. Coordinates are normalized to [0, 1] of width and height unless ``denormalize_coord`` is false.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Optional, TypeVar, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from sam2_serve.common.errors import InvalidRequest

Finite = Annotated[float, Field(allow_inf_nan=False)]
M = TypeVar("M", bound=BaseModel)


def describe(errors: list[dict]) -> str:
    """Pydantic errors -> one line naming each bad field, e.g. ``regions.0.point: List should have ...``."""
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body",))
        msg = e.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse(model: type[M], data: Any) -> M:
    """``model`` validated from ``data``; ``InvalidRequest`` (400) naming each bad field otherwise."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(describe(exc.errors())) from None


def dump(value):
    """Schema models (or lists of them) as plain data, for handle callers that pass models instead of dicts."""
    if value is None:
        return None
    if isinstance(value, list):
        return [dump(v) for v in value]
    return value.model_dump() if hasattr(value, "model_dump") else value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MaskFormat(str, Enum):
    png = "png"
    rle = "rle"


class ImageInput(Strict):
    """The image: its bytes as base64, or the ``image_id`` of an image sent before (cached embedding)."""

    base64: Optional[str] = Field(None, description="Encoded image file (JPEG, PNG, WebP, ...) as base64.")
    image_id: Optional[str] = Field(None, description="An id returned by an earlier call; 404 once evicted.")

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.base64 is None) == (self.image_id is None):
            raise ValueError("give exactly one of image.base64 or image.image_id")
        return self


class Concept(Strict):
    """A point's label: ``value`` >= 0.5 is positive; without a value, ``name`` "1"/"0" decides."""

    name: str = "1"
    value: Optional[Finite] = None


class RegionPrompt(Strict):
    """One prompt: a point ``[x, y]`` (or ``[x, y, z]``, z ignored) with its label, or a box."""

    point: Optional[Annotated[list[Finite], Field(min_length=2, max_length=3)]] = None
    box: Optional[Annotated[list[Finite], Field(min_length=4, max_length=4)]] = Field(
        None, description="[xmin, ymin, xmax, ymax]")
    concepts: list[Concept] = Field(default_factory=list, max_length=1)
    track_id: Optional[str] = Field(None, max_length=128, description="Prompts sharing a track_id form one object.")

    @model_validator(mode="after")
    def _point_xor_box(self):
        if (self.point is None) == (self.box is None):
            raise ValueError("each region needs exactly one of 'point' or 'box'")
        if self.box is not None and self.concepts:
            raise ValueError("'concepts' labels points; a box region takes none")
        return self


class DictInputs(Strict):
    """``SAM2ImagePredictor.predict`` arguments: ``points`` [[x, y], ...], ``labels`` [1|0, ...], ``box``."""

    points: Optional[list[Annotated[list[Finite], Field(min_length=2, max_length=2)]]] = None
    labels: Optional[list[Finite]] = None
    box: Optional[Union[Annotated[list[Finite], Field(min_length=4, max_length=4)],
                        list[Annotated[list[Finite], Field(min_length=4, max_length=4)]]]] = None


class PredictRequest(Strict):
    image: ImageInput
    regions: Optional[list[RegionPrompt]] = None
    dict_inputs: Optional[DictInputs] = None
    multimask_output: bool = Field(False, description="3 masks per object (SAM2's order) instead of 1.")
    denormalize_coord: bool = Field(True, description="Coordinates are fractions of W/H; false: pixels.")
    mask_format: MaskFormat = MaskFormat.png

    @model_validator(mode="after")
    def _one_prompt_form(self):
        if self.regions is not None and self.dict_inputs is not None:
            raise ValueError("give either 'regions' or 'dict_inputs', not both")
        return self


class EmbedRequest(Strict):
    image: ImageInput


class MaskOut(BaseModel):
    png: Optional[str] = Field(None, description="base64 8-bit PNG, 255 inside / 0 outside, W x H")
    rle: Optional[dict] = Field(None, description='COCO compressed RLE {"size": [H, W], "counts": str}')


class ConceptOut(BaseModel):
    name: str
    value: float


class RegionOut(BaseModel):
    mask: MaskOut
    score: float = Field(description="Predicted IoU of the mask.")
    concepts: list[ConceptOut]
    box: Optional[list[float]] = Field(None, description="Normalized [xmin, ymin, xmax, ymax] of the mask.")
    track_id: Optional[str] = None


class PredictResponse(BaseModel):
    image_id: str
    width: int
    height: int
    regions: list[RegionOut]


class EmbedResponse(BaseModel):
    image_id: str
    width: int
    height: int


class ModelInfo(BaseModel):
    name: str
    checkpoint_sha256: str
    device: str
    dtype: str
    image_size: int
    encoder_backend: str = Field("torch", description="What runs the image encoder's network: openvino or torch.")


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# ---- segment_anything (automatic mask generation) -------------------------------------------------------------
# Parameters mirror ``SAM2AutomaticMaskGenerator`` (same names and meanings). Defaults are SAM 2's, except
# ``multimask_output=false`` (the hosted SAM 2 API's default; upstream's is true). Out-of-range values are a 400
# whose message names the parameter and its allowed range.


def _ranged(kind: type, lo: float, hi: float, *, hi_open: bool = False, description: str = ""):
    """A number field in [lo, hi] (or [lo, hi)); the error names the range, e.g. "must be in [1, 1024], got 0"."""
    from pydantic import AfterValidator

    fmt = (lambda x: f"{int(x):_}".replace("_", " ")) if kind is int else (lambda x: f"{x:g}")
    allowed = f"{'an integer' if kind is int else 'a number'} in [{fmt(lo)}, {fmt(hi)}{')' if hi_open else ']'}"

    def check(v):
        if not (lo <= v <= hi) or (hi_open and v >= hi):
            raise ValueError(f"must be {allowed}, got {v}")
        return v

    extra = {"minimum": lo, "exclusiveMaximum" if hi_open else "maximum": hi}
    return Annotated[kind, Field(description=description, json_schema_extra=extra), AfterValidator(check)]


class SegmentAnythingOptions(Strict):
    """Automatic mask generation parameters (``SAM2AutomaticMaskGenerator``'s)."""

    points_per_side: _ranged(int, 1, 1024, description="Grid points along each side; points_per_side^2 prompts.") = 32
    points_per_batch: _ranged(int, 1, 1024, description="Prompts decoded together (a unit of decoder work).") = 64
    pred_iou_thresh: _ranged(float, 0, 1, description="Keep masks whose predicted IoU is above this.") = 0.8
    stability_score_thresh: _ranged(float, 0, 1, description="Keep masks at least this stable.") = 0.95
    stability_score_offset: _ranged(float, 0, 32, description="Logit shift for the stability score.") = 1.0
    box_nms_thresh: _ranged(float, 0, 1, description="Box IoU above which duplicate masks are removed.") = 0.7
    crop_n_layers: _ranged(int, 0, 4, description="Crop layers; layer i adds 4^i crops prompted again.") = 0
    crop_nms_thresh: _ranged(float, 0, 1, description="Box IoU for duplicates between crops.") = 0.7
    crop_overlap_ratio: _ranged(float, 0, 1, hi_open=True, description="Overlap of neighbouring crops, as a "
                                "fraction of the image's shorter side (first crop layer).") = 512 / 1500
    crop_n_points_downscale_factor: _ranged(int, 1, 64, description="Layer i uses points_per_side / factor^i "
                                            "points per side.") = 1
    min_mask_region_area: _ranged(int, 0, 100_000_000, description="Holes/islands up to this many pixels are "
                                  "removed (needs sam2's CUDA extension; skipped without it, as upstream).") = 0
    multimask_output: bool = Field(False, description="3 masks per grid point instead of 1 (upstream default: true).")
    use_m2m: bool = Field(False, description="One refinement pass per mask using its own low-res mask as prompt.")
    mask_format: MaskFormat = MaskFormat.png

    @model_validator(mode="after")
    def _grid_not_empty(self):
        last = int(self.points_per_side / self.crop_n_points_downscale_factor ** self.crop_n_layers)
        if last < 1:
            raise ValueError(
                f"points_per_side / crop_n_points_downscale_factor^crop_n_layers must be >= 1 (got "
                f"{self.points_per_side} / {self.crop_n_points_downscale_factor}^{self.crop_n_layers}): the last "
                "crop layer would have no points")
        return self


class SegmentAnythingRequest(SegmentAnythingOptions):
    image: ImageInput


class SegmentRegionOut(BaseModel):
    mask: MaskOut
    score: float = Field(description="Predicted IoU of the mask.")
    stability_score: float = Field(description="IoU of the mask thresholded at +/- stability_score_offset.")
    area: int = Field(description="Mask area in pixels.")
    box: Optional[list[float]] = Field(None, description="Normalized [xmin, ymin, xmax, ymax]; null if empty.")
    point: list[float] = Field(description="Normalized [x, y] of the grid point that produced the mask.")
    concepts: list[ConceptOut]


class SegmentAnythingResponse(BaseModel):
    image_id: str
    width: int
    height: int
    regions: list[SegmentRegionOut] = Field(description="Sorted by score (predicted IoU), highest first.")


# ---- video: generate and interactive sessions --------------------------------------------------------------


def _whole(value, what: str = "value"):
    """Accept 3 and 3.0 (JSON from some clients), reject 3.5 and booleans."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a whole number, not a boolean")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{what} must be a whole number, got {value}")
        return int(value)
    return value


WholeInt = Annotated[int, BeforeValidator(_whole)]


class VideoInput(Strict):
    """The video file (MP4, WebM, MKV, MOV, ...) as base64; multipart requests upload it as the ``video`` field."""

    base64: str = Field(description="Encoded video file as base64 (a data: URL prefix is accepted).")


class MaskInput(Strict):
    """A mask prompt at the frame's size: an 8-bit PNG (non-zero inside) or COCO RLE, as responses carry them."""

    png: Optional[str] = None
    rle: Optional[dict] = None

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.png is None) == (self.rle is None):
            raise ValueError("a mask takes exactly one of 'png' or 'rle'")
        return self


class VideoRegion(Strict):
    """One prompt on a frame: a point ``[x, y]`` (``[x, y, z]``, z ignored) with its label, a box, or a mask.

    Regions with the same ``track_id`` (on any frame) are one object; without one, a region starts a new object.
    """

    point: Optional[Annotated[list[Finite], Field(min_length=2, max_length=3)]] = None
    box: Optional[Annotated[list[Finite], Field(min_length=4, max_length=4)]] = Field(
        None, description="[xmin, ymin, xmax, ymax]")
    mask: Optional[MaskInput] = None
    concepts: list[Concept] = Field(default_factory=list, max_length=1)
    track_id: Optional[str] = Field(None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _one_kind(self):
        if sum(x is not None for x in (self.point, self.box, self.mask)) != 1:
            raise ValueError("each region needs exactly one of 'point', 'box' or 'mask'")
        if self.point is None and self.concepts:
            raise ValueError("'concepts' labels points; box and mask regions take none")
        return self


class FramePrompts(Strict):
    """The prompts on one frame (``index`` counts from 0, the video's first frame)."""

    index: WholeInt = Field(ge=0)
    regions: list[VideoRegion] = Field(min_length=1)


class ListDictInput(Strict):
    """``SAM2VideoPredictor.add_new_points_or_box`` arguments: ``points`` [[x, y], ...], ``labels`` [1|0, ...],
    ``box`` [xmin, ymin, xmax, ymax], ``obj_id``, ``frame_idx``. Whole floats (``0.0``) are taken as integers."""

    points: Optional[list[Annotated[list[Finite], Field(min_length=2, max_length=2)]]] = None
    labels: Optional[list[WholeInt]] = None
    box: Optional[Annotated[list[Finite], Field(min_length=4, max_length=4)]] = None
    obj_id: Union[WholeInt, str]
    frame_idx: WholeInt = Field(ge=0)
    clear_old_points: bool = True

    @model_validator(mode="after")
    def _has_prompt(self):
        if not self.points and self.box is None:
            raise ValueError("each list_dict_inputs entry needs 'points' (with 'labels') or a 'box'")
        return self


class GenerateRequest(Strict):
    """Track prompted objects through a video; the answer streams as NDJSON, one line per frame."""

    video: VideoInput
    frames: Optional[list[FramePrompts]] = None
    list_dict_inputs: Optional[list[ListDictInput]] = None
    start_frame: WholeInt = Field(0, ge=0, description="First frame to track and return.")
    max_frames: Optional[WholeInt] = Field(None, gt=0, description="Frames to return at most (default: to the end).")
    denormalize_coord: bool = Field(True, description="Coordinates are fractions of W/H; false: pixels.")
    mask_format: MaskFormat = MaskFormat.png

    @model_validator(mode="after")
    def _one_prompt_form(self):
        if self.frames is not None and self.list_dict_inputs is not None:
            raise ValueError("give either 'frames' or 'list_dict_inputs', not both")
        return self


class VideoRegionOut(BaseModel):
    track_id: str
    mask: MaskOut
    box: Optional[list[float]] = Field(None, description="Normalized [xmin, ymin, xmax, ymax]; null when empty.")
    score: Optional[float] = Field(None, description="Object score logit: > 0 when the object is seen.")


class FrameOut(BaseModel):
    """One NDJSON line of a stream (or ``{"error": {...}}`` if the stream fails after it began)."""

    index: int
    time: float = Field(description="Seconds from the first frame.")
    regions: list[VideoRegionOut]


class SessionCreateRequest(Strict):
    video: VideoInput
    ttl_s: Optional[float] = Field(None, gt=0, description="Idle seconds before expiry; at most the server's TTL.")


class SessionOut(BaseModel):
    session_id: str
    width: int
    height: int
    num_frames: int
    fps: float
    ttl_s: float = Field(description="Idle seconds after which the session expires (410).")


class SessionPromptRequest(Strict):
    """Prompts on one frame; each object's points on that frame replace its earlier ones unless
    ``clear_old_points`` is false (a box always replaces)."""

    index: WholeInt = Field(ge=0)
    regions: list[VideoRegion] = Field(min_length=1)
    clear_old_points: bool = True
    denormalize_coord: bool = True
    mask_format: MaskFormat = MaskFormat.png


class PropagateRequest(Strict):
    start_frame: Optional[WholeInt] = Field(None, ge=0, description="Default: the first prompted frame.")
    max_frames: Optional[WholeInt] = Field(None, gt=0)
    reverse: bool = Field(False, description="Track backward in time from start_frame.")
    mask_format: MaskFormat = MaskFormat.png
