from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from sam2_serve.common.masks import decode_png, decode_rle, encode_mask, encode_png, encode_rle, mask_box
from sam2_serve.common.types import BitMask


def test_png_round_trip_and_values():
    m = np.zeros((30, 50), bool)
    m[5:10, 20:45] = True
    out = decode_png(encode_png(m))
    np.testing.assert_array_equal(out, m)
    Image.open(io.BytesIO(base64.b64decode(encode_png(m)))).verify()  # chunk CRCs, structure
    img = Image.open(io.BytesIO(base64.b64decode(encode_png(m))))
    assert img.mode == "L" and img.size == (50, 30)
    assert set(np.unique(np.asarray(img))) == {0, 255}


def _masks():
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (7, 13), (30, 50), (17, 64), (5, 9)]:
        yield rng.random((h, w)) > 0.5
        blob = np.zeros((h, w), bool)
        blob[h // 3:h // 3 + 1 + h // 3, w // 2:] = True
        yield blob
        yield np.zeros((h, w), bool)
        yield np.ones((h, w), bool)


@pytest.mark.parametrize("m", list(_masks()), ids=lambda m: f"{m.shape[0]}x{m.shape[1]}-{int(m.sum())}")
def test_packed_masks_encode_like_boolean_ones(m):
    bits = BitMask.pack(m)
    assert bits.shape == m.shape and bits.bits.nbytes == m.shape[0] * -(-m.shape[1] // 8)
    np.testing.assert_array_equal(bits.unpack(), m)
    assert bits.unpack().dtype == bool
    assert encode_png(bits) == encode_png(m)
    np.testing.assert_array_equal(decode_png(encode_png(bits)), m)
    assert encode_rle(bits) == encode_rle(m)
    assert mask_box(bits) == mask_box(m)


def test_rle_is_coco_compressed():
    m = np.zeros((30, 50), bool)
    m[3:17, 2:9] = True
    rle = encode_rle(m)
    assert rle["size"] == [30, 50] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_rle(rle), m)
    assert mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}) == m.sum()


def test_encode_mask_dispatch():
    m = np.ones((2, 3), bool)
    assert set(encode_mask(m, "png")) == {"png"}
    assert set(encode_mask(m, "rle")) == {"rle"}


def test_box_is_normalized_xyxy_with_far_edges():
    m = np.zeros((10, 20), bool)
    m[2:5, 4:8] = True
    assert mask_box(m) == (4 / 20, 2 / 10, 8 / 20, 5 / 10)
    assert mask_box(np.ones((3, 3), bool)) == (0, 0, 1, 1)
    assert mask_box(np.zeros((3, 3), bool)) is None
