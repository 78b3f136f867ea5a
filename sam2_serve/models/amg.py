"""Automatic mask generation (SAM 2's ``SAM2AutomaticMaskGenerator``) split into steps a server can spread out.

Upstream runs everything in one process, and ``SAM2ImagePredictor._predict`` upsamples *every* candidate mask to
full image resolution (float32, H x W each) before any is filtered: on a 1800x1200 image that is 1.7 GB of logits
per 64-point batch with ``multimask_output``, and most of the time of the whole call. Here the same upstream pieces
(``sam2.utils.amg`` helpers, ``SAM2ImagePredictor._predict``, ``SAM2Transforms.postprocess_masks``; the private
ones reached through ``sam2_serve.models.sam2_internals``) run in an order that gives the same result for less work:

1. ``plan_crops`` (ingress): crop boxes and point grids, exactly ``generate_crop_boxes`` /
   ``build_all_layer_point_grids``; each crop's points split into upstream's batches of ``points_per_batch``.
2. ``decode_batch`` (decoder replica, on a cached embedding): the mask decoder at low resolution (256 x 256), the
   predicted-IoU filter, then upsampling *of the survivors only*, a few at a time under a memory budget; stability
   score, stability filter, boxes, crop-edge filter as upstream; survivors leave as COCO RLE (pycocotools), so a
   batch's answer is kilobytes, not the gigabyte upstream holds.
3. ``merge`` (ingress): per-crop box NMS, uncropping, cross-crop NMS, exactly upstream's ``torchvision`` calls on the
   same inputs in the same order.

Every filter upstream applies is per mask, so filtering earlier and upsampling fewer masks changes nothing in the
output. Batches hold upstream's prompts; within one, the mask decoder runs ``decoder_points`` prompts at a time
(each prompt is decoded independently; this bounds the decoder's memory, whose image features become per-prompt
after the transformer's first attention, and matched upstream's 64-prompt pass bit for bit here). Three savings
come from how the mask decoder is run (``sam2_serve.models.mask_decoder``): a prompt none of whose four predicted
IoUs clears ``pred_iou_thresh`` stops after the decoder's transformer (its mask would be filtered out; the upscaling
that makes it is a third of a pass); the image's part of a batch (its repeats, sums and first projections) is
computed once, not per prompt (bit-identical); and on CPU the transformer reads channels-last inputs (17 % faster a
batch; logits within 1e-6 of sam2's, so a pixel whose logit sits on the threshold may flip: masks match upstream's
to IoU > 0.9999, not byte for byte).

Coordinates: points are (x, y) pixels; boxes are (x0, y0, x1, y1) pixels, inclusive (``batched_mask_to_box``),
crop boxes are (x0, y0, x1, y1) with exclusive ends (``generate_crop_boxes``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import numpy as np

from sam2_serve.common.types import AmgParams, AmgResult, AutoMask, BatchMasks

if TYPE_CHECKING:  # keep the ingress free of model imports at module load
    from sam2_serve.common.types import ImageEmbedding
    from sam2_serve.models.image import ImageModel


@dataclass(frozen=True)
class CropPlan:
    """One crop of the image to encode and prompt with a grid.

    Attributes:
        index: position in upstream's crop order (0 is the whole image).
        box: (x0, y0, x1, y1) pixels of the original image, ends exclusive.
        layer: crop layer (0 for the whole image).
        points: float64 (N, 2) grid as (x, y) pixels of the crop.
    """

    index: int
    box: tuple[int, int, int, int]
    layer: int
    points: np.ndarray = field(repr=False)

    @property
    def hw(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.box
        return (y1 - y0, x1 - x0)

    def batches(self, points_per_batch: int) -> list[np.ndarray]:
        """Upstream's batches (``batch_iterator``): consecutive slices of ``points_per_batch`` points."""
        return [self.points[i : i + points_per_batch] for i in range(0, len(self.points), points_per_batch)]


