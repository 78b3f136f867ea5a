"""sam2 internals, video: ``SAM2VideoPredictor``'s ``inference_state``, its per-frame outputs, model attributes and
hooks, and the checkpoint key tests set (see the package docstring: every touch is listed in ``TOUCHES`` and
tested against the pinned sam2)."""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from typing import Callable, NamedTuple, Optional, Sequence

import torch


# ---- SAM2VideoPredictor: inference_state -------------------------------------------------------------------------------
# init_state decodes the whole video before the first mask; the service builds the same dict with a lazy frame
# sequence, steps tracking one frame at a time with propagate_in_video's per-frame body, and drops per-frame outputs
# that sam2 will not read again. The dict's keys and per-frame output layout are sam2's private structure.

# The per-frame output dict _run_single_frame_inference stores (output_dict_per_obj[i][...][frame]).
FRAME_OUTPUT_KEYS = frozenset({"maskmem_features", "maskmem_pos_enc", "pred_masks", "obj_ptr", "object_score_logits"})


def new_inference_state(images: Sequence, video_hw: tuple[int, int], device: torch.device) -> dict:
    """The ``inference_state`` that ``init_state(video, offload_video_to_cpu=True, offload_state_to_cpu=False)``
    builds, with ``images`` as given (any sequence whose ``[i]`` is frame ``i`` preprocessed: 3 x S x S float) and
    no warm-up encode of frame 0. sam2 indexes ``images`` only on a miss of its feature cache."""
    return {
        "images": images,
        "num_frames": len(images),
        "offload_video_to_cpu": True,
        "offload_state_to_cpu": False,
        "video_height": video_hw[0],
        "video_width": video_hw[1],
        "device": device,
        "storage_device": device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }


def state_frames(state: dict) -> Sequence:
    """The ``images`` sequence a state was built with."""
    return state["images"]


def video_size(state: dict) -> tuple[int, int]:
    """(height, width) of the original video, the size sam2's video-resolution masks have."""
    return state["video_height"], state["video_width"]


def num_frames(state: dict) -> int:
    """Frames in the (clip) video; sam2 bounds tracking and its pointer window with it."""
    return state["num_frames"]


def object_ids(state: dict) -> list:
    """Object ids in sam2's object-index order (index ``i`` is the ``i``-th id)."""
    return state["obj_ids"]


def frame_features(state: dict) -> dict:
    """sam2's backbone feature cache, ``{frame: (image, backbone_out)}``: ``_get_image_feature`` reads it first, and
    on a miss encodes the frame and replaces the cache with that one frame."""
    return state["cached_features"]


def set_frame_features(state: dict, features: dict) -> None:
    """Replace sam2's backbone feature cache (see ``frame_features``); ``{}`` drops every cached frame."""
    state["cached_features"] = features


def consolidate_prompts(model, state: dict) -> None:
    """``propagate_in_video_preflight``: what ``propagate_in_video`` runs before its first frame (moves the prompted
    frames' outputs from the temporary to the per-object output dicts, running the memory encoder on them)."""
    model.propagate_in_video_preflight(state)


def track_object(model, state: dict, obj_idx: int, frame: int) -> tuple[dict, torch.Tensor]:
    """One object on one frame, forward, as ``propagate_in_video``'s per-object step does it: a prompted frame's
    stored output, else ``_run_single_frame_inference`` with the object's memories (stored as the frame's
    non-conditioning output). Returns (the frame's output, its low-res mask logits 1 x 1 x h x w on the device).

    Unlike ``propagate_in_video`` it does not record the frame in ``frames_tracked_per_obj`` (read only when prompts
    are added after tracking, which a stream does not do), and skips ``clear_non_cond_mem_around_input`` (False in
    every config this project builds)."""
    od = state["output_dict_per_obj"][obj_idx]
    out = od["cond_frame_outputs"].get(frame)
    if out is not None:
        return out, mask_logits(out).to(state["device"], non_blocking=True)
    out, masks = model._run_single_frame_inference(
        inference_state=state, output_dict=od, frame_idx=frame, batch_size=1, is_init_cond_frame=False,
        point_inputs=None, mask_inputs=None, reverse=False, run_mem_encoder=True)
    od["non_cond_frame_outputs"][frame] = out
    return out, masks


