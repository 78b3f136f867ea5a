"""sam2_serve.models.amg without Ray: the split pipeline against upstream ``SAM2AutomaticMaskGenerator`` and its pieces.

``sam2_serve.testing.upstream_masks`` (memoised per session) is also what the integration tests compare the service
with, so one upstream run serves both when they run together.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sam2_serve.common.masks import decode_png, decode_rle
from sam2_serve.common.wire import segment_region_json
from sam2_serve.models import amg
from sam2_serve.testing import KEEP_ALL, assert_same_masks, upstream_masks

@pytest.fixture(scope="session")
def image_model(tiny_checkpoint):
    """The service's image model, encoding through OpenVINO as ImageEncoder does on the CPU."""
    from sam2_serve.models.fast_encoder import load_fast_encoder
    from sam2_serve.models.image import ImageModel
    from sam2_serve.models.loader import load_model

    loaded = load_model("sam2.1-hiera-tiny", tiny_checkpoint, device="cpu")
    encoder = load_fast_encoder(loaded, "openvino")
    assert encoder.backend == "openvino", encoder.reason
    return ImageModel(loaded, encoder)


@pytest.fixture(scope="session")
def groceries_embedding(image_model, groceries_rgb):
    (emb,) = image_model.encode([groceries_rgb], ["groceries"])
    return emb


# ---- planning ---------------------------------------------------------------------------------------------------

def test_plan_is_upstreams_crops_grids_and_batches():
    from sam2.utils.amg import batch_iterator, build_all_layer_point_grids, generate_crop_boxes

    p = amg.AmgParams(points_per_side=12, crop_n_layers=2, crop_n_points_downscale_factor=2, points_per_batch=7)
    hw = (534, 800)
    plans = amg.plan_crops(hw, p)
    boxes, layers = generate_crop_boxes(hw, 2, p.crop_overlap_ratio)
    grids = build_all_layer_point_grids(12, 2, 2)
    assert [list(c.box) for c in plans] == boxes and [c.layer for c in plans] == layers
    assert len(plans) == 1 + 4 + 16
    for c in plans:
        h, w = c.hw
        np.testing.assert_array_equal(c.points, grids[c.layer] * np.array([w, h])[None])
        expected = [b for (b,) in batch_iterator(7, c.points)]
        assert [b.shape for b in c.batches(7)] == [b.shape for b in expected]
        assert all(np.array_equal(a, b) for a, b in zip(c.batches(7), expected))
    assert p.points_per_layer() == [12, 6, 3]
    assert p.total_points() == sum(len(c.points) for c in plans) == 144 + 4 * 36 + 16 * 9


# ---- the Ray-free pipeline against upstream -----------------------------------------------------------------------

def test_generate_equals_upstream_one_mask_per_point(image_model, groceries_rgb, groceries_path, tiny_checkpoint):
    params = amg.AmgParams(points_per_side=8, **KEEP_ALL)
    ours = amg.generate(image_model, groceries_rgb, params)
    ref = upstream_masks(str(tiny_checkpoint), str(groceries_path), params)
    assert_same_masks([(m.mask, m.score, m.stability_score) for m in ours.masks], ref, expected_count=64)
    # Our decoder's logits differ from sam2's by < 1e-6 (sam2_serve/models/mask_decoder.py), which may flip a pixel whose logit
    # sits on the threshold: areas within a few pixels, boxes within one.
    for m, r in zip(ours.masks, ref):
        assert m.area == pytest.approx(r["area"], rel=1e-4, abs=2)
        x0, y0, x1, y1 = m.bbox
        assert np.abs(np.subtract([x0, y0, x1 - x0, y1 - y0], r["bbox"])).max() <= 1  # upstream's XYWH, inclusive
        assert list(m.point) == pytest.approx(r["point_coords"][0])
    assert ours.stats == {"crops": 1, "batches": 1, "candidates": 64, "upsampled": 64, "survivors": 64,
                          "stopped": 0}


