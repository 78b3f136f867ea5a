"""predict over HTTP and over the handle gives upstream SAM2ImagePredictor's masks, scores and logits."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from sam2_serve.common.images import decode_image
from sam2_serve.common.masks import decode_png, decode_rle

pytestmark = pytest.mark.integration

CASES = {
    "one positive click": dict(
        body={"regions": [{"point": [0.45, 0.55]}]},
        ref=[dict(point_coords=[[0.45, 0.55]], point_labels=[1])]),
    "positive and negative clicks": dict(
        body={"regions": [{"point": [0.45, 0.55], "concepts": [{"name": "1", "value": 1.0}]},
                          {"point": [0.7, 0.3], "concepts": [{"name": "0", "value": 0.0}]}]},
        ref=[dict(point_coords=[[0.45, 0.55], [0.7, 0.3]], point_labels=[1, 0])]),
    "one box": dict(
        body={"regions": [{"box": [0.2, 0.25, 0.6, 0.8]}]},
        ref=[dict(box=[0.2, 0.25, 0.6, 0.8])]),
    "box and points": dict(
        body={"regions": [{"box": [0.2, 0.25, 0.6, 0.8]}, {"point": [0.4, 0.5]},
                          {"point": [0.25, 0.3], "concepts": [{"name": "0"}]}]},
        ref=[dict(box=[0.2, 0.25, 0.6, 0.8], point_coords=[[0.4, 0.5], [0.25, 0.3]], point_labels=[1, 0])]),
    "several boxes": dict(
        body={"regions": [{"box": [0.05, 0.1, 0.4, 0.5]}, {"box": [0.5, 0.4, 0.95, 0.9]}]},
        ref="batched_boxes"),
    "multimask": dict(
        body={"regions": [{"point": [0.3, 0.6]}], "multimask_output": True},
        ref=[dict(point_coords=[[0.3, 0.6]], point_labels=[1])], multimask=True),
    "dict_inputs": dict(
        body={"dict_inputs": {"points": [[0.45, 0.55], [0.6, 0.2]], "labels": [1, 0], "box": [0.1, 0.2, 0.7, 0.9]}},
        ref=[dict(point_coords=[[0.45, 0.55], [0.6, 0.2]], point_labels=[1, 0], box=[0.1, 0.2, 0.7, 0.9])]),
    "dict_inputs in pixels": dict(
        body={"dict_inputs": {"points": [[360.0, 293.7]], "labels": [1]}, "denormalize_coord": False},
        ref=[dict(point_coords=[[360.0 / 800, 293.7 / 534]], point_labels=[1])]),
}
BATCHED_BOXES = np.array([[0.05, 0.1, 0.4, 0.5], [0.5, 0.4, 0.95, 0.9]])


@pytest.fixture(scope="module")
def image_bytes(groceries_path) -> bytes:
    return groceries_path.read_bytes()


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, image_bytes):
    """Upstream SAM2ImagePredictor on the same checkpoint, image set once."""
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from sam2_serve.models.registry import get_spec

    predictor = SAM2ImagePredictor(build_sam2(get_spec("sam2.1-hiera-tiny").config, str(tiny_checkpoint), device="cpu"))
    rgb = decode_image(image_bytes)
    predictor.set_image(rgb)
    return predictor, rgb.shape[1], rgb.shape[0]


def upstream(reference, case) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """[(masks (C,H,W) bool, scores (C,), logits (C,256,256))] per object, from upstream."""
    predictor, w, h = reference
    scale = np.array([w, h], dtype=np.float32)
    multimask = case.get("multimask", False)
    if case["ref"] == "batched_boxes":
        masks, scores, logits = predictor.predict(box=BATCHED_BOXES * np.tile(scale, 2), multimask_output=multimask)
        return [(masks[i] > 0, scores[i], logits[i]) for i in range(len(BATCHED_BOXES))]
    out = []
    for obj in case["ref"]:
        kwargs = {"multimask_output": multimask}
        if "point_coords" in obj:
            kwargs["point_coords"] = np.array(obj["point_coords"], np.float32) * scale
            kwargs["point_labels"] = np.array(obj["point_labels"])
        if "box" in obj:
            kwargs["box"] = np.array(obj["box"], np.float32) * np.tile(scale, 2)
        masks, scores, logits = predictor.predict(**kwargs)
        out.append((masks > 0, scores, logits))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def assert_same_masks(got_masks, got_scores, expected, got_logits=None):
    exp_masks = [m for masks, _, _ in expected for m in masks]
    exp_scores = np.concatenate([s for _, s, _ in expected])
    assert len(got_masks) == len(exp_masks)
    np.testing.assert_allclose(got_scores, exp_scores, atol=1e-4)
    for got, exp in zip(got_masks, exp_masks):
        assert got.shape == exp.shape
        assert 0.002 < exp.mean() < 0.998, "the reference mask is trivial: the comparison would prove nothing"
        assert iou(got, exp) >= 0.99
    if got_logits is not None:
        exp_logits = [lg for _, _, logits in expected for lg in logits]
        for got, exp in zip(got_logits, exp_logits):
            np.testing.assert_allclose(got, exp, atol=1e-3)


def test_the_image_encoder_runs_on_openvino(base_url, http):
    """The shared app encodes through OpenVINO (encoder_backend: openvino), so every comparison here is the fast
    path's."""
    [info] = http.get(f"{base_url}/v1/models", timeout=60).json()
    assert info["encoder_backend"] == "openvino", info


