"""sam2_serve.models.sam2_internals against the installed sam2: the pinned version, and every touch it lists.

Each check names its touch (``sam2_internals.<name>``) in its failure message; ``test_every_touch_is_checked``
fails when a touch is added to ``TOUCHES`` and used by no check here or in another ``test_sam2_internals*.py``
(``_video``: the video touches; ``_live``: those of live streams). Real sam2 objects throughout: the tiny model from
a test-written checkpoint (``tiny_checkpoint``), at 1024 for the image predictor and at 256 for video.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import importlib.util
import inspect
import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2.sam2_image_predictor import SAM2ImagePredictor
from sam2.utils.transforms import SAM2Transforms

from sam2_serve.models import sam2_internals as si
from sam2_serve.models.loader import load_model
from sam2_serve.testing import ROOT, TINY

def why(touch: str, detail: str) -> str:
    return (f"sam2_internals.{touch}: {detail} (installed sam2 {importlib.metadata.version('sam2')}, "
            f"pinned {si.SAM2_PIN}; see that function's docstring for what this project relies on)")


def params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


# ---- the pin ------------------------------------------------------------------------------------------------------------

def test_installed_sam2_is_the_pinned_version():
    installed = importlib.metadata.version("sam2")
    assert installed == si.SAM2_PIN, (
        f"sam2 {installed} is installed, but sam2_serve.models.sam2_internals is written for sam2 {si.SAM2_PIN} "
        f"(SAM2_PIN). Every touch in sam2_internals.TOUCHES ({len(si.TOUCHES)}: {', '.join(si.TOUCHES)}) must be "
        "reviewed against the new sam2 before moving the pin (SAM2_PIN and pyproject.toml).")


def test_pyproject_pins_the_same_sam2():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta.get("dependencies", [])) + [r for rs in meta.get("optional-dependencies", {}).values() for r in rs]
    sam2 = [r for r in reqs if re.match(r"sam2\s*[=<>!~;\[]", r) or r.strip() == "sam2"]
    assert sam2 and all(r.replace(" ", "") == f"sam2=={si.SAM2_PIN}" for r in sam2), (
        f"pyproject.toml requires {sam2 or 'no sam2'}, sam2_internals.SAM2_PIN is {si.SAM2_PIN}: move both together, "
        "after reviewing every touch in sam2_internals.TOUCHES")


def test_every_touch_is_checked():
    missing = [t for t in si.TOUCHES if not hasattr(si, t)]
    assert not missing, f"sam2_internals.TOUCHES lists names the module lacks: {missing}"
    tests = "".join(f.read_text() for f in Path(__file__).parent.glob("test_sam2_internals*.py"))
    unchecked = [t for t in si.TOUCHES if not re.search(rf"\bsi\.{t}\b", tests)]
    assert not unchecked, f"touches in sam2_internals.TOUCHES that no test uses: {unchecked}"


# ---- fixtures -------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_model(tiny_checkpoint):
    return load_model(TINY, tiny_checkpoint, "cpu", sam2_exact=True).model


@pytest.fixture(scope="module")
def predictor(image_model):
    return SAM2ImagePredictor(image_model)


@pytest.fixture(scope="module")
def encoded(predictor, groceries_rgb):
    """A view with the groceries image set by upstream's set_image_batch (one encoder pass at 1024)."""
    view = si.image_predictor_view(predictor)
    with torch.inference_mode():
        view.set_image_batch([groceries_rgb])
    return view


# ---- signatures of what we call or wrap --------------------------------------------------------------------------------

SIGNATURES = [  # (touch, "module:Class.method", parameter names)
    ("prep_prompts", "sam2.sam2_image_predictor:SAM2ImagePredictor._prep_prompts",
     ["self", "point_coords", "point_labels", "box", "mask_logits", "normalize_coords", "img_idx"]),
    ("predict_tensors", "sam2.sam2_image_predictor:SAM2ImagePredictor._predict",
     ["self", "point_coords", "point_labels", "boxes", "mask_input", "multimask_output", "return_logits", "img_idx"]),
    ("use_low_res_masks", "sam2.utils.transforms:SAM2Transforms.postprocess_masks", ["self", "masks", "orig_hw"]),
    ("mask_decoder_transformer", "sam2.modeling.sam.transformer:TwoWayTransformer.forward",
     ["self", "image_embedding", "image_pe", "point_embedding"]),
    ("track_object", "sam2.sam2_video_predictor:SAM2VideoPredictor._run_single_frame_inference",
     ["self", "inference_state", "output_dict", "frame_idx", "batch_size", "is_init_cond_frame", "point_inputs",
      "mask_inputs", "reverse", "run_mem_encoder", "prev_sam_mask_logits"]),
    ("track_object_then_memory", "sam2.modeling.sam2_base:SAM2Base._encode_memory_in_output",
     ["self", "current_vision_feats", "feat_sizes", "point_inputs", "run_mem_encoder", "high_res_masks",
      "object_score_logits", "current_out"]),
    ("track_object_then_memory", "sam2.sam2_video_predictor:SAM2VideoPredictor._run_memory_encoder",
     ["self", "inference_state", "frame_idx", "batch_size", "high_res_masks", "object_score_logits",
      "is_mask_from_pts"]),
    ("video_res_masks", "sam2.sam2_video_predictor:SAM2VideoPredictor._get_orig_video_res_output",
     ["self", "inference_state", "any_res_masks"]),
    ("consolidate_prompts", "sam2.sam2_video_predictor:SAM2VideoPredictor.propagate_in_video_preflight",
     ["self", "inference_state"]),
    ("fix_memory_dtype", "sam2.modeling.memory_attention:MemoryAttention.forward",
     ["self", "curr", "memory", "curr_pos", "memory_pos", "num_obj_ptr_tokens"]),
]


@pytest.mark.parametrize("touch,where,expected", SIGNATURES, ids=[w.split(":")[1] for _, w, _ in SIGNATURES])
def test_signature(touch, where, expected):
    module, _, path = where.partition(":")
    owner, method = path.split(".")
    cls = getattr(importlib.import_module(module), owner, None)
    assert cls is not None and hasattr(cls, method), why(touch, f"{where} is gone")
    assert params(getattr(cls, method)) == expected, why(
        touch, f"{where} takes {params(getattr(cls, method))}, not {expected}")


# ---- SAM2ImagePredictor ------------------------------------------------------------------------------------------------------

def test_features_set_on_a_view_predict_as_set_image(predictor, encoded, groceries_rgb):
    missing = [a for a in ("_features", "_orig_hw", "_is_image_set", "_transforms") if not hasattr(predictor, a)]
    assert not missing, why("image_predictor_view", f"SAM2ImagePredictor has no {missing}")
    assert encoded.model is predictor.model and encoded._transforms is predictor._transforms, why(
        "image_predictor_view", "a shallow copy no longer shares the model and transforms")
    assert not predictor._is_image_set and predictor._features is None, why(
        "image_predictor_view", "setting a view's image wrote into the predictor it was copied from")
    feats, orig_hw = si.image_features(encoded)
    assert set(feats) == {"image_embed", "high_res_feats"}, why("image_features", f"_features has keys {set(feats)}")
    assert feats["image_embed"] is encoded.get_image_embedding(), why(
        "image_features", "_features['image_embed'] is not what get_image_embedding returns")
    assert [tuple(hw) for hw in orig_hw] == [groceries_rgb.shape[:2]], why("image_features", f"_orig_hw {orig_hw}")
    assert [f.shape[-1] for f in feats["high_res_feats"]] == [256, 128], why(
        "image_features", f"high_res_feats shapes {[tuple(f.shape) for f in feats['high_res_feats']]}")

    view = si.image_predictor_view(predictor)
    si.set_image_features(view, feats, orig_hw)
    point = np.array([[300.0, 200.0]]), np.array([1])
    with torch.inference_mode():
        ref = encoded.predict(*point, multimask_output=True, return_logits=True)
        got = view.predict(*point, multimask_output=True, return_logits=True)
        mask_in, coords, labels, box = si.prep_prompts(view, *point, None, None)
        masks, ious, low_res = si.predict_tensors(view, coords, labels, box, mask_in, True, return_logits=True)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b, err_msg=why("set_image_features", "predict differs from set_image's"))
    view.reset_predictor()
    assert (view._features, view._orig_hw, view._is_image_set) == (None, None, False), why(
        "image_predictor_view", "reset_predictor no longer clears _features/_orig_hw/_is_image_set")
    np.testing.assert_allclose(masks[0].numpy(), ref[0], atol=1e-6, err_msg=why("predict_tensors", "masks"))
    np.testing.assert_allclose(ious[0].numpy(), ref[1], atol=1e-6, err_msg=why("predict_tensors", "IoUs"))
    np.testing.assert_allclose(low_res[0].numpy(), ref[2], atol=1e-6, err_msg=why("predict_tensors", "low-res"))


def test_a_view_runs_set_image_batch_around_another_forward_image(predictor, encoded, groceries_rgb):
    """What sam2_serve.models.fast_encoder relies on: set_image_batch calls model.forward_image once per batch (the
    one call a view replaces), and its output survives the flat round trip an exported network makes."""
    model, calls = predictor.model, []

    def forward_image(img_batch):
        out = model.forward_image(img_batch)
        calls.append((tuple(img_batch.shape), set(out)))
        return si.backbone_out([t.clone() for t in si.backbone_tensors(out)])

    view = si.image_predictor_view(predictor, forward_image=forward_image)
    with torch.inference_mode():
        view.set_image_batch([groceries_rgb])
    assert calls == [((1, 3, 1024, 1024), {"vision_features", "vision_pos_enc", "backbone_fpn"})], why(
        "with_forward_image", f"set_image_batch called forward_image as {calls}")
    assert view.model.forward_image is forward_image and predictor.model.forward_image != forward_image, why(
        "with_forward_image", "the replacement leaked into the shared model")
    seen = si.with_forward_image(model, forward_image)
    assert seen.no_mem_embed is model.no_mem_embed and seen.device == model.device, why(
        "with_forward_image", "other attributes are not the model's")
    got, ref = si.image_features(view)[0], si.image_features(encoded)[0]
    torch.testing.assert_close(got["image_embed"], ref["image_embed"], rtol=0, atol=0, msg=why(
        "backbone_out", "features differ after the round trip through backbone_tensors"))
    for a, b in zip(got["high_res_feats"], ref["high_res_feats"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_low_res_view_skips_only_the_upsampling(predictor, encoded):
    full, low = si.image_predictor_view(predictor), si.image_predictor_view(predictor)
    for view in (full, low):
        si.set_image_features(view, *si.image_features(encoded))
    orig_hw = si.image_features(encoded)[1]
    transforms = SAM2Transforms(resolution=1024, mask_threshold=0.0)
    si.use_low_res_masks(low, transforms)
    coords = torch.tensor([[[0.3, 0.4]], [[0.6, 0.5]]]) * 1024
    labels = torch.ones(2, 1, dtype=torch.int)
    with torch.inference_mode():
        ref_masks, ref_ious, ref_low = si.predict_tensors(full, coords, labels, return_logits=True)
        masks, ious, _ = si.predict_tensors(low, coords, labels, return_logits=True)
        upsampled = transforms.postprocess_masks(masks, orig_hw[0])
    assert masks.shape[-2:] == (256, 256), why("use_low_res_masks", f"masks came back {tuple(masks.shape)}")
    torch.testing.assert_close(masks.clamp(-32, 32), ref_low, msg=why("use_low_res_masks", "low-res logits"))
    torch.testing.assert_close(ious, ref_ious)
    torch.testing.assert_close(upsampled, ref_masks, msg=why("use_low_res_masks", "upsampled survivors"))


# ---- MaskDecoder ----------------------------------------------------------------------------------------------------------

class _Recorder(torch.nn.Module):
    """Wraps sam2's transformer and records how it is called (our probe; the transformer is sam2's)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        self.calls.append((args, kwargs, out))
        return out


def test_how_the_mask_decoder_calls_its_transformer(image_model):
    from sam2.modeling.sam.transformer import TwoWayTransformer

    original = si.mask_decoder_transformer(image_model)
    assert isinstance(original, TwoWayTransformer), why("mask_decoder_transformer", f"it is a {type(original)}")
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 256, 64, 64, generator=g)
    high_res = [torch.randn(1, 32, 256, 256, generator=g), torch.randn(1, 64, 128, 128, generator=g)]
    points = (torch.rand(3, 2, 2, generator=g) * 1024, torch.tensor([[1, 0]] * 3))
    recorder = _Recorder(original)
    si.replace_mask_decoder_transformer(image_model, recorder)
    try:
        assert si.mask_decoder_transformer(image_model) is recorder, why("replace_mask_decoder_transformer", "not set")
        with torch.inference_mode():
            sparse, dense = image_model.sam_prompt_encoder(points=points, boxes=None, masks=None)
            dense_pe = image_model.sam_prompt_encoder.get_dense_pe()
            _, iou_pred, _, _ = image_model.sam_mask_decoder.predict_masks(
                image_embeddings=image, image_pe=dense_pe, sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense, repeat_image=True, high_res_features=high_res)
            assert len(recorder.calls) == 1, why("mask_decoder_transformer", f"{len(recorder.calls)} calls a decode")
            args, kwargs, (tokens, _) = recorder.calls[0]
            assert len(args) == 3 and not kwargs, why("mask_decoder_transformer", f"called with kwargs {set(kwargs)}")
            image_pe = args[1]
            assert image_pe.shape[0] == 3 and torch.equal(si.single_dense_pe(image_pe), dense_pe), why(
                "single_dense_pe", "image_pe's first row is not get_dense_pe()")
            assert torch.equal(image_pe, si.single_dense_pe(image_pe).expand_as(image_pe)), why(
                "single_dense_pe", "image_pe's rows are not one repeated encoding")
            ours = si.iou_predictions(image_model, tokens)
    finally:
        si.replace_mask_decoder_transformer(image_model, original)
    assert image_model.sam_mask_decoder.pred_obj_scores, why("iou_predictions", "the decoder has no object token")
    torch.testing.assert_close(ours, iou_pred, msg=why("iou_predictions", "not predict_masks' IoUs (token order?)"))


def test_repeats_image_names_predict_masks_repeats_of_the_image_and_its_encoding(image_model):
    """A decode of 3 prompts on one image (``repeat_image=True``) and of 3 images (``False``): every
    ``repeat_interleave`` call ``predict_masks`` makes, recorded by a torch function mode; ``repeats_image`` names the
    image's and the encoding's (batch 1, 3 rows: their result is 3 equal rows) and nothing else."""
    from torch.overrides import TorchFunctionMode

    calls: list[tuple] = []

    class Record(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.repeat_interleave:
                calls.append((args, kwargs or {}, out))
            return out

    decoder = image_model.sam_mask_decoder
    g = torch.Generator().manual_seed(3)
    image = torch.randn(1, 256, 64, 64, generator=g)
    high_res = [torch.randn(1, 32, 256, 256, generator=g), torch.randn(1, 64, 128, 128, generator=g)]
    points = (torch.rand(3, 2, 2, generator=g) * 1024, torch.tensor([[1, 0]] * 3))
    with torch.inference_mode():
        sparse, dense = image_model.sam_prompt_encoder(points=points, boxes=None, masks=None)
        pe = image_model.sam_prompt_encoder.get_dense_pe()
        for repeat, images in ((True, image), (False, image.repeat(3, 1, 1, 1))):
            calls.clear()
            with Record():
                decoder.predict_masks(image_embeddings=images, image_pe=pe, sparse_prompt_embeddings=sparse,
                                      dense_prompt_embeddings=dense, repeat_image=repeat, high_res_features=high_res)
            named = [c for c in calls if si.repeats_image(c[0], c[1])]
            repeated = [c[0][0] for c in named]
            expected = [image, pe] if repeat else [pe]
            assert len(named) == len(expected) and all(r is e for r, e in zip(repeated, expected)), why(
                "repeats_image", f"repeat_image={repeat}: {len(named)} named repeats of {len(calls)} calls, not "
                f"{'the image and ' if repeat else ''}its encoding")
            for args, _, out in named:
                assert out.shape[0] == 3 and torch.equal(out, args[0].expand_as(out)), why(
                    "repeats_image", "a named call whose rows are not one tensor repeated")
    assert not si.repeats_image((image, 3), {"dim": 1}) and not si.repeats_image((image.repeat(2, 1, 1, 1), 3), {})
    assert not si.repeats_image((image, torch.tensor([3])), {"dim": 0})


def test_run_mask_decoder_under_sees_every_decode_even_one_that_raises(tiny_checkpoint):
    """``enter``/``leave`` around a click's decode through the image predictor (sam2 calls the decoder as a module),
    and ``leave`` also when the decode raises."""
    model = load_model("sam2.1-hiera-tiny", tiny_checkpoint, device="cpu", sam2_exact=True).model
    seen: list[str] = []
    tensors = lambda a, kw: any(isinstance(t, torch.Tensor) for t in (*a, *kw.values()))  # noqa: E731
    si.run_mask_decoder_under(model, lambda m, a, kw: seen.append("enter") if tensors(a, kw) else None,
                              lambda m, a, o: seen.append("leave"))
    predictor = SAM2ImagePredictor(model)
    predictor.set_image(np.zeros((64, 96, 3), np.uint8))
    predictor.predict(point_coords=np.array([[10.0, 20.0]]), point_labels=np.array([1]))
    assert seen == ["enter", "leave"], why("run_mask_decoder_under", f"hooks saw {seen} for one click")

    def fail(*args):
        raise RuntimeError("stop")

    model.sam_mask_decoder.transformer.register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="stop"):
        predictor.predict(point_coords=np.array([[10.0, 20.0]]), point_labels=np.array([1]))
    assert seen == ["enter", "leave"] * 2, why("run_mask_decoder_under", "leave() did not run when the decode raised")


# ---- warnings, imports, checkpoints ------------------------------------------------------------------------------------

def test_missing_extension_warning_is_matched_and_silenced_once():
    from sam2.utils.misc import fill_holes_in_mask_scores

    if importlib.util.find_spec("sam2._C") is not None:
        pytest.skip("sam2's CUDA extension is built here: it does not warn")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fill_holes_in_mask_scores(torch.randn(1, 1, 8, 8), 4)
    assert len(seen) == 1 and seen[0].category is UserWarning, why("silence_missing_extension_warnings", "no warning")
    assert re.match(si.video._MISSING_EXTENSION_MESSAGE, str(seen[0].message), re.I), why(
        "silence_missing_extension_warnings", f"the pattern does not match sam2's warning {str(seen[0].message)!r}")
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()  # no other filter (pytest's own config has one for this warning)
        si.silence_missing_extension_warnings()
        si.silence_missing_extension_warnings()
        filters = list(warnings.filters)
        fill_holes_in_mask_scores(torch.randn(1, 1, 8, 8), 4)
    assert len(filters) == 1 and not seen, why("silence_missing_extension_warnings",
                                               f"filters {filters}; still warned: {[str(w.message) for w in seen]}")


def test_importing_the_model_layer_sets_no_warning_filter():
    code = ("import warnings; before = len(warnings.filters); import torch, sam2; base = list(warnings.filters); "
            "import sam2_serve.models.video, sam2_serve.models.amg, sam2_serve.models.image, "
            "sam2_serve.models.mask_decoder, sam2_serve.models.loader; "
            "new = [f for f in warnings.filters if f not in base and f[1] is not None and 'sam2' in f[1].pattern]; "
            "print(new); assert not new")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"importing sam2_serve.models sets warning filters: {run.stdout}{run.stderr[-2000:]}"


def test_object_score_bias_key(image_model, tiny_checkpoint):
    state = image_model.state_dict()
    assert si.OBJECT_SCORE_BIAS_KEY in state, why("OBJECT_SCORE_BIAS_KEY", "no such weight in sam2's network")
    saved = torch.load(tiny_checkpoint, weights_only=True)["model"][si.OBJECT_SCORE_BIAS_KEY]
    assert torch.all(saved == 10.0), why("OBJECT_SCORE_BIAS_KEY", "the test checkpoint's bias was not set")
