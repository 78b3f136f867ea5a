"""Every place this project relies on sam2's private internals, in one module (this package: ``image`` and ``video``).

The model layer runs sam2's own code (network, prompt encoding, tracking); to serve it without sam2's per-image and
per-video state it needs a few things sam2 does not offer publicly: private attributes and methods, the layout of
``inference_state`` and its per-frame outputs, and how sam2 calls its own submodules. Each such touch is one small
function or class here, whose docstring says what it reads or writes of sam2 and why this project needs it. The
rest of the project calls these and never reaches into sam2's private attributes itself.

All of this is sam2 ``SAM2_PIN``'s behaviour (the version pyproject.toml pins). ``tests/unit/test_sam2_internals.py``
and ``test_sam2_internals_video.py`` check, on real sam2 objects, that the installed sam2 is that version and that
each touch in ``TOUCHES`` still holds (names, signatures, attributes, state keys, call patterns). Before moving the
pin, review every touch.

Nothing here changes global state at import; ``silence_missing_extension_warnings`` does, when called.
"""

from __future__ import annotations

SAM2_PIN = "1.1.0"

# Each name below is one touch (and what the package exports). The tests check each; one added here that no test
# uses fails them.
__all__ = TOUCHES = (
    # SAM2ImagePredictor
    "image_predictor_view", "image_features", "set_image_features", "prep_prompts", "predict_tensors",
    "use_low_res_masks",
    # SAM2Base.forward_image: its output, and another runtime in its place (sam2_serve.models.fast_encoder)
    "backbone_tensors", "backbone_out", "with_forward_image",
    # MaskDecoder
    "mask_decoder_transformer", "replace_mask_decoder_transformer", "single_dense_pe", "iou_predictions",
    "repeats_image", "run_mask_decoder_under",
    # SAM2VideoPredictor: inference_state and its per-frame outputs
    "new_inference_state", "state_frames", "video_size", "num_frames", "object_ids", "frame_features",
    "set_frame_features", "consolidate_prompts", "track_object", "track_object_then_memory", "video_res_masks",
    "frame_output", "mask_logits", "FRAME_OUTPUT_KEYS", "object_score", "memory_window", "prune_outputs",
    "output_counts", "per_frame_tensors",
    # SAM2VideoPredictor: live streams (frames pushed one at a time, prompts on the latest frame)
    "record_tracked", "prune_inputs",
    # SAM2VideoPredictor: sessions on long videos (bounded state)
    "object_frames", "drop_frames",
    # SAM2VideoPredictor: model attributes and hooks
    "video_predictor_view", "fix_memory_dtype", "silence_missing_extension_warnings",
    # checkpoints
    "OBJECT_SCORE_BIAS_KEY",
)

from sam2_serve.models.sam2_internals.image import (  # noqa: E402  (re-exported: callers use the package)
    image_predictor_view, image_features, set_image_features, prep_prompts, predict_tensors,
    use_low_res_masks, backbone_tensors, backbone_out, with_forward_image, mask_decoder_transformer,
    replace_mask_decoder_transformer, single_dense_pe, iou_predictions, repeats_image, run_mask_decoder_under,
)
from sam2_serve.models.sam2_internals.video import (  # noqa: E402  (re-exported: callers use the package)
    FRAME_OUTPUT_KEYS, new_inference_state, state_frames, video_size, num_frames, object_ids, frame_features,
    set_frame_features, consolidate_prompts, track_object, track_object_then_memory, video_res_masks, frame_output,
    mask_logits, object_score, memory_window, prune_outputs, record_tracked, prune_inputs, object_frames,
    drop_frames, output_counts, per_frame_tensors, video_predictor_view, fix_memory_dtype,
    silence_missing_extension_warnings,
    OBJECT_SCORE_BIAS_KEY,
)