def track_object_then_memory(model, state: dict, obj_idx: int,
                             frame: int) -> tuple[dict, torch.Tensor, Optional[Callable[[], None]]]:
    """``track_object`` with the memory encoder left for later: returns (the frame's output, its low-res mask
    logits, ``encode_memory``). Until ``encode_memory()`` runs, the output's ``maskmem_features`` and
    ``maskmem_pos_enc`` are None; it runs upstream's ``_run_memory_encoder`` on the inputs ``track_step`` would
    have encoded (its high-res masks, object score logits, and whether the mask came from points) and stores both
    as ``_run_single_frame_inference`` would have. The frame's backbone features must still be in sam2's cache
    then (``_run_memory_encoder`` reads them), or it encodes the frame again. ``encode_memory`` is None when there
    is nothing to encode (a prompted frame's stored output, a model without memories).

    Masks and pointers are those of ``track_object``: the memory encoder runs last in ``track_step`` and nothing
    before it reads its output. Relies on ``track_step`` calling ``self._encode_memory_in_output(current_vision_feats,
    feat_sizes, point_inputs, run_mem_encoder, high_res_masks, object_score_logits, current_out)``, shadowed on a
    shallow copy of ``model`` (as ``video_predictor_view`` shadows ``forward_image``)."""
    od = state["output_dict_per_obj"][obj_idx]
    if frame in od["cond_frame_outputs"] or model.num_maskmem == 0:
        return (*track_object(model, state, obj_idx, frame), None)
    inputs: dict = {}

    def keep_inputs(_feats, _sizes, point_inputs, _run, high_res_masks, object_score_logits, current_out):
        inputs.update(high_res_masks=high_res_masks, object_score_logits=object_score_logits,
                      is_mask_from_pts=point_inputs is not None)
        current_out["maskmem_features"] = current_out["maskmem_pos_enc"] = None

    view = copy.copy(model)
    view._encode_memory_in_output = keep_inputs
    out, masks = track_object(view, state, obj_idx, frame)

    def encode_memory() -> None:
        out["maskmem_features"], out["maskmem_pos_enc"] = model._run_memory_encoder(
            inference_state=state, frame_idx=frame, batch_size=1, **inputs)

    return out, masks, encode_memory


def video_res_masks(model, state: dict, low_res: torch.Tensor) -> torch.Tensor:
    """``_get_orig_video_res_output``: low-res logits (N x 1 x h x w) -> video-resolution logits, with sam2's
    non-overlap constraint when the model applies one; what ``propagate_in_video`` yields."""
    return model._get_orig_video_res_output(state, low_res)[1]


def frame_output(state: dict, obj_idx: int, frame: int) -> Optional[dict]:
    """An object's output on a frame, as the last prompt or propagation left it: the temporary outputs (prompts
    not yet propagated) first, then the consolidated ones; conditioning before non-conditioning. None if none."""
    for d in (state["temp_output_dict_per_obj"].get(obj_idx), state["output_dict_per_obj"].get(obj_idx)):
        for key in ("cond_frame_outputs", "non_cond_frame_outputs"):
            if d is not None and frame in d[key]:
                return d[key][frame]
    return None


def mask_logits(out: dict) -> torch.Tensor:
    """A frame output's low-res mask logits (1 x 1 x h x w, on the state's storage device)."""
    return out["pred_masks"]


def object_score(out: Optional[dict]) -> Optional[float]:
    """The object-score logit of a frame output (> 0: sam2 deems the object present), None without one."""
    if out is None or out.get("object_score_logits") is None:
        return None
    return float(out["object_score_logits"].float().reshape(-1)[0])


