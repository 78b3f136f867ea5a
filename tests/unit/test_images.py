"""Image decoding: formats, colour modes, EXIF orientation, and every way the bytes can be wrong."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from sam2_serve.common.errors import InvalidImage, PayloadTooLarge
from sam2_serve.common.images import as_rgb_array, b64decode, decode_image, image_id


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """A 40x64 test card: distinct colours per quadrant so rotations are detectable."""
    arr = np.zeros((40, 64, 3), np.uint8)
    arr[:20, :32] = (255, 0, 0)
    arr[:20, 32:] = (0, 255, 0)
    arr[20:, :32] = (0, 0, 255)
    arr[20:, 32:] = (255, 255, 0)
    return arr


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "TIFF"])
def test_lossless_formats_round_trip(rgb, fmt):
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(encode(Image.fromarray(rgb), fmt, **kw))
    assert out.dtype == np.uint8 and out.shape == (40, 64, 3)
    np.testing.assert_array_equal(out, rgb)


def test_jpeg(rgb):
    out = decode_image(encode(Image.fromarray(rgb), "JPEG", quality=95))
    assert out.shape == (40, 64, 3)
    assert np.abs(out.astype(int) - rgb).mean() < 8


def test_grayscale_becomes_three_equal_channels():
    grey = np.arange(40 * 64, dtype=np.uint8).reshape(40, 64)
    out = decode_image(encode(Image.fromarray(grey, "L"), "PNG"))
    assert out.shape == (40, 64, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)


def test_16_bit_grayscale_is_scaled_not_clipped():
    grey16 = (np.arange(40 * 64, dtype=np.uint32).reshape(40, 64) * 25).astype(np.uint16)
    out = decode_image(encode(Image.fromarray(grey16), "PNG"))
    expected = np.round(grey16 / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    assert out.max() > 200  # a clipping conversion would saturate everything at 255 or keep only low bits


def test_rgba_is_composited_on_white(rgb):
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:, :10, 3] = 0  # fully transparent strip
    out = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (out[:, :10] == 255).all()
    np.testing.assert_array_equal(out[:, 10:], rgb[:, 10:])


def test_cmyk_jpeg(rgb):
    data = encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    out = decode_image(data)
    assert out.shape == (40, 64, 3)
    assert np.abs(out.astype(int) - rgb).mean() < 12


def test_palette_with_transparency():
    img = Image.new("P", (8, 6), 0)
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.info["transparency"] = 0
    out = decode_image(encode(img, "PNG", transparency=0))
    assert (out == 255).all()  # transparent red shows the white background


@pytest.mark.parametrize("orientation,transform", [
    (3, lambda a: np.rot90(a, 2)),
    (6, lambda a: np.rot90(a, -1)),   # camera rotated: display turns 90 degrees clockwise
    (8, lambda a: np.rot90(a, 1)),
    (2, lambda a: a[:, ::-1]),
])
def test_exif_orientation_is_applied_as_browsers_do(rgb, orientation, transform):
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = orientation
    out = decode_image(encode(img, "PNG", exif=exif))
    np.testing.assert_array_equal(out, transform(rgb))


@pytest.mark.parametrize("data,message", [
    (b"", "empty"),
    (b"this is plainly not an image", "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not an image"),
])
def test_bad_bytes(data, message):
    with pytest.raises(InvalidImage, match=message):
        decode_image(data)


def test_truncated_file(rgb):
    data = encode(Image.fromarray(np.tile(rgb, (8, 8, 1))), "PNG")
    with pytest.raises(InvalidImage, match="complete"):
        decode_image(data[: len(data) // 2])


def test_pixel_cap_is_checked_before_decoding():
    # 20000 x 20000 declared; the compressed file is small (a decompression bomb).
    data = encode(Image.new("L", (20000, 20000)), "PNG")
    assert len(data) < 2_000_000
    with pytest.raises(PayloadTooLarge, match="pixels"):
        decode_image(data, max_pixels=10_000_000)


def test_byte_cap(rgb):
    data = encode(Image.fromarray(rgb), "PNG")
    with pytest.raises(PayloadTooLarge, match="bytes"):
        decode_image(data, max_bytes=len(data) - 1)


def test_base64_strict_and_data_url(rgb):
    data = encode(Image.fromarray(rgb), "PNG")
    assert b64decode(base64.b64encode(data).decode()) == data
    assert b64decode("data:image/png;base64," + base64.b64encode(data).decode()) == data
    assert b64decode(base64.urlsafe_b64encode(data).decode().rstrip("=")) == data
    with pytest.raises(InvalidImage, match="base64"):
        b64decode("not*base64!")


def test_handle_inputs_give_the_same_pixels_and_id(rgb):
    png = encode(Image.fromarray(rgb), "PNG")
    from_bytes = as_rgb_array(png)
    from_pil = as_rgb_array(Image.fromarray(rgb))
    from_array = as_rgb_array(rgb)
    np.testing.assert_array_equal(from_bytes, rgb)
    assert image_id(from_bytes) == image_id(from_pil) == image_id(from_array)
    assert image_id(rgb) != image_id(rgb[:, ::-1])


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 5), np.uint8), np.zeros((0, 4, 3), np.uint8), "a string",
                                 np.full((4, 4, 3), np.nan)])
def test_handle_rejects_bad_arrays(bad):
    with pytest.raises(InvalidImage):
        as_rgb_array(bad)
