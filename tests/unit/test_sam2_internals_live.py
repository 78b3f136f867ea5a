"""sam2_serve.models.sam2_internals' live-stream touches against the installed sam2 (``SAM2VideoPredictor``, at 256):
``record_tracked``, ``prune_inputs`` and ``track_object_then_memory``. The other video touches:
``test_sam2_internals_video.py``."""

from __future__ import annotations

import numpy as np
import torch

from sam2_serve.models import sam2_internals as si
from tests.unit.test_sam2_internals import why
from tests.unit.test_sam2_internals_video import _POINT, _init_state, _propagated, frames_dir, video_model  # noqa: F401

_NEGATIVE = dict(points=np.array([[300, 200]], np.float32), labels=np.array([0], np.int32), clear_old_points=False)


class _ReadLog(dict):
    """An object's per-frame prompts that record which frames sam2 reads (our probe)."""

    def __init__(self, data, log):
        super().__init__(data)
        self.log = log

    def get(self, key, default=None):
        self.log.append(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.log.append(key)
        return super().__getitem__(key)


def _tracked_state(P, frames_dir, correct_on=()):  # noqa: F811
    """A click on frame 0, frames 1-2 tracked with our per-frame step and recorded as tracked (the latest one
    only), a negative click on each frame of ``correct_on`` as it is the latest, as a live stream does."""
    state = _init_state(P, frames_dir)
    with torch.inference_mode():
        P.add_new_points_or_box(state, 0, "a", **_POINT)
        si.consolidate_prompts(P, state)
        for f in (1, 2):
            si.track_object(P, state, 0, f)
            si.record_tracked(state, f)
            if f in correct_on:
                P.add_new_points_or_box(state, f, "a", **_NEGATIVE)
                si.consolidate_prompts(P, state)
    return state


def test_record_tracked_makes_a_prompt_a_correction_as_after_propagation(video_model, frames_dir):  # noqa: F811
    P = video_model
    with torch.inference_mode():
        ref = _propagated(P, frames_dir)
        _, _, ref_fix = P.add_new_points_or_box(ref, 2, "a", **_NEGATIVE)
        state = _tracked_state(P, frames_dir)
        assert state["frames_tracked_per_obj"][0] == {2: ref["frames_tracked_per_obj"][0][2]}, why(
            "record_tracked", f"{state['frames_tracked_per_obj']} is not propagate_in_video's record of frame 2 alone")
        _, _, fix = P.add_new_points_or_box(state, 2, "a", **_NEGATIVE)
    assert 2 in state["temp_output_dict_per_obj"][0]["non_cond_frame_outputs"], why(
        "record_tracked", "a prompt on a recorded frame was not taken as a correction")
    torch.testing.assert_close(fix, ref_fix, msg=why("record_tracked", "the correction differs from upstream's"))


def test_prune_inputs_keeps_what_sam2_reads(video_model, frames_dir):  # noqa: F811
    P = video_model
    state = _tracked_state(P, frames_dir, correct_on=(1, 2))  # corrections: not conditioning frames
    assert sorted(state["point_inputs_per_obj"][0]) == [0, 1, 2]
    assert sorted(state["output_dict_per_obj"][0]["cond_frame_outputs"]) == [0]
    si.prune_inputs(state, 2)
    assert sorted(state["point_inputs_per_obj"][0]) == [0, 2], why(
        "prune_inputs", f"kept prompts of frames {sorted(state['point_inputs_per_obj'][0])}, not [0, 2]")
    log: list = []
    state["point_inputs_per_obj"][0] = _ReadLog(state["point_inputs_per_obj"][0], log)
    with torch.inference_mode():
        P.add_new_points_or_box(state, 2, "a", **_NEGATIVE)  # more points on the latest frame
        si.consolidate_prompts(P, state)
        si.track_object(P, state, 0, 2)
    assert set(log) <= {2}, why("prune_inputs", f"sam2 read the prompts of frames {sorted(set(log))}")
    with torch.inference_mode():
        P.add_new_points_or_box(state, 2, "b", **_POINT)
        si.consolidate_prompts(P, state)
        P.remove_object(state, "a", strict=True, need_output=False)  # reads every prompted frame of "a"
    assert si.object_ids(state) == ["b"] and list(state["point_inputs_per_obj"]) == [0], why(
        "prune_inputs", "remove_object failed on pruned prompts")


class _NoFrames(list):
    """Frames that refuse to be read (our probe: a pass that would encode a frame again fails)."""

    def __getitem__(self, i):
        raise AssertionError(f"frame {i} was read again")


def test_track_object_then_memory_leaves_track_objects_state(video_model, frames_dir):  # noqa: F811
    P = video_model
    ref, state = _init_state(P, frames_dir), _init_state(P, frames_dir)
    with torch.inference_mode():
        for s in (ref, state):
            P.add_new_points_or_box(s, 0, "a", **_POINT)
            si.consolidate_prompts(P, s)
        *_, nothing = si.track_object_then_memory(P, state, 0, 0)
        assert nothing is None, why("track_object_then_memory", "a prompted frame's stored output has a memory to run")
        for f in (1, 2):
            ref_out, ref_masks = si.track_object(P, ref, 0, f)
            out, masks, encode_memory = si.track_object_then_memory(P, state, 0, f)
            assert "_encode_memory_in_output" not in vars(P), why(
                "track_object_then_memory", "the predictor itself was changed, not a copy of it")
            torch.testing.assert_close(masks, ref_masks, rtol=0, atol=0, msg=why(
                "track_object_then_memory", f"frame {f}'s masks differ from track_object's"))
            assert out["maskmem_features"] is None and out["maskmem_pos_enc"] is None, why(
                "track_object_then_memory", "the memory encoder ran in track_step (_encode_memory_in_output)")
            images, state["images"] = state["images"], _NoFrames()
            encode_memory()  # reads frame f's features from sam2's cache, not the frame
            state["images"] = images
            assert si.frame_output(state, 0, f) is out and set(out) == set(ref_out), why(
                "track_object_then_memory", "the stored output is not the one returned, or has other keys")
            for key, value in ref_out.items():
                mine = out[key] if isinstance(value, list) else [out[key]]
                for a, b in zip(mine, value if isinstance(value, list) else [value]):
                    assert a.dtype == b.dtype and torch.equal(a, b), why(
                        "track_object_then_memory", f"frame {f}: {key} differs from track_object's")