def memory_window(model, frame: int, num_frames: int) -> tuple[int, int]:
    """The earliest non-conditioning frames sam2 reads when it tracks ``frame`` forward, as
    ``SAM2Base._prepare_memory_conditioned_features`` selects them: (earliest memory, earliest object pointer).

    Memories: ``frame - 1`` and every ``memory_temporal_stride_for_eval``-th frame from ``((frame - 2) // stride) *
    stride`` back, ``num_maskmem - 1`` frames in all. Pointers: the ``min(num_frames, max_obj_ptrs_in_encoder) - 1``
    frames before ``frame``. Both bounds only grow with ``frame``."""
    stride = max(1, model.memory_temporal_stride_for_eval)
    memory_from = min(frame - 1, ((frame - 2) // stride) * stride - max(0, model.num_maskmem - 3) * stride)
    pointers_from = frame - (min(num_frames, model.max_obj_ptrs_in_encoder) - 1)
    return memory_from, pointers_from


def prune_outputs(model, state: dict, next_frame: int) -> None:
    """Drop what tracking ``next_frame`` and later frames forward will not read (``memory_window``): outputs older
    than both windows go, those within the pointer window only keep ``obj_ptr`` and ``object_score_logits`` (the
    other keys None). Conditioning (prompted) outputs are kept."""
    memory_from, pointers_from = memory_window(model, next_frame, num_frames(state))
    for od in state["output_dict_per_obj"].values():
        nc = od["non_cond_frame_outputs"]
        for k in [k for k in nc if k < memory_from]:
            if k < pointers_from:
                del nc[k]
            elif nc[k].get("maskmem_features") is not None:
                nc[k] = {**dict.fromkeys(FRAME_OUTPUT_KEYS), "obj_ptr": nc[k]["obj_ptr"],
                         "object_score_logits": nc[k]["object_score_logits"]}


def record_tracked(state: dict, frame: int) -> None:
    """Record that every object was tracked forward on ``frame``, as ``propagate_in_video`` does for each frame it
    yields (``frames_tracked_per_obj[obj_idx][frame] = {"reverse": False}``), keeping only this frame's record.

    ``add_new_points_or_box`` / ``add_new_mask`` read the record: a prompt on a recorded frame corrects the tracked
    mask (memory attention, the frame's mask as the decoder's previous logits); on any other frame it starts the
    object afresh there (an initial conditioning frame). A live stream takes prompts on its latest frame only, so
    older records are never read: keeping one per object keeps the state flat."""
    for obj_idx in state["output_dict_per_obj"]:
        state["frames_tracked_per_obj"][obj_idx] = {frame: {"reverse": False}}


def prune_inputs(state: dict, before_frame: int) -> None:
    """Drop the point and mask prompts of frames before ``before_frame`` that are not the object's conditioning
    frames (corrections already folded into that frame's output and memory). sam2 reads an object's prompts on a
    frame only when a new prompt arrives on that same frame (``clear_old_points=False``) and when the object is
    removed (``remove_object`` clears its prompted frames, downgrading conditioning outputs), so prompts on frames
    a stream has left are never read again, except on conditioning frames, which are kept."""
    for key in ("point_inputs_per_obj", "mask_inputs_per_obj"):
        for obj_idx, per_frame in state[key].items():
            cond = state["output_dict_per_obj"][obj_idx]["cond_frame_outputs"]
            for k in [k for k in per_frame if k < before_frame and k not in cond]:
                del per_frame[k]


class ObjectFrames(NamedTuple):
    """An object's frames in a state: ``cond`` (prompted: conditioning outputs, also those of prompts not yet
    consolidated), ``non_cond`` (tracked: non-conditioning outputs) and ``tracked`` (frame -> tracked in reverse,
    as ``propagate_in_video`` recorded it)."""

    cond: frozenset
    non_cond: frozenset
    tracked: dict


def object_frames(state: dict, obj_idx: int) -> ObjectFrames:
    """Which frames object ``obj_idx`` holds state on (``ObjectFrames``)."""
    od, temp = state["output_dict_per_obj"][obj_idx], state["temp_output_dict_per_obj"][obj_idx]
    return ObjectFrames(frozenset(od["cond_frame_outputs"]) | frozenset(temp["cond_frame_outputs"]),
                        frozenset(od["non_cond_frame_outputs"]),
                        {f: r["reverse"] for f, r in state["frames_tracked_per_obj"][obj_idx].items()})


def drop_frames(state: dict, obj_idx: int, frames) -> None:
    """Drop object ``obj_idx``'s non-conditioning outputs on ``frames``, with what belongs to them: the record that
    the frame was tracked (``frames_tracked_per_obj``) and prompts given there (corrections, folded into the
    output). Conditioning (prompted) frames are kept. Afterwards sam2 holds nothing of the object on those frames,
    as if they had never been tracked: the caller must not let sam2 read them (``memory_window``) where upstream,
    holding them, would."""
    cond = state["output_dict_per_obj"][obj_idx]["cond_frame_outputs"]
    parts = [state["output_dict_per_obj"][obj_idx]["non_cond_frame_outputs"],
             state["frames_tracked_per_obj"][obj_idx], state["point_inputs_per_obj"][obj_idx],
             state["mask_inputs_per_obj"][obj_idx]]
    for f in frames:
        if f not in cond:
            for part in parts:
                part.pop(f, None)


def output_counts(state: dict) -> dict[str, dict[str, int]]:
    """Per object id (as str): its conditioning outputs, non-conditioning outputs holding a memory, and those
    holding only an object pointer (``prune_outputs``)."""
    counts = {}
    for obj_idx, od in state["output_dict_per_obj"].items():
        nc = od["non_cond_frame_outputs"]
        with_memory = sum(1 for o in nc.values() if o.get("maskmem_features") is not None)
        counts[str(state["obj_idx_to_id"][obj_idx])] = {
            "cond": len(od["cond_frame_outputs"]), "non_cond_memories": with_memory,
            "non_cond_pointers_only": len(nc) - with_memory,
        }
    return counts


def per_frame_tensors(state: dict, inputs: bool = True) -> list:
    """The containers of per-frame state (for byte counts): per-object outputs, temporary outputs, and with
    ``inputs`` the per-object point and mask prompts."""
    parts = [state["output_dict_per_obj"], state["temp_output_dict_per_obj"]]
    if inputs:
        parts += [state["point_inputs_per_obj"], state["mask_inputs_per_obj"]]
    return parts


# ---- SAM2VideoPredictor: model attributes and hooks ----------------------------------------------------------------------

def video_predictor_view(predictor, forward_image):
    """A shallow copy of a ``SAM2VideoPredictor`` whose ``forward_image`` (B x 3 x S x S float32 -> the dict
    ``backbone_out`` builds) is ``forward_image``: the same modules and weights, the original untouched.

    Relies on ``_get_image_feature`` (every frame's backbone pass: tracking, prompts, ``init_state``'s warm-up)
    calling ``self.forward_image(image)``, and on ``nn.Module`` storing a plain callable as an instance attribute,
    which shadows the class's method for that instance only."""
    view = copy.copy(predictor)
    view.forward_image = forward_image
    return view



def fix_memory_dtype(model: torch.nn.Module) -> None:
    """Cast memory attention's ``memory``/``memory_pos`` to the current features' dtype (idempotent).

    sam2 stores memories as bfloat16; on CUDA autocast reconciles dtypes, on CPU a frame whose memory holds no
    float32 object pointers fails with "mat1 and mat2 must have the same dtype". When pointers are present,
    ``torch.cat`` already promotes the memory to float32, so this cast changes nothing else. A forward pre-hook on
    ``model.memory_attention``; relies on ``_prepare_memory_conditioned_features`` passing ``curr``, ``memory`` and
    ``memory_pos`` by keyword. Marks the module with ``_sam2_serve_dtype_fix`` (our attribute).
    """
    attn = model.memory_attention
    if getattr(attn, "_sam2_serve_dtype_fix", False):
        return

    def _cast(_module, args, kwargs):
        curr = kwargs.get("curr", args[0] if args else None)
        ref = curr[0] if isinstance(curr, (list, tuple)) else curr
        for key in ("memory", "memory_pos"):
            value = kwargs.get(key)
            if isinstance(value, torch.Tensor) and ref is not None and value.dtype != ref.dtype:
                kwargs[key] = value.to(ref.dtype)
        return args, kwargs

    attn.register_forward_pre_hook(_cast, with_kwargs=True)
    attn._sam2_serve_dtype_fix = True


# sam2's optional CUDA extension (sam2._C: connected components, for hole filling) is absent from CPU builds; every
# video frame then warns, and the masks are unaffected (the warning says so). The warning's text starts with the
# ImportError's message, then "\n\nSkipping the post-processing step ..." (a pattern matches from the start, and
# its ``.*`` stops at newlines: the ImportError's text is what can be matched).
_MISSING_EXTENSION_MESSAGE = ".*cannot import name '_C' from 'sam2'"


def silence_missing_extension_warnings() -> None:
    """Ignore sam2's warnings that its CUDA extension is missing, from here on and process-wide (filters are
    global: set where a video model is constructed, not around each threaded step). Idempotent: adds the filter
    only when it is not in place."""
    for action, message, category, _module, _lineno in warnings.filters:
        if action == "ignore" and message is not None and message.pattern == _MISSING_EXTENSION_MESSAGE \
                and category is UserWarning:
            return
    warnings.filterwarnings("ignore", message=_MISSING_EXTENSION_MESSAGE, category=UserWarning)


# ---- checkpoints ------------------------------------------------------------------------------------------------------

# The last bias of the decoder's object-score head in a sam2 state dict. Test checkpoints (sam2_serve.testing) set it
# to +10: with random weights the score is negative and sam2 blanks every video mask.
OBJECT_SCORE_BIAS_KEY = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
