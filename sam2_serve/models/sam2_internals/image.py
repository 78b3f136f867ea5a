"""sam2 internals, images: ``SAM2ImagePredictor``, ``SAM2Base.forward_image`` and ``MaskDecoder`` (see the package
docstring: every touch is listed in ``TOUCHES`` and tested against the pinned sam2)."""

from __future__ import annotations

import copy
from typing import Sequence

import torch


# ---- SAM2ImagePredictor ---------------------------------------------------------------------------------------------
# The predictor keeps the image it was last given in ``_features`` / ``_orig_hw`` / ``_is_image_set``. A server
# decodes many images at once from features it is handed, so it works on shallow copies ("views") whose slots it sets
# itself, and calls the two private steps of ``predict`` (``_prep_prompts``, ``_predict``) to keep tensors on the
# device (``predict`` returns numpy float32 copies of full-size masks).

def image_predictor_view(predictor, forward_image=None):
    """A shallow copy of a ``SAM2ImagePredictor`` with no image set: it shares the model and ``_transforms``, and
    owns its feature slots. Relies on the predictor's per-image state being plain attributes that
    ``reset_predictor`` (public) rebinds (``_features``, ``_orig_hw``, ``_is_image_set``, ``_is_batch``), so a view
    never writes into the original's.

    ``forward_image``: a replacement for the model's ``forward_image`` in this view only (``with_forward_image``),
    so that upstream's ``set_image_batch`` runs unchanged around another runtime's network forward."""
    view = copy.copy(predictor)
    view.reset_predictor()
    if forward_image is not None:
        view.model = with_forward_image(predictor.model, forward_image)
    return view


def image_features(view) -> tuple[dict, list]:
    """After ``set_image_batch``: its ``_features`` (``{"image_embed": B x C x H x W, "high_res_feats": [B x C' x H'
    x W', ...]}``) and ``_orig_hw`` (one (h, w) per image). sam2 has no public getter for the high-resolution features
    or the sizes (``get_image_embedding`` returns ``image_embed`` only); a decoder needs all of them."""
    return view._features, view._orig_hw


def set_image_features(view, features: dict, orig_hw: Sequence[tuple[int, int]]) -> None:
    """Leave ``view`` as ``set_image``/``set_image_batch`` would have, without running the image encoder: writes
    ``_features`` (the layout ``image_features`` returns), ``_orig_hw`` and ``_is_image_set``."""
    view._features = features
    view._orig_hw = list(orig_hw)
    view._is_image_set = True


def prep_prompts(view, point_coords, point_labels, box, mask_input, normalize_coords: bool = True):
    """``SAM2ImagePredictor._prep_prompts``: ``predict``'s first step (numpy prompts in pixels -> model-input tensors
    on the device, via ``_transforms`` and ``_orig_hw``). Returns ``(mask_input, coords, labels, box)``."""
    return view._prep_prompts(point_coords, point_labels, box, mask_input, normalize_coords)


def predict_tensors(view, point_coords, point_labels, boxes=None, mask_input=None, multimask_output: bool = True,
                    return_logits: bool = False):
    """``SAM2ImagePredictor._predict``: ``predict``'s decode step on prepared prompt tensors (B prompts at once);
    returns torch ``(masks B x C x H x W at _orig_hw, iou predictions B x C, low-res logits B x C x 256 x 256)``, on
    the device, without ``predict``'s conversion of full-size masks to float32 numpy."""
    return view._predict(point_coords, point_labels, boxes=boxes, mask_input=mask_input,
                         multimask_output=multimask_output, return_logits=return_logits)


class _LowResTransforms:
    """``SAM2Transforms`` whose ``postprocess_masks`` leaves logits at the decoder's 256 x 256 (as float, like the
    real one); everything else is the wrapped transforms'."""

    def __init__(self, transforms):
        self._transforms = transforms

    def __getattr__(self, name):  # names not found on this object
        if name == "_transforms":  # not yet set (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._transforms, name)

    def postprocess_masks(self, masks, orig_hw):
        return masks.float()


def use_low_res_masks(view, transforms) -> None:
    """Make ``predict_tensors(view, ...)`` return low-res logits (256 x 256) as its "masks": replaces the view's
    ``_transforms`` by ``transforms`` minus the upsampling. Relies on ``_predict`` using ``_transforms`` only for
    ``postprocess_masks(low_res_masks, orig_hw)``. Automatic mask generation upsamples only the masks that survive
    its filters (``transforms.postprocess_masks``, the real one, called by the caller)."""
    view._transforms = _LowResTransforms(transforms)


# ---- SAM2Base.forward_image ------------------------------------------------------------------------------------------
# sam2_serve.models.fast_encoder exports ``forward_image`` (image encoder + the decoder's high-res projections) to
# another runtime, and puts that runtime in its place where upstream code calls it. The runtime's outputs are a flat
# list of tensors; sam2 wants its dict back.

def backbone_tensors(backbone_out: dict) -> tuple[torch.Tensor, ...]:
    """``forward_image``'s output as a flat tuple: ``vision_features`` (B x C x h x w), then ``vision_pos_enc``, then
    ``backbone_fpn`` (one B x C_i x H_i x W_i map per level each, highest resolution first)."""
    pos, fpn = backbone_out["vision_pos_enc"], backbone_out["backbone_fpn"]
    assert len(pos) == len(fpn), (len(pos), len(fpn))
    return (backbone_out["vision_features"], *pos, *fpn)


