"""segment_anything through the real application (Ray Serve, HTTP on 127.0.0.1) against upstream.

The reference is ``SAM2AutomaticMaskGenerator`` on the same test-written checkpoint (memoised with the unit tests:
``tests.unit.test_amg.upstream_masks``). Random weights keep no mask at SAM 2's default thresholds and NMS
collapses the rest, so the equivalence cases open the filters (``KEEP_ALL``) and add NMS, crops and multimask
one at a time. Grids are small (8 per side) to keep CI fast.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from sam2_serve.common.masks import decode_png, decode_rle
from sam2_serve.models import amg
from tests.integration.conftest import assert_healthy
from sam2_serve.testing import KEEP_ALL, assert_same_masks, upstream_masks

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def groceries_b64(groceries_path) -> str:
    return base64.b64encode(groceries_path.read_bytes()).decode("ascii")


def _post(http, base_url, body: dict):
    return http.post(f"{base_url}/v1/segment_anything", json=body, timeout=600)


def _region_masks(regions: list[dict]) -> list[tuple[np.ndarray, float, float]]:
    out = []
    for r in regions:
        m = r["mask"]
        mask = decode_rle(m["rle"]) if "rle" in m else decode_png(m["png"])
        out.append((mask, r["score"], r["stability_score"]))
    return out


def _reference(tiny_checkpoint, groceries_path, **params):
    return upstream_masks(str(tiny_checkpoint), str(groceries_path), amg.AmgParams(**params))


def test_http_equals_upstream_one_mask_per_grid_point(base_url, http, groceries_b64, groceries_rgb, groceries_path,
                                                      tiny_checkpoint):
    params = dict(points_per_side=8, **KEEP_ALL)
    r = _post(http, base_url, {"image": {"base64": groceries_b64}, "mask_format": "rle", **params})
    assert r.status_code == 200, r.text
    body = r.json()
    h, w = groceries_rgb.shape[:2]
    assert (body["width"], body["height"]) == (w, h) and len(body["image_id"]) == 32
    ref = _reference(tiny_checkpoint, groceries_path, **params)
    assert_same_masks(_region_masks(body["regions"]), ref, expected_count=8 * 8)

    for region, rec in zip(body["regions"], ref):
        assert set(region) == {"mask", "score", "stability_score", "area", "box", "point", "concepts"}
        assert region["concepts"] == [{"name": "1", "value": region["score"]}]
        assert region["area"] == pytest.approx(rec["area"], rel=1e-4, abs=2)  # logits within 1e-6: sam2_serve.models.amg
        x, y, bw, bh = rec["bbox"]  # upstream: XYWH of inclusive pixel bounds
        assert region["box"] == pytest.approx([x / w, y / h, (x + bw + 1) / w, (y + bh + 1) / h])
        (px, py), = rec["point_coords"]
        assert region["point"] == pytest.approx([px / w, py / h])

    # PNG masks (the default format) are the same masks, and the cached embedding answers by image_id.
    again = _post(http, base_url, {"image": {"image_id": body["image_id"]}, **params})
    assert again.status_code == 200, again.text
    assert [m.sum() for m, _, _ in _region_masks(again.json()["regions"])] == [g["area"] for g in body["regions"]]


def test_handle_with_nms_equals_upstream(handle, groceries_path, tiny_checkpoint):
    params = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)  # box_nms_thresh 0.7
    result = handle.segment_anything.remote(image=groceries_path.read_bytes(), **params).result(timeout_s=600)
    assert isinstance(result, amg.AmgResult)
    ref = _reference(tiny_checkpoint, groceries_path, **params)
    assert 1 <= len(result.masks) < 64  # NMS removed duplicates
    assert_same_masks([(m.mask, m.score, m.stability_score) for m in result.masks], ref)
    assert result.stats["candidates"] == 64


def test_multipart_multimask_equals_upstream(base_url, http, groceries_path, tiny_checkpoint):
    params = dict(points_per_side=8, multimask_output=True, **KEEP_ALL)
    r = http.post(f"{base_url}/v1/segment_anything", timeout=600,
                  files={"image": ("groceries.jpg", groceries_path.read_bytes(), "image/jpeg")},
                  data={"options": json.dumps({**params, "mask_format": "rle"})})
    assert r.status_code == 200, r.text
    ref = _reference(tiny_checkpoint, groceries_path, **params)
    assert_same_masks(_region_masks(r.json()["regions"]), ref, expected_count=3 * 8 * 8)


def test_crops_equal_upstream_and_are_batched_through_the_encoder(handle, deployment_handle, groceries_path,
                                                                   tiny_checkpoint):
    params = dict(points_per_side=4, crop_n_layers=1, crop_nms_thresh=1.0, **KEEP_ALL)
    encoder = deployment_handle("ImageEncoder")
    before = encoder.stats.remote().result()
    result = handle.segment_anything.remote(image=groceries_path.read_bytes(), **params).result(timeout_s=600)
    after = encoder.stats.remote().result()
    ref = _reference(tiny_checkpoint, groceries_path, **params)
    assert_same_masks([(m.mask, m.score, m.stability_score) for m in result.masks], ref)
    # Every crop was decoded (random-weight masks span each crop, so the crop-edge filter then drops them all,
    # upstream and here alike).
    assert result.stats["crops"] == 5 and result.stats["candidates"] == 5 * 16
    # The 4 crops are new images to the encoder (the whole image may be cached), sent together: fewer passes.
    assert after["images_encoded"] - before["images_encoded"] in (4, 5)
    assert after["batches"] - before["batches"] < after["images_encoded"] - before["images_encoded"]


def test_encoder_runs_once_per_image_across_predict_and_segment_anything(handle, deployment_handle, groceries_rgb):
    image = np.ascontiguousarray(groceries_rgb[::-1])  # new pixels: not cached by another test
    encoder = deployment_handle("ImageEncoder")
    before = encoder.stats.remote().result()["images_encoded"]
    click = {"points": [[0.5, 0.5]], "labels": [1]}
    first = handle.predict.remote(image=image, dict_inputs=click).result(timeout_s=600)
    auto = handle.segment_anything.remote(image=image, points_per_side=2, **KEEP_ALL).result(timeout_s=600)
    handle.predict.remote(image=image, dict_inputs=click).result(timeout_s=600)
    by_id = handle.segment_anything.remote(image_id=auto.image_id, points_per_side=2, **KEEP_ALL).result(timeout_s=600)
    assert auto.image_id == first.image_id == by_id.image_id
    assert len(auto.masks) == len(by_id.masks) == 4
    assert encoder.stats.remote().result()["images_encoded"] - before == 1


@pytest.mark.parametrize("field,value,expected", [
    ("points_per_side", 0, "points_per_side: must be an integer in [1, 1 024], got 0"),
    ("points_per_side", 10_000, "points_per_side: must be an integer in [1, 1 024], got 10000"),
    ("pred_iou_thresh", 1.5, "pred_iou_thresh: must be a number in [0, 1], got 1.5"),
    ("stability_score_thresh", -0.5, "stability_score_thresh: must be a number in [0, 1]"),
    ("box_nms_thresh", 7, "box_nms_thresh: must be a number in [0, 1]"),
    ("min_mask_region_area", -10, "min_mask_region_area: must be an integer in [0, "),
    ("crop_overlap_ratio", 1.5, "crop_overlap_ratio: must be a number in [0, 1)"),
    ("crop_n_layers", 9, "crop_n_layers: must be an integer in [0, 4]"),
    ("points_per_batch", -1, "points_per_batch: must be an integer in [1, 1 024]"),
    ("mask_format", "gif", "mask_format"),
    ("multimask_output", "perhaps", "multimask_output"),
    ("points_per_sides", 8, "points_per_sides: Extra inputs are not permitted"),
])
def test_bad_parameters_are_400_naming_the_parameter(base_url, http, deployment_handle, groceries_b64, field, value,
                                                     expected):
    encoder = deployment_handle("ImageEncoder")
    before = encoder.stats.remote().result()["images_encoded"]
    r = _post(http, base_url, {"image": {"base64": groceries_b64}, field: value})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert expected in r.json()["error"]["message"]
    assert encoder.stats.remote().result()["images_encoded"] == before  # rejected before any model work
    assert_healthy(base_url)


def test_other_bad_requests(base_url, http, groceries_b64):
    empty_grid = _post(http, base_url, {"image": {"base64": groceries_b64}, "points_per_side": 4, "crop_n_layers": 2,
                                        "crop_n_points_downscale_factor": 4})
    assert empty_grid.status_code == 400 and "crop_n_points_downscale_factor" in empty_grid.json()["error"]["message"]

    too_much = _post(http, base_url, {"image": {"base64": groceries_b64}, "points_per_side": 1024})
    assert too_much.status_code == 422, too_much.text
    msg = too_much.json()["error"]["message"]
    assert "1048576 grid points" in msg and "limit" in msg and too_much.json()["error"]["code"] == "limit_exceeded"

    crops_by_id = _post(http, base_url, {"image": {"image_id": "0" * 32}, "crop_n_layers": 1})
    assert crops_by_id.status_code == 400 and "crop_n_layers" in crops_by_id.json()["error"]["message"]

    unknown = _post(http, base_url, {"image": {"image_id": "0" * 32}})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "image_not_found"

    not_an_image = _post(http, base_url, {"image": {"base64": base64.b64encode(b"hello").decode()}})
    assert not_an_image.status_code == 400 and not_an_image.json()["error"]["code"] == "invalid_image"

    no_image = _post(http, base_url, {"points_per_side": 8})
    assert no_image.status_code == 400 and "image" in no_image.json()["error"]["message"]

    no_file = http.post(f"{base_url}/v1/segment_anything", data={"points_per_side": "8"},
                        files={"other": ("x.txt", b"x")}, timeout=60)
    assert no_file.status_code == 400, no_file.text
    assert_healthy(base_url)


def test_handle_rejects_bad_parameters(handle):
    from sam2_serve.common.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match=r"pred_iou_thresh: must be a number in \[0, 1\]"):
        handle.segment_anything.remote(image_id="0" * 32, pred_iou_thresh=2).result(timeout_s=60)
    with pytest.raises(InvalidRequest, match="exactly one of image or image_id"):
        handle.segment_anything.remote(points_per_side=4).result(timeout_s=60)
