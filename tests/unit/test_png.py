"""sam2_serve/common/png.py (frames the client pushes, masks in answers), the client's ``encode_frame``, and masks
packed for the trip between replicas (``TrackedObject``)."""

from __future__ import annotations

import io
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sam2_serve.client.live import encode_frame
from sam2_serve.common.images import decode_image
from sam2_serve.common.png import png_bytes
from sam2_serve.common.types import TrackedObject


def _row_filters(data: bytes, row_bytes: int) -> set[int]:
    """The filter type of every scanline of a PNG file with one IDAT chunk."""
    pos, idat = 8, b""
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        idat += data[pos + 8:pos + 8 + n] if kind == b"IDAT" else b""
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(-1, row_bytes + 1)
    return set(raw[:, 0].tolist())


@pytest.mark.parametrize("row_filter,code", [("up", 2), ("none", 0)])
@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 13, 3), (540, 960, 3), (1, 1), (31, 17)])
def test_any_reader_gets_the_pixels_back(shape, row_filter, code):
    rng = np.random.default_rng(sum(shape))
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    pixels[: shape[0] // 2] //= 7  # runs and gradients as well as noise
    data = png_bytes(pixels, row_filter)
    img = Image.open(io.BytesIO(data))
    assert img.mode == ("RGB" if len(shape) == 3 else "L") and img.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(img), pixels)
    assert _row_filters(data, int(np.prod(shape[1:]))) == {code}


def test_a_video_frame_is_smaller_than_pillows(bedroom_path):
    from sam2_serve.testing import decode_frames

    (frame,) = decode_frames(bedroom_path, 1)
    ours, pillows = png_bytes(frame, "up"), io.BytesIO()
    Image.fromarray(frame).save(pillows, format="PNG", compress_level=1)
    assert np.array_equal(decode_image(ours), frame)
    assert len(ours) < len(pillows.getvalue())


@pytest.mark.parametrize("pixels", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 4), np.uint8),
                                    np.zeros(16, np.uint8)])
def test_other_pixels_are_refused(pixels):
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(pixels)


def test_the_client_sends_lossless_frames_and_other_modes_as_pillow_writes_them():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    for image in (rgb, Image.fromarray(rgb)):
        data = encode_frame(image, "png")
        assert np.array_equal(decode_image(data), rgb)
        assert _row_filters(data, 40 * 3) == {2}
    grey = Image.fromarray(rgb[:, :, 0])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_frame(grey)))), rgb[:, :, 0])
    rgba = Image.fromarray(np.dstack([rgb, np.full((30, 40), 128, np.uint8)]))
    assert Image.open(io.BytesIO(encode_frame(rgba))).mode == "RGBA"  # the service composites it on white
    jpeg = encode_frame(rgb, "jpeg")
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG" and decode_image(jpeg).shape == rgb.shape
    assert encode_frame(b"encoded bytes") == b"encoded bytes"


def test_tracked_masks_travel_packed():
    mask = np.zeros((540, 960), bool)
    mask[100:300, 201:655] = True
    mask[::7, ::3] ^= True
    obj = TrackedObject("a", mask, 1.5, (0.1, 0.2, 0.7, 0.6), np.ones((64, 64), np.float32))
    wire = pickle.dumps(obj, protocol=5)
    assert len(wire) < mask.size // 8 + 64 * 64 * 4 + 1000  # 8 pixels a byte, the logits as they are
    back = pickle.loads(wire)
    assert back.mask.dtype == bool and np.array_equal(back.mask, mask)
    assert (back.track_id, back.score, back.box) == ("a", 1.5, (0.1, 0.2, 0.7, 0.6))
    assert np.array_equal(back.logits, obj.logits)