def backbone_out(tensors) -> dict:
    """The dict ``forward_image`` returns, from ``backbone_tensors``' flat sequence (1 + 2 x levels tensors);
    ``vision_features`` (in sam2 the same tensor as the last map) comes as its own copy."""
    levels = (len(tensors) - 1) // 2
    assert len(tensors) == 1 + 2 * levels, len(tensors)
    return {"vision_features": tensors[0], "vision_pos_enc": list(tensors[1:1 + levels]),
            "backbone_fpn": list(tensors[1 + levels:])}


class _ModelWithForwardImage:
    """A model seen through another ``forward_image``; every other attribute is the model's."""

    def __init__(self, model, forward_image):
        self._model = model
        self.forward_image = forward_image

    def __getattr__(self, name):  # names not found on this object
        if name == "_model":  # not yet set (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._model, name)


def with_forward_image(model, forward_image):
    """``model`` with ``forward_image`` (B x 3 x S x S float32 -> the dict ``backbone_out`` builds) in place of its
    own, for ``SAM2ImagePredictor.set_image_batch``: relies on it calling ``self.model.forward_image(img_batch)``
    once for the whole batch and otherwise reading ``self.model``'s attributes (``device``,
    ``_prepare_backbone_features``, ``directly_add_no_mem_embed``, ``no_mem_embed``), never writing them."""
    return _ModelWithForwardImage(model, forward_image)


# ---- MaskDecoder ------------------------------------------------------------------------------------------------------
# sam2_serve.models.mask_decoder wraps the decoder's TwoWayTransformer (channels-last inputs on CPU; a stop after the
# transformer for automatic masks). That relies on how MaskDecoder.predict_masks calls it and reads its outputs.

def mask_decoder_transformer(model) -> torch.nn.Module:
    """``model.sam_mask_decoder.transformer``: the ``TwoWayTransformer`` that ``MaskDecoder.predict_masks`` calls
    once per decode as ``transformer(src, pos_src, tokens)`` -> ``(hs, src)``."""
    return model.sam_mask_decoder.transformer


def replace_mask_decoder_transformer(model, transformer: torch.nn.Module) -> None:
    """Set ``model.sam_mask_decoder.transformer`` (a submodule: its weights move one level down in the state dict;
    so it is done after the weights are loaded)."""
    model.sam_mask_decoder.transformer = transformer


def single_dense_pe(image_pe: torch.Tensor) -> torch.Tensor:
    """The one positional encoding in the transformer's ``image_pe`` argument (1 x C x H x W). ``predict_masks``
    passes ``repeat_interleave(get_dense_pe(), B)``, and asserts that ``get_dense_pe()`` has batch size 1: every row
    is the same encoding, so one row can be broadcast instead of read B times."""
    return image_pe[:1]


def repeats_image(args: tuple, kwargs: dict) -> bool:
    """Whether a ``torch.repeat_interleave(*args, **kwargs)`` call is one of ``MaskDecoder.predict_masks``'s
    repetitions of the image or its positional encoding per prompt: ``repeat_interleave(x, B, dim=0)`` of a batch-1
    ``x`` by an int ``B`` > 1 (``repeat_image=True``: prompts on one image; ``image_pe`` always). Its result is B
    equal rows, which ``sam2_serve.models.mask_decoder.SharedRows`` hands on as a broadcast view."""
    if len(args) < 2 or not isinstance(args[0], torch.Tensor) or type(args[1]) is not int:
        return False
    dim = kwargs.get("dim", args[2] if len(args) > 2 else None)
    extra = set(kwargs) - {"dim", "output_size"}
    return dim == 0 and not extra and args[0].dim() >= 1 and args[0].shape[0] == 1 and args[1] > 1


def run_mask_decoder_under(model, enter, leave) -> None:
    """Call ``enter(decoder, args, kwargs)`` before and ``leave(decoder, args, output)`` after every forward of
    ``model.sam_mask_decoder`` (forward hooks; ``leave`` runs also when the forward raises, with ``output`` None).
    sam2 calls the decoder as a module (``SAM2ImagePredictor._predict``, ``SAM2Base._forward_sam_heads``), so hooks
    see every decode. ``enter``/``leave`` are kept by the module: module-level functions keep it deep-copyable and
    picklable."""
    model.sam_mask_decoder.register_forward_pre_hook(enter, with_kwargs=True)
    model.sam_mask_decoder.register_forward_hook(leave, always_call=True)


def iou_predictions(model, tokens: torch.Tensor) -> torch.Tensor:
    """The four predicted IoUs (B x 4, single-mask token first) that ``predict_masks`` derives from the
    transformer's output tokens ``tokens`` (B x T x C): ``iou_prediction_head`` on the IoU token, which follows the
    object-score token when the decoder has one (``pred_obj_scores``)."""
    decoder = model.sam_mask_decoder
    iou_token = 1 if decoder.pred_obj_scores else 0
    return decoder.iou_prediction_head(tokens[:, iou_token, :])
