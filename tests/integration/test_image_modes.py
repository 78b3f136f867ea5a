"""Images as users send them, over HTTP: EXIF orientation (masks in the displayed orientation), colour modes."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from sam2_serve.common.masks import decode_png

pytestmark = pytest.mark.integration


def post(http, base_url, data: bytes, **extra):
    body = {"image": {"base64": base64.b64encode(data).decode()}, "regions": [{"point": [0.3, 0.6]}], **extra}
    r = http.post(f"{base_url}/v1/predict", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_matches_the_rotated_picture(base_url, http, groceries_rgb):
    """A camera file tagged 'rotate 90 CW' gives the same masks as the pixels rotated by hand."""
    img = Image.fromarray(groceries_rgb)
    exif = img.getexif()
    exif[0x0112] = 6
    tagged = post(http, base_url, save(img, "PNG", exif=exif))
    upright = post(http, base_url, save(Image.fromarray(np.rot90(groceries_rgb, -1).copy()), "PNG"))
    h, w = groceries_rgb.shape[:2]
    assert (tagged["width"], tagged["height"]) == (h, w)  # displayed portrait
    assert tagged["image_id"] == upright["image_id"]  # identical pixels, so one encoder pass served both
    mask = decode_png(tagged["regions"][0]["mask"]["png"])
    assert mask.shape == (w, h)
    np.testing.assert_array_equal(mask, decode_png(upright["regions"][0]["mask"]["png"]))
    assert 0 < mask.mean() < 1


def test_exif_tagged_jpeg_comes_back_in_display_size(base_url, http, groceries_rgb):
    img = Image.fromarray(groceries_rgb[:200, :300])
    exif = img.getexif()
    exif[0x0112] = 8
    out = post(http, base_url, save(img, "JPEG", exif=exif, quality=90), mask_format="rle")
    assert (out["width"], out["height"]) == (200, 300)
    assert out["regions"][0]["mask"]["rle"]["size"] == [300, 200]


@pytest.mark.parametrize("mode", ["CMYK-JPEG", "I;16-PNG", "RGBA-WEBP", "L-JPEG"])
def test_colour_modes(mode, base_url, http, groceries_rgb):
    small = Image.fromarray(groceries_rgb[100:260, 200:440])
    if mode == "CMYK-JPEG":
        data = save(small.convert("CMYK"), "JPEG")
    elif mode == "I;16-PNG":
        data = save(Image.fromarray((np.asarray(small.convert("L"), np.uint16) * 257)), "PNG")
    elif mode == "RGBA-WEBP":
        data = save(small.convert("RGBA"), "WEBP")
    else:
        data = save(small.convert("L"), "JPEG")
    out = post(http, base_url, data)
    assert (out["width"], out["height"]) == (240, 160)
    mask = decode_png(out["regions"][0]["mask"]["png"])
    assert mask.shape == (160, 240) and 0 < mask.mean() < 1
