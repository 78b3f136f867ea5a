"""Decode user images into RGB uint8 arrays, the way a browser would show them.

Handles JPEG/PNG/WebP/..., grayscale, 16-bit, RGBA/LA/P (composited on white), CMYK, and EXIF orientation
(applied, so masks come back in the orientation the user sees). Limits on bytes and pixels are checked before
the pixels are decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings
from typing import Optional

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from sam2_serve.common.errors import InvalidImage, PayloadTooLarge

DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


def b64decode(data: str, what: str = "image.base64") -> bytes:
    """Strict base64 (also accepts a ``data:...;base64,`` URL prefix and URL-safe alphabet)."""
    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    data = "".join(data.split())
    try:
        if "-" in data or "_" in data:
            return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"{what} is not valid base64") from None


def decode_image(data: bytes, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 array of shape (H, W, 3), EXIF orientation applied."""
    if not data:
        raise InvalidImage("the image is empty (0 bytes); send the file's contents")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the image is {len(data)} bytes; the limit is {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise PayloadTooLarge(f"the image is {w}x{h} = {w * h} pixels; the limit is {max_pixels} pixels")
            img.load()
    except PayloadTooLarge:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge(f"the image is too large to decode; the limit is {max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise InvalidImage("the bytes are not an image in a format we read (JPEG, PNG, WebP, GIF, BMP, TIFF)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"the image could not be decoded; is the file complete? ({exc})") from None
    return to_rgb(img)


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> (size, size, 3) as sam2's video frame loader resizes a frame before normalizing it
    (PIL's ``resize`` with its default filter, aspect ratio not kept). At that size already: an equal copy."""
    return np.asarray(Image.fromarray(rgb).resize((size, size)))


def shrink_to_input(rgb: np.ndarray, side: int) -> tuple[np.ndarray, Optional[tuple[int, int]]]:
    """A video frame for a tracker whose input is ``side`` x ``side``: RGB uint8 (H, W, 3) with more pixels than
    that -> (``resize_square(rgb, side)``, its own (W, H)); otherwise (``rgb``, None), as it is (fewer bytes than
    resized; the tracker resizes it itself). The live service and the live client both apply this one rule, so a
    frame the client resized is the frame the service would have made."""
    height, width = rgb.shape[:2]
    if side * side >= width * height:
        return rgb, None
    return resize_square(rgb, side), (width, height)


def to_rgb(img: Image.Image) -> np.ndarray:
    """An opened PIL image to RGB uint8 (H, W, 3), as displayed: EXIF-rotated, alpha over white."""
    if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # exif_transpose's test; it copies when it is 1
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit greyscale: PIL's convert("L") clips at 255; scale the full range instead.
        arr = np.asarray(img, dtype=np.float64)
        scale = 257.0 if arr.max(initial=0) > 255 else 1.0
        grey = np.clip(np.round(arr / scale), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        grey = np.zeros(arr.shape, np.uint8) if hi <= lo else np.round((arr - lo) / (hi - lo) * 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8))


def image_id(rgb: np.ndarray) -> str:
    """Content hash of decoded pixels (shape included): the same picture sent as JPEG bytes or array hits."""
    digest = hashlib.sha256()
    digest.update(repr(rgb.shape).encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()[:32]


def as_rgb_array(image, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Accept what a Python caller may pass: encoded bytes, a PIL image, or an RGB/greyscale numpy array."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image), max_bytes, max_pixels)
    if isinstance(image, Image.Image):
        if image.width * image.height > max_pixels:
            raise PayloadTooLarge(f"the image has {image.width * image.height} pixels; the limit is {max_pixels}")
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise InvalidImage(f"a numpy image must be H x W x 3 (RGB) or H x W, got shape {image.shape}")
        if arr.shape[0] * arr.shape[1] > max_pixels:
            raise PayloadTooLarge(f"the image has {arr.shape[0] * arr.shape[1]} pixels; the limit is {max_pixels}")
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
                raise InvalidImage("a numpy image must hold finite numbers (uint8 0-255 preferred)")
            arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr[:, :, :3])
    raise InvalidImage(f"image must be bytes, a PIL image or a numpy array, not {type(image).__name__}")