def plan_crops(orig_hw: tuple[int, int], params: AmgParams) -> list[CropPlan]:
    """Crops and their point grids for an image of ``orig_hw`` = (height, width), in upstream's order."""
    from sam2.utils.amg import build_all_layer_point_grids, generate_crop_boxes

    grids = build_all_layer_point_grids(params.points_per_side, params.crop_n_layers,
                                        params.crop_n_points_downscale_factor)
    boxes, layers = generate_crop_boxes(tuple(orig_hw), params.crop_n_layers, params.crop_overlap_ratio)
    plans = []
    for i, (box, layer) in enumerate(zip(boxes, layers)):
        x0, y0, x1, y1 = (int(v) for v in box)
        scale = np.array([y1 - y0, x1 - x0])[None, ::-1]  # (w, h): grids are (x, y) fractions
        plans.append(CropPlan(i, (x0, y0, x1, y1), int(layer), grids[layer] * scale))
    return plans


@functools.lru_cache(maxsize=16)
def _transforms_for(image_size: int, min_mask_region_area: int):
    """``SAM2Transforms`` as ``SAM2AutomaticMaskGenerator`` configures its predictor (hole/sprinkle areas).

    Cached and shared between threads: building one scripts a torch module (slow), and ``transform_coords`` /
    ``postprocess_masks`` keep no state between calls. Bounded, since the area is a request option."""
    from sam2.utils.transforms import SAM2Transforms

    return SAM2Transforms(resolution=image_size, mask_threshold=0.0, max_hole_area=min_mask_region_area,
                          max_sprinkle_area=min_mask_region_area)


def encode_rles(masks) -> list[dict]:
    """Bool torch (K, H, W) -> K COCO compressed RLEs via pycocotools (column-major, as COCO defines)."""
    from pycocotools import mask as mask_utils

    if masks.shape[0] == 0:
        return []
    # Fortran-ordered (H, W, K) is C-ordered (K, W, H): one transposing copy, then a zero-copy bool -> uint8 view.
    cols = masks.transpose(1, 2).contiguous().numpy().view(np.uint8)
    return mask_utils.encode(cols.transpose(2, 1, 0))


def decode_batch(model: "ImageModel", emb: "ImageEmbedding", points: np.ndarray, crop_box: Sequence[int],
                 orig_hw: tuple[int, int], params: AmgParams, upsample_bytes: int = 64 << 20,
                 decoder_points: int = 16) -> BatchMasks:
    """Upstream's ``_process_batch`` for one batch of grid points, filtering before upsampling.

    Args:
        model: the decoder replica's ``ImageModel``.
        emb: embedding of the crop (``emb.orig_hw`` is the crop's (h, w)).
        points: float (N, 2) prompts as (x, y) pixels of the crop.
        crop_box: (x0, y0, x1, y1) of the crop in the original image, ends exclusive.
        orig_hw: (height, width) of the original image.
        upsample_bytes: memory budget for full-resolution logits held at once (sets how many masks are
            upsampled together); does not change the result.
        decoder_points: prompts per mask-decoder pass. The decoder's image features are per prompt after the
            transformer's first attention (~4 MB each per activation), so upstream's 64-prompt pass peaks near
            2 GB; smaller passes bound that.
            Each prompt is decoded independently (outputs matched upstream's bit for bit in our tests).
    """
    steps = decode_batch_steps(model, emb, points, crop_box, orig_hw, params, upsample_bytes, decoder_points)
    while True:
        done, result = run_step(model, steps)
        if done:
            return result


def decode_batch_steps(model: "ImageModel", emb: "ImageEmbedding", points: np.ndarray, crop_box: Sequence[int],
                       orig_hw: tuple[int, int], params: AmgParams, upsample_bytes: int = 64 << 20,
                       decoder_points: int = 16) -> Iterator[None]:
    """``decode_batch`` in steps (one decoder pass or one upsampling chunk each), so that a replica can run other
    work, such as an interactive click, between them. Drive it with ``run_step`` until it reports done."""
    return _decode_batch(model, emb, points, crop_box, orig_hw, params, upsample_bytes, max(1, decoder_points))


def run_step(model: "ImageModel", steps: Iterator[None]) -> tuple[bool, Optional[BatchMasks]]:
    """One step of ``decode_batch_steps`` -> (done, the batch's result when done). The torch contexts are entered
    per step, never held across steps, since other work runs on the same thread in between."""
    import torch

    with torch.inference_mode(), model.loaded.autocast():
        try:
            next(steps)
            return False, None
        except StopIteration as finished:
            return True, finished.value


