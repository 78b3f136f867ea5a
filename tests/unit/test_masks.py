from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from common.masks import decode_png, decode_rle, encode_mask, encode_png, encode_rle, mask_box


def test_png_round_trip_and_values():
    m = np.zeros((30, 50), bool)
    m[5:10, 20:45] = True
    out = decode_png(encode_png(m))
    np.testing.assert_array_equal(out, m)


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