@pytest.mark.parametrize("multimask_output", [False, True])
def test_iou_threshold_equals_upstream_and_stops_hopeless_prompts(image_model, groceries_rgb, groceries_path,
                                                                  tiny_checkpoint, multimask_output):
    """With pred_iou_thresh between the grid's predicted IoUs, prompts that cannot pass it stop after the decoder's
    transformer (sam2_serve.models.mask_decoder), and the output is still upstream's."""
    base = dict(points_per_side=8, multimask_output=multimask_output, stability_score_thresh=0.0, box_nms_thresh=1.0)
    everything = amg.generate(image_model, groceries_rgb, amg.AmgParams(**base, pred_iou_thresh=0.0))
    scores = sorted(m.score for m in everything.masks)
    thresh = scores[len(scores) * 3 // 4]  # a quarter of the masks above it
    params = amg.AmgParams(**base, pred_iou_thresh=thresh)
    ours = amg.generate(image_model, groceries_rgb, params)
    ref = upstream_masks(str(tiny_checkpoint), str(groceries_path), params)
    assert 0 < len(ref) < len(everything.masks)
    assert_same_masks([(m.mask, m.score, m.stability_score) for m in ours.masks], ref, expected_count=len(ref))
    assert ours.stats["stopped"] > 0 and ours.stats["upsampled"] == len(ours.masks)


def test_iou_filter_runs_before_upsampling(image_model, groceries_embedding, groceries_rgb):
    """Survivors of the predicted-IoU filter are exactly the unfiltered masks above it; the rest never upsampled."""
    hw = groceries_rgb.shape[:2]
    points = amg.plan_crops(hw, amg.AmgParams(points_per_side=6))[0].points
    box = (0, 0, hw[1], hw[0])
    everything = amg.decode_batch(image_model, groceries_embedding, points, box, hw, amg.AmgParams(**KEEP_ALL))
    thresh = float(np.median(everything.iou_preds))
    filtered = amg.decode_batch(image_model, groceries_embedding, points, box, hw,
                                amg.AmgParams(**{**KEEP_ALL, "pred_iou_thresh": thresh}))
    above = everything.iou_preds > thresh
    assert 0 < above.sum() < len(points)
    assert filtered.candidates == len(points) and filtered.upsampled == int(above.sum()) == len(filtered)
    # The prompts under the threshold stopped after the transformer; the rest were decoded as a smaller batch, whose
    # arithmetic may round differently in the last bit.
    assert filtered.stopped > 0
    np.testing.assert_allclose(filtered.iou_preds, everything.iou_preds[above], atol=1e-6)
    assert np.abs(filtered.boxes - everything.boxes[above]).max() <= 1
    from pycocotools import mask as mask_utils

    ious = mask_utils.iou(filtered.rles, [r for r, keep in zip(everything.rles, above) if keep], [0] * len(filtered))
    assert np.diag(ious).min() > 0.999

    # The stability filter keeps exactly the masks at least that stable.
    s_thresh = float(np.median(everything.stability))
    stable = amg.decode_batch(image_model, groceries_embedding, points, box, hw,
                              amg.AmgParams(**{**KEEP_ALL, "stability_score_thresh": s_thresh}))
    np.testing.assert_array_equal(stable.stability, everything.stability[everything.stability >= s_thresh])


def test_upsampling_budget_does_not_change_the_result(image_model, groceries_embedding, groceries_rgb):
    hw = groceries_rgb.shape[:2]
    points = amg.plan_crops(hw, amg.AmgParams(points_per_side=3))[0].points
    args = (image_model, groceries_embedding, points, (0, 0, hw[1], hw[0]), hw, amg.AmgParams(**KEEP_ALL))
    one_at_a_time = amg.decode_batch(*args, upsample_bytes=1)
    all_at_once = amg.decode_batch(*args, upsample_bytes=1 << 34)
    assert one_at_a_time.rles == all_at_once.rles and len(all_at_once) == 9
    np.testing.assert_array_equal(one_at_a_time.stability, all_at_once.stability)


def test_crop_edge_filter_and_uncropping(image_model, groceries_embedding, groceries_rgb):
    """A crop's masks come back padded into the original frame; masks at an inner crop edge are dropped.

    The groceries embedding stands in for a crop at the top-left of a larger original. (Random-weight masks are
    scattered over the whole crop, so their boxes always reach every crop edge.)
    """
    h, w = groceries_rgb.shape[:2]
    points = amg.plan_crops((h, w), amg.AmgParams(points_per_side=3))[0].points
    params = amg.AmgParams(**KEEP_ALL)
    alone = amg.decode_batch(image_model, groceries_embedding, points, (0, 0, w, h), (h, w), params)
    # 10 px of margin: the crop's edges are within upstream's 20 px of the image's, so nothing is dropped.
    padded = amg.decode_batch(image_model, groceries_embedding, points, (0, 0, w, h), (h + 10, w + 10), params)
    assert len(alone) == len(padded) == 9
    np.testing.assert_array_equal(padded.boxes, alone.boxes)
    for small, big in zip(alone.rles, padded.rles):
        mask = decode_rle(big)
        assert mask.shape == (h + 10, w + 10) and not mask[h:].any() and not mask[:, w:].any()
        np.testing.assert_array_equal(mask[:h, :w], decode_rle(small))
    # 100 px: the crop's right and bottom edges are inner edges, and every mask touches them.
    inner = amg.decode_batch(image_model, groceries_embedding, points, (0, 0, w, h), (h + 100, w + 100), params)
    assert all(b[2] >= w - 21 or b[3] >= h - 21 for b in alone.boxes)
    assert len(inner) == 0 and inner.candidates == inner.upsampled == 9
    assert inner.boxes.shape == (0, 4) and inner.points.shape == (0, 2)


# ---- merging --------------------------------------------------------------------------------------------------------

def _batch(boxes, scores, hw=(10, 10)):
    from pycocotools import mask as mask_utils

    masks = []
    for x0, y0, x1, y1 in boxes:
        m = np.zeros(hw, np.uint8)
        m[y0 : y1 + 1, x0 : x1 + 1] = 1
        masks.append(mask_utils.encode(np.asfortranarray(m)))
    boxes = np.array(boxes, np.int64).reshape(-1, 4)
    return amg.BatchMasks(iou_preds=np.array(scores, np.float32), stability=np.ones(len(scores), np.float32),
                          boxes=boxes, points=(boxes[:, :2] + 0.5).astype(np.float32), rles=masks,
                          areas=(boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1))


def test_merge_nms_within_crop_and_sort():
    crop = amg.CropPlan(0, (0, 0, 10, 10), 0, np.zeros((0, 2)))
    params = amg.AmgParams(box_nms_thresh=0.7)
    a = _batch([[0, 0, 4, 4], [5, 5, 9, 9]], [0.5, 0.9])
    b = _batch([[0, 0, 4, 5], [0, 0, 1, 1]], [0.6, 0.1])  # first overlaps a[0] (IoU 0.83) and wins on score
    masks = amg.merge([crop], [[a, b]], params)
    assert [m.score for m in masks] == pytest.approx([0.9, 0.6, 0.1])
    assert [m.bbox for m in masks] == [(5, 5, 9, 9), (0, 0, 4, 5), (0, 0, 1, 1)]
    assert masks[1].area == 30 and masks[1].mask.sum() == 30
    assert amg.merge([crop], [[a, b]], amg.AmgParams(box_nms_thresh=1.0))[2].score == pytest.approx(0.5)
    assert amg.merge([crop], [[]], params) == []


def test_merge_prefers_smaller_crops_and_uncrops():
    whole = amg.CropPlan(0, (0, 0, 20, 20), 0, np.zeros((0, 2)))
    small = amg.CropPlan(1, (10, 10, 20, 20), 1, np.zeros((0, 2)))
    big_score = _batch([[10, 10, 19, 19]], [0.99], hw=(20, 20))
    in_crop = _batch([[0, 0, 9, 9]], [0.5], hw=(20, 20))  # the same box in crop coordinates
    masks = amg.merge([whole, small], [[big_score], [in_crop]], amg.AmgParams(crop_nms_thresh=0.7))
    assert len(masks) == 1 and masks[0].crop_box == (10, 10, 20, 20) and masks[0].bbox == (10, 10, 19, 19)
    assert masks[0].point == pytest.approx((10.5, 10.5))


# ---- response rendering -----------------------------------------------------------------------------------------------

def test_region_json_formats_agree():
    m = amg.merge([amg.CropPlan(0, (0, 0, 10, 10), 0, np.zeros((0, 2)))],
                  [[_batch([[2, 3, 5, 6]], [0.7], hw=(8, 10))]], amg.AmgParams())[0]
    rle = segment_region_json(m, 10, 8, "rle")
    png = segment_region_json(m, 10, 8, "png")
    np.testing.assert_array_equal(decode_rle(rle["mask"]["rle"]), decode_png(png["mask"]["png"]))
    assert rle["box"] == pytest.approx([0.2, 3 / 8, 0.6, 7 / 8])  # far edges: (last pixel + 1) / size
    assert rle["point"] == pytest.approx([2.5 / 10, 3.5 / 8])
    assert rle["concepts"] == [{"name": "1", "value": rle["score"]}] and rle["area"] == 16
    empty = amg.AutoMask(rle=m.rle, score=0.1, stability_score=math.nan, area=0, bbox=None, point=(0, 0),
                         crop_box=(0, 0, 10, 8))
    assert segment_region_json(empty, 10, 8, "rle")["stability_score"] == 0.0
    assert segment_region_json(empty, 10, 8, "rle")["box"] is None


def test_rle_is_pycocotools_column_major():
    masks = torch.zeros(2, 5, 7, dtype=torch.bool)
    masks[0, 1:3, 2:6] = True
    masks[1, 4, 0] = True
    rles = amg.encode_rles(masks)
    for rle, mask in zip(rles, masks):
        np.testing.assert_array_equal(decode_rle(rle), mask.numpy())
    assert amg.encode_rles(masks[:0]) == []


# ---- request validation -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,expected", [
    ("points_per_side", 0, "points_per_side: must be an integer in [1, 1 024], got 0"),
    ("points_per_side", 10_000, "[1, 1 024]"),
    ("points_per_batch", 0, "points_per_batch"),
    ("pred_iou_thresh", 1.5, "pred_iou_thresh: must be a number in [0, 1], got 1.5"),
    ("stability_score_thresh", -0.1, "[0, 1]"),
    ("box_nms_thresh", 2, "box_nms_thresh"),
    ("crop_nms_thresh", -1, "crop_nms_thresh"),
    ("crop_overlap_ratio", 1.0, "crop_overlap_ratio: must be a number in [0, 1)"),
    ("crop_n_layers", -1, "crop_n_layers"),
    ("crop_n_points_downscale_factor", 0, "crop_n_points_downscale_factor"),
    ("min_mask_region_area", -5, "min_mask_region_area: must be an integer in [0,"),
    ("stability_score_offset", -1, "stability_score_offset"),
    ("multimask_output", "maybe", "multimask_output"),
])
def test_options_name_the_field_and_range(field, value, expected):
    from sam2_serve.common.errors import InvalidRequest
    from sam2_serve.common.schemas import SegmentAnythingOptions
    from sam2_serve.common.schemas import parse

    with pytest.raises(InvalidRequest) as err:
        parse(SegmentAnythingOptions, {field: value})
    assert expected in err.value.message


def test_options_defaults_are_sam2s_with_single_mask():
    from sam2_serve.common.schemas import SegmentAnythingOptions

    o = SegmentAnythingOptions()
    params = amg.AmgParams(**o.model_dump(include=set(amg.AmgParams.__dataclass_fields__)))
    assert params == amg.AmgParams()
    assert (params.points_per_side, params.pred_iou_thresh, params.stability_score_thresh, params.box_nms_thresh,
            params.multimask_output) == (32, 0.8, 0.95, 0.7, False)
