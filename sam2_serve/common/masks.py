"""Mask encodings for responses: 8-bit PNG (0/255) and COCO compressed RLE (pycocotools)."""

from __future__ import annotations

import base64
import io
from typing import Optional

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from sam2_serve.common.png import png_bytes as encode_pixels
from sam2_serve.common.types import BitMask


def png_bytes(mask: np.ndarray | BitMask) -> bytes:
    """Boolean (H, W) mask -> an 8-bit greyscale PNG file, 255 inside, 0 outside, W x H pixels.

    Unfiltered rows (``sam2_serve.common.png``): Pillow would filter every row adaptively, two thirds of its time on
    a mask, while 0/255 rows compress as well unfiltered, and ISA-L's deflate is 5-10x faster than zlib's fastest
    level on masks. On a speckled 1800x1200 mask: 19 ms with Pillow, 7 ms unfiltered with zlib, 2 ms with ISA-L.
    """
    inside = mask.unpack() if isinstance(mask, BitMask) else np.asarray(mask, dtype=bool)
    return encode_pixels(inside.view(np.uint8) * np.uint8(255), "none")


def encode_png(mask: np.ndarray | BitMask) -> str:
    """Boolean (H, W) mask -> base64 of ``png_bytes``."""
    return base64.b64encode(png_bytes(mask)).decode("ascii")


def decode_png(data: str) -> np.ndarray:
    """Inverse of ``encode_png`` (also reads any greyscale/RGB PNG: non-zero is inside)."""
    img = Image.open(io.BytesIO(base64.b64decode(data)))
    return np.asarray(img.convert("L")) > 127


def encode_rle(mask: np.ndarray | BitMask) -> dict:
    """Boolean (H, W) mask -> ``{"size": [H, W], "counts": str}`` (COCO compressed RLE, column-major)."""
    if isinstance(mask, BitMask):
        mask = mask.unpack()
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    counts = rle["counts"]
    return mask_utils.decode({"size": rle["size"], "counts": counts.encode() if isinstance(counts, str) else counts}) > 0


def encode_mask(mask: np.ndarray | BitMask, fmt: str) -> dict:
    """``{"png": ...}`` or ``{"rle": ...}`` for ``fmt`` in ``png`` | ``rle``."""
    if fmt == "rle":
        return {"rle": encode_rle(mask)}
    return {"png": encode_png(mask)}


def mask_box(mask: np.ndarray | BitMask) -> Optional[tuple[float, float, float, float]]:
    """Normalized bounds (xmin, ymin, xmax, ymax) of the True pixels, as fractions of W and H; None if empty.

    ``xmax``/``ymax`` are the far edges of the last pixels ((col + 1) / W), so a full mask is (0, 0, 1, 1).
    """
    h, w = mask.shape
    if isinstance(mask, BitMask):
        rows = np.flatnonzero(mask.bits.any(axis=1))
        if rows.size == 0:
            return None
        # OR of the occupied rows, 8 columns a byte, then the columns of the set bits
        cols = np.flatnonzero(np.unpackbits(np.bitwise_or.reduce(mask.bits[rows[0]:rows[-1] + 1], axis=0),
                                            count=w))
    else:
        cols = np.flatnonzero(mask.any(axis=0))
        if cols.size == 0:
            return None
        rows = np.flatnonzero(mask.any(axis=1))
    return (cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h)
