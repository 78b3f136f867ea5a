"""Request limits, configurable from the application's ``args`` (``limits:`` in serve_config.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from sam2_serve.common.images import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from sam2_serve.common.videos import DEFAULT_MAX_FRAME_PIXELS, DEFAULT_MAX_VIDEO_FRAMES, DEFAULT_MAX_VIDEO_SECONDS


class Limits(BaseModel):
    """Caps on what one request may ask for; exceeding one is a 413 (size) or 422 (work) with a message."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0, description="HTTP request body, any endpoint.")
    max_image_bytes: int = Field(DEFAULT_MAX_IMAGE_BYTES, gt=0)
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, gt=0)
    max_points: int = Field(256, gt=0, description="Point prompts in one predict request.")
    max_objects: int = Field(64, gt=0, description="Objects (masks to decode) in one predict request.")
    max_segment_points: int = Field(
        16_384, gt=0, description="segment_anything: grid points summed over all crops (points_per_side^2 on the "
        "image, plus 4^i crops x (points_per_side / downscale^i)^2 per crop layer i). Default fits 32 per side "
        "with crop_n_layers=1 (5 120) or 2 with downscale 2 (3 072); 64 per side and no crops (4 096).")
    # video (generate, sessions)
    max_video_bytes: int = Field(48 * 1024 * 1024, gt=0, description="Encoded video file (base64 adds 1/3 on "
                                 "the wire; max_body_bytes must allow that).")
    max_video_frames: int = Field(DEFAULT_MAX_VIDEO_FRAMES, gt=0, description="Frames in an uploaded video.")
    max_video_seconds: float = Field(DEFAULT_MAX_VIDEO_SECONDS, gt=0, description="Duration of an uploaded video.")
    max_frame_pixels: int = Field(DEFAULT_MAX_FRAME_PIXELS, gt=0, description="Width x height of a video frame.")
    max_video_objects: int = Field(32, gt=0, description="Tracked objects in one video or session.")
    max_prompted_frames: int = Field(64, gt=0, description="Distinct frames carrying prompts in one request.")