@pytest.mark.parametrize("name", list(CASES))
def test_http_matches_upstream(name, base_url, http, image_bytes, reference):
    case = CASES[name]
    body = {"image": {"base64": base64.b64encode(image_bytes).decode()}, **case["body"]}
    r = http.post(f"{base_url}/v1/predict", json=body, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["width"], out["height"]) == (800, 534)
    masks = [decode_png(reg["mask"]["png"]) for reg in out["regions"]]
    scores = [reg["score"] for reg in out["regions"]]
    assert all(reg["concepts"] == [{"name": "1", "value": reg["score"]}] for reg in out["regions"])
    assert_same_masks(masks, scores, upstream(reference, case))


@pytest.mark.parametrize("name", ["box and points", "multimask", "several boxes"])
def test_handle_matches_upstream_with_logits(name, handle, image_bytes, reference):
    case = CASES[name]
    result = handle.predict.remote(image=image_bytes, **{
        k: v for k, v in case["body"].items()}).result(timeout_s=120)
    assert all(r.mask.dtype == bool for r in result.regions)
    assert_same_masks([r.mask for r in result.regions], [r.score for r in result.regions],
                      upstream(reference, case), got_logits=[r.logits for r in result.regions])


def test_handle_accepts_pil_and_array(handle, image_bytes, reference):
    from PIL import Image
    import io

    pil = Image.open(io.BytesIO(image_bytes))
    arr = decode_image(image_bytes)
    a = handle.predict.remote(image=pil, regions=[{"point": [0.45, 0.55]}]).result(timeout_s=120)
    b = handle.predict.remote(image=arr, regions=[{"point": [0.45, 0.55]}]).result(timeout_s=120)
    assert a.image_id == b.image_id
    assert_same_masks([b.regions[0].mask], [b.regions[0].score], upstream(reference, CASES["one positive click"]))


def test_rle_and_box_and_track_ids(base_url, http, image_bytes, reference):
    body = {"image": {"base64": base64.b64encode(image_bytes).decode()}, "mask_format": "rle",
            "regions": [{"box": [0.2, 0.25, 0.6, 0.8], "track_id": "cup"}, {"point": [0.45, 0.55], "track_id": "p"}]}
    r = http.post(f"{base_url}/v1/predict", json=body, timeout=120)
    assert r.status_code == 200, r.text
    regions = r.json()["regions"]
    assert [reg["track_id"] for reg in regions] == ["cup", "p"]
    mask = decode_rle(regions[0]["mask"]["rle"])
    assert regions[0]["mask"]["rle"]["size"] == [534, 800]
    expected = upstream(reference, CASES["one box"])[0][0][0]
    assert iou(mask, expected) >= 0.99
    ys, xs = np.nonzero(mask)
    np.testing.assert_allclose(regions[0]["box"], [xs.min() / 800, ys.min() / 534, (xs.max() + 1) / 800,
                                                   (ys.max() + 1) / 534])


def test_multipart_upload(base_url, http, image_bytes, reference):
    r = http.post(f"{base_url}/v1/predict", files={"image": ("g.jpg", image_bytes, "image/jpeg")},
                  data={"regions": '[{"point": [0.3, 0.6]}]', "multimask_output": "true"}, timeout=120)
    assert r.status_code == 200, r.text
    regions = r.json()["regions"]
    assert_same_masks([decode_png(reg["mask"]["png"]) for reg in regions], [reg["score"] for reg in regions],
                      upstream(reference, CASES["multimask"]))