def _decode_batch(model, emb, points, crop_box, orig_hw, params: AmgParams, upsample_bytes: int,
                  decoder_points: int) -> BatchMasks:
    import torch
    from sam2.utils.amg import (batch_iterator, batched_mask_to_box, calculate_stability_score,
                                is_box_near_crop_edge, uncrop_masks)

    from sam2_serve.models import mask_decoder, sam2_internals

    transforms = _transforms_for(model.image_size, params.min_mask_region_area)
    view = model.predictor_for(emb)
    # The decoder's masks stay 256 x 256 logits; survivors of the filters are upsampled below (transforms).
    sam2_internals.use_low_res_masks(view, transforms)
    device = model.loaded.device
    im_size = tuple(emb.orig_hw)
    orig_h, orig_w = orig_hw

    pts = torch.as_tensor(np.asarray(points), dtype=torch.float32, device=device)
    in_points = transforms.transform_coords(pts, normalize=True, orig_hw=im_size)
    in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=device)
    n_per_point = 3 if params.multimask_output else 1
    candidates = int(in_points.shape[0]) * n_per_point
    # A prompt none of whose four predicted IoUs clears pred_iou_thresh cannot yield a mask that passes the filter
    # (the IoU sam2 reports for a mask is one of them): its decode stops after the transformer and skips the mask
    # upscaling (sam2_serve.models.mask_decoder). The margin covers rounding between the stopped pass and a full one.
    skip_hopeless = params.pred_iou_thresh > 0.0 and not params.use_m2m and mask_decoder.can_stop(model.loaded.model)
    min_iou = params.pred_iou_thresh - _IOU_MARGIN[model.loaded.dtype]
    decode = lambda r: sam2_internals.predict_tensors(  # noqa: E731
        view, in_points[r, None, :], in_labels[r, None], multimask_output=params.multimask_output, return_logits=True)
    parts, decoded, stopped = [], [], 0
    for i in range(0, in_points.shape[0], decoder_points):
        rows = torch.arange(i, min(i + decoder_points, in_points.shape[0]), device=device)
        if skip_hopeless:
            kept, part = _decode_hopeful(model.loaded.model, decode, rows, min_iou)
            stopped += len(rows) - len(kept)
            rows = kept
        else:
            part = decode(rows)
        if part is not None:
            parts.append(part)
            decoded.append(rows)
        yield  # between steps the batch holds low-res logits only, never a pass's activations
    if not parts:
        return _empty_batch(candidates, stopped)
    logits, iou_preds, low_res = (torch.cat([p[k] for p in parts]) for k in range(3))
    del parts
    logits, iou_preds, low_res = logits.flatten(0, 1), iou_preds.flatten(0, 1), low_res.flatten(0, 1)
    pts = pts[torch.cat(decoded)].repeat_interleave(n_per_point, dim=0)

    if params.use_m2m:
        # Upstream's refine_with_m2m: one more decoder pass per candidate, prompted by its own low-res mask.
        m2m_points = transforms.transform_coords(pts, normalize=True, orig_hw=im_size)
        m2m_labels = torch.ones(m2m_points.shape[0], dtype=torch.int, device=device)
        new_logits, new_ious = [], []
        for cur_points, cur_labels, cur_masks in batch_iterator(params.points_per_batch, m2m_points, m2m_labels,
                                                                low_res):
            refined, ious, _ = sam2_internals.predict_tensors(view, cur_points[:, None, :], cur_labels[:, None],
                                                              mask_input=cur_masks[:, None, :],
                                                              multimask_output=False, return_logits=True)
            new_logits.append(refined)
            new_ious.append(ious)
            yield
        logits = torch.cat(new_logits, dim=0).squeeze(1)
        iou_preds = torch.cat(new_ious, dim=0).squeeze(1)
    del low_res

    keep = torch.arange(logits.shape[0], device=device)
    if params.pred_iou_thresh > 0.0:
        keep = keep[iou_preds > params.pred_iou_thresh]

    chunk = max(1, int(upsample_bytes // (4 * im_size[0] * im_size[1] * 2)))  # logits + interpolation scratch
    out_idx, out_stab, out_boxes, rles, areas = [], [], [], [], []
    for start in range(0, len(keep), chunk):
        idx = keep[start : start + chunk]
        masks = transforms.postprocess_masks(logits[idx][:, None], im_size)[:, 0]
        stability = calculate_stability_score(masks, params.mask_threshold, params.stability_score_offset)
        if params.stability_score_thresh > 0.0:
            sel = stability >= params.stability_score_thresh
            idx, masks, stability = idx[sel], masks[sel], stability[sel]
        binary = masks > params.mask_threshold
        del masks
        boxes = batched_mask_to_box(binary)
        near_edge = is_box_near_crop_edge(boxes, list(crop_box), [0, 0, orig_w, orig_h])
        if torch.any(near_edge):
            sel = ~near_edge
            idx, stability, boxes, binary = idx[sel], stability[sel], boxes[sel], binary[sel]
        full = uncrop_masks(binary, list(crop_box), orig_h, orig_w)
        rles.extend(encode_rles(full.cpu()))
        areas.append(binary.sum(dim=(-1, -2), dtype=torch.int64).cpu())
        out_idx.append(idx)
        out_stab.append(stability.float())
        out_boxes.append(boxes.to(torch.int64))
        del binary, full
        yield

    def cat(parts, empty_shape, dtype):
        return torch.cat(parts).cpu().numpy() if parts else np.zeros(empty_shape, dtype)

    idx = torch.cat(out_idx) if out_idx else keep[:0]
    return BatchMasks(
        iou_preds=iou_preds[idx].float().cpu().numpy(),
        stability=cat(out_stab, (0,), np.float32),
        boxes=cat(out_boxes, (0, 4), np.int64).reshape(-1, 4),
        points=pts[idx].cpu().numpy().reshape(-1, 2),
        rles=rles,
        areas=cat(areas, (0,), np.int64),
        candidates=candidates,
        upsampled=int(len(keep)),
        stopped=stopped,
    )


def _decode_hopeful(model, decode, rows, min_iou: float):
    """``decode(rows)`` for the prompts whose best predicted IoU exceeds ``min_iou``; the others stop after the
    transformer. -> (rows decoded, ``decode``'s result for them, or None when there are none)."""
    from sam2_serve.models import mask_decoder

    outputs = mask_decoder.transformer_pass(model, lambda: decode(rows))
    keep = (outputs.ious.max(dim=1).values > min_iou).nonzero()[:, 0]
    if len(keep) == 0:
        return rows[:0], None
    return rows[keep], mask_decoder.resume(model, outputs, keep, lambda: decode(rows[keep]))


# float32: the two passes agree to ~1e-7 (tests: 1e-5); bfloat16 rounds IoUs near 0.8 by up to ~1e-3.
_IOU_MARGIN = {"float32": 1e-4, "bfloat16": 0.02}


def _empty_batch(candidates: int, stopped: int) -> BatchMasks:
    return BatchMasks(iou_preds=np.zeros(0, np.float32), stability=np.zeros(0, np.float32),
                      boxes=np.zeros((0, 4), np.int64), points=np.zeros((0, 2), np.float32), rles=[],
                      areas=np.zeros(0, np.int64), candidates=candidates, upsampled=0,
                      stopped=stopped)


def merge(crops: Sequence[CropPlan], batches: Sequence[Sequence[BatchMasks]], params: AmgParams) -> list[AutoMask]:
    """Upstream's per-crop NMS, uncropping and cross-crop NMS; returns masks sorted by predicted IoU (desc).

    ``batches[i]`` are crop ``crops[i]``'s batch results in batch order.
    """
    import torch
    from sam2.utils.amg import uncrop_boxes_xyxy, uncrop_points
    from torchvision.ops.boxes import batched_nms, box_area

    ious, stabs, boxes, points, crop_boxes, rles, areas = [], [], [], [], [], [], []
    for crop, results in zip(crops, batches):
        c_iou = torch.as_tensor(np.concatenate([r.iou_preds for r in results] or [np.zeros(0, np.float32)]))
        c_boxes = torch.as_tensor(np.concatenate([r.boxes for r in results] or [np.zeros((0, 4), np.int64)]))
        c_points = torch.as_tensor(np.concatenate([r.points for r in results] or [np.zeros((0, 2), np.float32)]))
        c_stab = np.concatenate([r.stability for r in results] or [np.zeros(0, np.float32)])
        c_areas = np.concatenate([r.areas for r in results] or [np.zeros(0, np.int64)])
        c_rles = [rle for r in results for rle in r.rles]
        keep = batched_nms(c_boxes.float(), c_iou, torch.zeros_like(c_boxes[:, 0]), iou_threshold=params.box_nms_thresh)
        ious.append(c_iou[keep])
        stabs.append(c_stab[keep.numpy()])
        boxes.append(uncrop_boxes_xyxy(c_boxes[keep], list(crop.box)))
        points.append(uncrop_points(c_points[keep], list(crop.box)))
        crop_boxes.append(torch.tensor([list(crop.box)] * len(keep), dtype=torch.int64).reshape(-1, 4))
        areas.append(c_areas[keep.numpy()])
        rles.extend(c_rles[int(i)] for i in keep)

    iou_t, boxes_t, points_t, crop_t = torch.cat(ious), torch.cat(boxes), torch.cat(points), torch.cat(crop_boxes)
    stab_a, area_a = np.concatenate(stabs), np.concatenate(areas)
    order = torch.arange(len(rles))
    if len(crops) > 1:
        # Prefer masks from smaller crops, as upstream.
        scores = 1 / box_area(crop_t)
        order = batched_nms(boxes_t.float(), scores, torch.zeros_like(boxes_t[:, 0]),
                            iou_threshold=params.crop_nms_thresh)
    masks = []
    for i in order.tolist():
        box = tuple(int(v) for v in boxes_t[i].tolist())
        empty = area_a[i] == 0
        masks.append(AutoMask(
            rle=rles[i], score=float(iou_t[i]), stability_score=float(stab_a[i]), area=int(area_a[i]),
            bbox=None if empty else box, point=(float(points_t[i, 0]), float(points_t[i, 1])),
            crop_box=tuple(int(v) for v in crop_t[i].tolist())))
    # Stable sort: equal scores keep upstream's order.
    masks.sort(key=lambda m: -m.score)
    return masks


def generate(model: "ImageModel", rgb: np.ndarray, params: AmgParams, image_id: str = "local",
             upsample_bytes: int = 64 << 20) -> AmgResult:
    """The whole pipeline in one process (no Ray): what the ingress + deployments do, step for step.

    Each crop is encoded on its own, as upstream does; the served path batches them through the encoder.
    """
    orig_hw = rgb.shape[:2]
    crops = plan_crops(orig_hw, params)
    per_crop = []
    for crop in crops:
        x0, y0, x1, y1 = crop.box
        (emb,) = model.encode([np.ascontiguousarray(rgb[y0:y1, x0:x1])], [f"{image_id}:{crop.index}"])
        per_crop.append([decode_batch(model, emb, pts, crop.box, orig_hw, params, upsample_bytes)
                         for pts in crop.batches(params.points_per_batch)])
    return AmgResult(image_id, int(orig_hw[1]), int(orig_hw[0]), merge(crops, per_crop, params),
                     batch_stats(per_crop))


def batch_stats(per_crop: Sequence[Sequence[BatchMasks]]) -> dict:
    """Counts for monitoring/benchmarks: crops, batches, candidate masks, upsampled masks, survivors, and prompts
    whose decode stopped after the transformer."""
    flat = [b for crop in per_crop for b in crop]
    return {"crops": len(per_crop), "batches": len(flat), "candidates": sum(b.candidates for b in flat),
            "upsampled": sum(b.upsampled for b in flat), "survivors": sum(len(b) for b in flat),
            "stopped": sum(b.stopped for b in flat)}


__all__ = ["AmgParams", "CropPlan", "BatchMasks", "AutoMask", "AmgResult", "plan_crops", "decode_batch", "merge",
           "generate", "batch_stats"]
