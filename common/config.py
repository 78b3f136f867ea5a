"""Request limits, configurable from the application's ``args`` (``limits:`` in serve_config.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from common.images import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS


class Limits(BaseModel):
    """Caps on what one request may ask for; exceeding one is a 413 (size) or 422 (work) with a message."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0, description="HTTP request body, any endpoint.")
    max_image_bytes: int = Field(DEFAULT_MAX_IMAGE_BYTES, gt=0)
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, gt=0)
    max_points: int = Field(256, gt=0, description="Point prompts in one predict request.")
    max_objects: int = Field(64, gt=0, description="Objects (masks to decode) in one predict request.")
