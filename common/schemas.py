"""Request and response schemas of the HTTP API (and the OpenAPI at /docs).

Unknown fields are rejected everywhere (``extra="forbid"``) so that a misspelt option is a 400, not silently
ignored. Coordinates are normalized to [0, 1] of width and height unless ``denormalize_coord`` is false.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

Finite = Annotated[float, Field(allow_inf_nan=False)]


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


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorBody
