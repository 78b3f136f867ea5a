"""sam2_serve.models.sam2_internals' video touches against the installed sam2 (``SAM2VideoPredictor``, at 256).

The pin, the image and mask-decoder touches, and the check that every touch is tested: ``test_sam2_internals.py``.
"""

from __future__ import annotations

import importlib.resources

import numpy as np
import pytest
import torch
from PIL import Image

from sam2_serve.models import sam2_internals as si
from sam2_serve.testing import decode_frames, load_video_reference, write_frames_dir
from tests.unit.test_sam2_internals import why


@pytest.fixture(scope="module")
def video_model(tiny_checkpoint):
    return load_video_reference(tiny_checkpoint).model  # sam2 exactly, at 256, with fix_memory_dtype


@pytest.fixture(scope="module")
def frames_dir(bedroom_path, tmp_path_factory):
    return write_frames_dir(decode_frames(bedroom_path, 3), tmp_path_factory.mktemp("frames3"))


def _init_state(model, frames_dir):
    with torch.inference_mode():
        return model.init_state(str(frames_dir), offload_video_to_cpu=True)


@pytest.fixture(scope="module")
def initial_state(video_model, frames_dir):
    return _init_state(video_model, frames_dir)  # tests only read it


_POINT = dict(points=np.array([[480, 300]], np.float32), labels=np.array([1], np.int32))


def test_video_model_attributes(video_model):
    from sam2_serve.models.registry import MODELS

    for attr in ("num_maskmem", "memory_temporal_stride_for_eval", "max_obj_ptrs_in_encoder"):
        assert isinstance(getattr(video_model, attr, None), int), why("memory_window", f"no int attribute {attr}")
    assert video_model.clear_non_cond_mem_around_input is False, why(
        "track_object", "clear_non_cond_mem_around_input is on (track_object skips it)")
    for spec in MODELS.values():
        config = (importlib.resources.files("sam2") / spec.config).read_text()
        assert "clear_non_cond_mem_around_input" not in config, why(
            "track_object", f"{spec.config} sets clear_non_cond_mem_around_input")


def test_new_state_has_init_states_layout(initial_state, frames_dir):
    ref = initial_state
    ours = si.new_inference_state(si.state_frames(ref), si.video_size(ref), torch.device("cpu"))
    assert set(ours) == set(ref), why("new_inference_state", f"keys init_state has and ours lacks: "
                                      f"{sorted(set(ref) - set(ours))}; ours only: {sorted(set(ours) - set(ref))}")
    for key in ref:
        assert type(ours[key]) is type(ref[key]), why("new_inference_state", f"{key}: {type(ref[key])} upstream")
        if key not in ("images", "cached_features"):
            assert ours[key] == ref[key], why("new_inference_state", f"{key}: {ref[key]!r} upstream, ours {ours[key]!r}")
    width, height = Image.open(frames_dir / "00000.jpg").size
    assert si.video_size(ref) == (height, width), why("video_size", f"{si.video_size(ref)}, frames are {height}x{width}")
    assert si.num_frames(ours) == si.num_frames(ref) == 3, why("num_frames", "not the frame count")
    assert si.object_ids(ref) == [], why("object_ids", "a new state has objects")
    cache = si.frame_features(ref)
    assert list(cache) == [0] and len(cache[0]) == 2, why("frame_features", "not {0: (image, backbone_out)}")


class _CountingFrames(list):
    """Frames that record which of them sam2 indexes (our probe around init_state's frames)."""

    def __getitem__(self, i):
        self.read.append(i)
        return super().__getitem__(i)


def test_frames_are_read_only_on_a_feature_cache_miss(video_model, initial_state):
    ref = initial_state
    with torch.inference_mode():
        frames = _CountingFrames(si.state_frames(ref))
        frames.read = []
        state = si.new_inference_state(frames, si.video_size(ref), torch.device("cpu"))
        si.set_frame_features(state, dict(si.frame_features(ref)))
        video_model._get_image_feature(state, 0, 1)
        assert frames.read == [], why("frame_features", "a cached frame was read from images again")
        si.set_frame_features(state, {})
        video_model._get_image_feature(state, 1, 1)
    assert frames.read == [1], why("state_frames", f"a miss read frames {frames.read}, not [1]")
    assert list(si.frame_features(state)) == [1], why("set_frame_features", "a miss does not cache that one frame")


def test_track_object_is_propagate_in_videos_step(video_model, frames_dir):
    P = video_model
    ref_state, state = _init_state(P, frames_dir), _init_state(P, frames_dir)
    with torch.inference_mode():
        P.add_new_points_or_box(ref_state, 0, "a", **_POINT)
        ref = {f: logits for f, _, logits in P.propagate_in_video(ref_state)}
        P.add_new_points_or_box(state, 0, "a", **_POINT)
        assert si.frame_output(state, 0, 0) is not None, why("frame_output", "a prompt's output is not found")
        si.consolidate_prompts(P, state)
        assert si.object_ids(state) == ["a"], why("object_ids", f"{si.object_ids(state)}")
        for f in range(3):
            out, low_res = si.track_object(P, state, 0, f)
            assert set(out) == si.FRAME_OUTPUT_KEYS, why("FRAME_OUTPUT_KEYS", f"a frame output has keys {set(out)}")
            video = si.video_res_masks(P, state, low_res)
            torch.testing.assert_close(video, ref[f], msg=why("track_object", f"frame {f} differs from upstream's"))
            assert si.frame_output(state, 0, f) is out, why("frame_output", f"frame {f}'s output is not found")
            assert torch.equal(si.mask_logits(out), low_res), why("mask_logits", f"frame {f}: not the output's logits")
            score = float(ref_state["output_dict_per_obj"][0][
                "cond_frame_outputs" if f == 0 else "non_cond_frame_outputs"][f]["object_score_logits"])
            assert si.object_score(out) == pytest.approx(score, abs=1e-5), why("object_score", f"frame {f}")
    assert si.output_counts(state) == {"a": {"cond": 1, "non_cond_memories": 2, "non_cond_pointers_only": 0}}, why(
        "output_counts", f"{si.output_counts(state)}")
    parts = si.per_frame_tensors(state)
    assert len(parts) == 4 and all(isinstance(p, dict) and set(p) == {0} for p in parts), why(
        "per_frame_tensors", "not four per-object dicts")


class _Out(dict):
    """A synthetic frame output (sam2's shapes) that logs which of its keys sam2 reads (our probe)."""

    log: list = []

    def __init__(self, model, frame, g, dtype=torch.float32):
        side = model.image_size // 16
        super().__init__(maskmem_features=torch.randn(1, model.mem_dim, side, side, generator=g).to(dtype),
                         maskmem_pos_enc=[torch.randn(1, model.mem_dim, side, side, generator=g)],
                         pred_masks=torch.zeros(1, 1, 4, 4), obj_ptr=torch.randn(1, model.hidden_dim, generator=g),
                         object_score_logits=torch.ones(1, 1))
        self.frame = frame

    def __getitem__(self, key):
        _Out.log.append((self.frame, key))
        return super().__getitem__(key)


def _memory_features(model, frame, output_dict, num_frames):
    """sam2's own memory read for tracking ``frame`` forward (what _run_single_frame_inference does first)."""
    side = model.image_size // 16
    g = torch.Generator().manual_seed(frame)
    feats = torch.randn(side * side, 1, model.hidden_dim, generator=g)
    pos = torch.randn(side * side, 1, model.hidden_dim, generator=g)
    return model._prepare_memory_conditioned_features(
        frame_idx=frame, is_init_cond_frame=False, current_vision_feats=[feats], current_vision_pos_embeds=[pos],
        feat_sizes=[(side, side)], output_dict=output_dict, num_frames=num_frames)


@pytest.mark.parametrize("stride", [1, 3])
def test_pruning_keeps_what_sam2_reads(video_model, stride):
    """Track frames 1..20 on synthetic outputs: pruned outputs give sam2's result, and the window is tight."""
    P, n, g = video_model, 40, torch.Generator().manual_seed(stride)
    saved, P.memory_temporal_stride_for_eval = P.memory_temporal_stride_for_eval, stride
    try:
        state = si.new_inference_state([None] * n, (64, 64), torch.device("cpu"))
        cond = {0: _Out(P, 0, g)}
        full = {"cond_frame_outputs": cond, "non_cond_frame_outputs": {}}
        pruned = {"cond_frame_outputs": cond, "non_cond_frame_outputs": {}}
        state["output_dict_per_obj"][0] = pruned
        for f in range(1, 21):
            if f > 1:
                full["non_cond_frame_outputs"][f - 1] = pruned["non_cond_frame_outputs"][f - 1] = _Out(P, f - 1, g)
            si.prune_outputs(P, state, f)
            with torch.inference_mode():
                try:
                    got = _memory_features(P, f, pruned, n)
                except (AttributeError, TypeError) as exc:
                    pytest.fail(why("prune_outputs", f"frame {f} read what was pruned ({exc})"))
                _Out.log = []
                ref = _memory_features(P, f, full, n)
            torch.testing.assert_close(got, ref, msg=why("prune_outputs", f"frame {f}: a pruned output was read"))
            memory = {t for t, key in _Out.log if key == "maskmem_features" and t > 0}
            pointers = {t for t, key in _Out.log if key == "obj_ptr" and t > 0}
            memory_from, pointers_from = si.memory_window(P, f, n)
            if f > 1:  # the window holds every frame read, and its first frame is read when it exists
                assert min(memory) >= memory_from and (memory_from < 1 or memory_from in memory), why(
                    "memory_window", f"frame {f} reads memories of {sorted(memory)}, window from {memory_from}")
                assert min(pointers) == max(1, pointers_from), why(
                    "memory_window", f"frame {f} reads pointers of {sorted(pointers)}, window from {pointers_from}")
        assert len(pruned["non_cond_frame_outputs"]) == P.max_obj_ptrs_in_encoder - 1, why(
            "prune_outputs", f"{len(pruned['non_cond_frame_outputs'])} outputs held after 20 frames")
    finally:
        P.memory_temporal_stride_for_eval = saved


def test_memory_dtype_fix(video_model):
    """sam2 stores memories as bfloat16; a frame before an object's only prompt has no pointers to promote them."""
    P, g = video_model, torch.Generator().manual_seed(0)
    hooks = len(P.memory_attention._forward_pre_hooks)
    si.fix_memory_dtype(P)
    assert len(P.memory_attention._forward_pre_hooks) == hooks, why("fix_memory_dtype", "not idempotent")
    seen = []
    probe = P.memory_attention.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args, dict(kwargs))), with_kwargs=True)
    try:
        with torch.inference_mode():
            out = _memory_features(P, 1, {"cond_frame_outputs": {5: _Out(P, 5, g, torch.bfloat16)},
                                          "non_cond_frame_outputs": {}}, 8)
    finally:
        probe.remove()
    (args, kwargs), = seen
    assert not args and {"curr", "memory", "memory_pos"} <= set(kwargs), why(
        "fix_memory_dtype", f"memory_attention called with {len(args)} positional args, kwargs {sorted(kwargs)}")
    assert kwargs["memory"].dtype == torch.float32 and out.dtype == torch.float32, why("fix_memory_dtype", "no cast")


def _propagated(model, frames_dir):
    """Upstream's state after one click on frame 0 and ``propagate_in_video`` over the 3 frames (call in
    inference mode)."""
    state = _init_state(model, frames_dir)
    model.add_new_points_or_box(state, 0, "a", **_POINT)
    for _ in model.propagate_in_video(state):
        pass
    return state


def test_object_frames_and_drop_frames_read_upstreams_state(video_model, frames_dir):
    """The bounded sessions' touches (``session_window``): which frames upstream holds an object on after a
    prompt, a propagation and a correction, and dropping a tracked frame removes all sam2 holds of it there."""
    P = video_model
    with torch.inference_mode():
        state = _propagated(P, frames_dir)
        held = si.object_frames(state, 0)
        assert held.cond == {0} and held.non_cond == {1, 2}, why("object_frames", f"{held}")
        assert held.tracked == {0: False, 1: False, 2: False}, why("object_frames", f"tracked {held.tracked}")
        P.add_new_points_or_box(state, 2, "a", points=np.array([[100, 100]], np.float32),
                                labels=np.array([0], np.int32))  # a correction on a tracked frame
        fixed = si.object_frames(state, 0)
        # sam2's default (add_all_frames_to_correct_as_cond False): a correction is no prompted frame
        assert fixed.cond == {0} and 2 in state["point_inputs_per_obj"][0], why("object_frames", f"{fixed}")
        si.drop_frames(state, 0, [0, 1, 2])
        after = si.object_frames(state, 0)
        assert after.cond == {0} and after.non_cond == set() and set(after.tracked) == {0}, why(
            "drop_frames", f"tracked frames still held: {after}")
        assert set(state["point_inputs_per_obj"][0]) == {0}, why(
            "drop_frames", "the correction on a dropped frame kept, or the prompted frame's prompt lost")


def test_a_view_with_another_forward_image_runs_it_for_every_frame(video_model, frames_dir):
    """``video_predictor_view``: upstream's own propagation on the view calls the given ``forward_image`` for each
    frame's backbone pass (here torch's own, counted, so the masks must be upstream's exactly); the original model
    and its weights are untouched and shared."""
    P, calls = video_model, []

    def counted(img_batch):
        calls.append(tuple(img_batch.shape))
        return type(P).forward_image(P, img_batch)

    view = si.video_predictor_view(P, counted)
    assert view.image_encoder is P.image_encoder and "forward_image" not in vars(P), why(
        "video_predictor_view", "the view does not share the model's modules, or the original was changed")
    with torch.inference_mode():
        ref_state, state = _init_state(P, frames_dir), _init_state(P, frames_dir)
        calls.clear()  # init_state's warm-up pass ran on the original
        P.add_new_points_or_box(ref_state, 0, "a", **_POINT)
        ref = [logits for _, _, logits in P.propagate_in_video(ref_state)]
        view.add_new_points_or_box(state, 0, "a", **_POINT)
        ours = [logits for _, _, logits in view.propagate_in_video(state)]
    assert len(calls) >= 2 and all(c == (1, 3, P.image_size, P.image_size) for c in calls), why(
        "video_predictor_view", f"forward_image calls {calls}: frames did not go through the given forward_image")
    for f, (a, b) in enumerate(zip(ours, ref)):
        torch.testing.assert_close(a, b, msg=why("video_predictor_view", f"frame {f} differs from upstream's"))
