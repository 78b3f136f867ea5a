"""Video prompts (``frames`` / ``list_dict_inputs``) -> per-object pixel prompts; tracked frames -> JSON lines.

Coordinates as in ``predict``: normalized to [0, 1] of width (x) and height (y) unless ``denormalize_coord`` is
false (pixels). Objects are named by ``track_id`` (``obj_id`` in ``list_dict_inputs``, as a string); regions
without one each start a new object with the next free numeric id.
"""

from __future__ import annotations

import binascii
from typing import Optional, Sequence

import numpy as np

from sam2_serve.common.errors import InvalidRequest, LimitExceeded
from sam2_serve.common.masks import decode_png, decode_rle
from sam2_serve.common.prompts import _Scaler, point_label
from sam2_serve.common.schemas import FramePrompts, ListDictInput, VideoRegion
from sam2_serve.common.types import VideoInfo, VideoObjectPrompt


def _decode_mask(region: VideoRegion, width: int, height: int, where: str) -> np.ndarray:
    try:
        mask = decode_png(region.mask.png) if region.mask.png is not None else decode_rle(region.mask.rle)
    except (OSError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise InvalidRequest(f"{where}.mask could not be decoded ({type(exc).__name__}); send a PNG as base64 "
                             "or a COCO RLE {\"size\": [H, W], \"counts\": ...}") from None
    if mask.shape != (height, width):
        raise InvalidRequest(f"{where}.mask is {mask.shape[1]}x{mask.shape[0]} pixels; the video frames are "
                             f"{width}x{height}")
    return np.ascontiguousarray(mask.astype(bool))


def _check_frame(index: int, info: VideoInfo, where: str) -> None:
    if index >= info.num_frames:
        raise InvalidRequest(f"{where}: frame {index} is past the end of the video (frames 0..{info.num_frames - 1})")


def regions_to_prompts(index: int, regions: Sequence[VideoRegion], info: VideoInfo, normalized: bool = True,
                       clear_old_points: bool = True, used_ids: Optional[set] = None,
                       where: str = "regions") -> list[VideoObjectPrompt]:
    """The regions on one frame -> one ``VideoObjectPrompt`` per object (a mask, or points and at most one box)."""
    _check_frame(index, info, where)
    scale = _Scaler(info.width, info.height, normalized)
    used = used_ids if used_ids is not None else set()
    used.update(r.track_id for r in regions if r.track_id is not None)
    groups: dict[str, dict] = {}
    for i, r in enumerate(regions):
        w = f"{where}[{i}]"
        track_id = r.track_id
        if track_id is None:
            n = 1
            while str(n) in used:
                n += 1
            track_id = str(n)
            used.add(track_id)
        g = groups.setdefault(track_id, {"points": [], "labels": [], "box": None, "mask": None})
        if r.point is not None:
            g["points"].append(scale.xy(r.point[0], r.point[1], w))
            g["labels"].append(point_label(r.concepts, w))
        elif r.box is not None:
            if g["box"] is not None:
                raise InvalidRequest(f"{w}: track_id {track_id!r} has two boxes on frame {index}; an object takes "
                                     "one box per frame")
            g["box"] = scale.box(r.box, w)
        else:
            if g["mask"] is not None:
                raise InvalidRequest(f"{w}: track_id {track_id!r} has two masks on frame {index}")
            g["mask"] = _decode_mask(r, info.width, info.height, w)
        if g["mask"] is not None and (g["points"] or g["box"] is not None):
            raise InvalidRequest(f"{w}: track_id {track_id!r} mixes a mask with points/box on frame {index}; "
                                 "give an object a mask or points/box on one frame")
    out = []
    for track_id, g in groups.items():
        if g["mask"] is not None:
            out.append(VideoObjectPrompt(index, track_id, mask=g["mask"]))
            continue
        if g["box"] is not None and not clear_old_points:
            raise InvalidRequest(f"{where}: a box replaces an object's earlier prompts on a frame; "
                                 "send it with clear_old_points=true")
        out.append(VideoObjectPrompt(
            index, track_id,
            points=np.array(g["points"], np.float32).reshape(-1, 2) if g["points"] else None,
            labels=np.array(g["labels"], np.int32) if g["points"] else None,
            box=g["box"], clear_old_points=clear_old_points))
    return out


def list_dict_to_prompts(entries: Sequence[ListDictInput], info: VideoInfo,
                         normalized: bool = True) -> list[VideoObjectPrompt]:
    scale = _Scaler(info.width, info.height, normalized)
    out = []
    for i, d in enumerate(entries):
        w = f"list_dict_inputs[{i}]"
        _check_frame(d.frame_idx, info, w)
        points = d.points or []
        if points and d.labels is None:
            raise InvalidRequest(f"{w}.labels is required with points (1 positive, 0 negative)")
        labels = d.labels or []
        if len(points) != len(labels):
            raise InvalidRequest(f"{w} has {len(points)} points but {len(labels)} labels")
        for j, v in enumerate(labels):
            if v not in (0, 1):
                raise InvalidRequest(f"{w}.labels[{j}] is {v}; labels are 1 (positive) or 0 (negative)")
        if d.box is not None and not d.clear_old_points:
            raise InvalidRequest(f"{w}: a box needs clear_old_points=true (upstream adds it before any point)")
        pix = [scale.xy(p[0], p[1], f"{w}.points[{j}]") for j, p in enumerate(points)]
        out.append(VideoObjectPrompt(
            d.frame_idx, str(d.obj_id),
            points=np.array(pix, np.float32).reshape(-1, 2) if pix else None,
            labels=np.array(labels, np.int32) if pix else None,
            box=scale.box(d.box, f"{w}.box") if d.box is not None else None,
            clear_old_points=d.clear_old_points))
    return out


def generate_prompts(frames: Optional[Sequence[FramePrompts]], list_dict_inputs: Optional[Sequence[ListDictInput]],
                     info: VideoInfo, start_frame: int = 0, max_frames: Optional[int] = None,
                     normalized: bool = True, max_objects: int = 32, max_points: int = 256,
                     max_prompted_frames: int = 64) -> list[VideoObjectPrompt]:
    """Validate a ``generate`` request's prompts against the video and the limits; raises 4xx errors."""
    if frames is not None and list_dict_inputs is not None:
        raise InvalidRequest("give either 'frames' or 'list_dict_inputs', not both")
    if start_frame >= info.num_frames:
        raise InvalidRequest(f"start_frame {start_frame} is past the end of the video (frames 0..{info.num_frames - 1})")
    if frames:
        used: set = set()
        for f in frames:
            used.update(r.track_id for r in f.regions if r.track_id is not None)
        prompts = []
        for k, f in enumerate(frames):
            prompts += regions_to_prompts(f.index, f.regions, info, normalized, True, used, f"frames[{k}].regions")
    elif list_dict_inputs:
        prompts = list_dict_to_prompts(list_dict_inputs, info, normalized)
    else:
        raise InvalidRequest("no prompts: give 'frames' (points, boxes or masks per frame, with track_id) or "
                             "'list_dict_inputs' (add_new_points_or_box arguments)")
    end = info.num_frames if max_frames is None else min(info.num_frames, start_frame + max_frames)
    for p in prompts:
        if not start_frame <= p.frame < end:
            raise InvalidRequest(f"a prompt on frame {p.frame} (track_id {p.track_id!r}) is outside the frames "
                                 f"tracked, {start_frame}..{end - 1} (start_frame, max_frames)")
    check_limits(prompts, max_objects, max_points, max_prompted_frames)
    return prompts


def check_limits(prompts: Sequence[VideoObjectPrompt], max_objects: int, max_points: int,
                 max_prompted_frames: int, existing_ids: Sequence[str] = ()) -> None:
    objects = {p.track_id for p in prompts} | set(existing_ids)
    if len(objects) > max_objects:
        raise LimitExceeded(f"{len(objects)} objects; the limit is {max_objects} per video")
    n_points = sum(0 if p.points is None else len(p.points) for p in prompts)
    if n_points > max_points:
        raise LimitExceeded(f"{n_points} points in one request; the limit is {max_points}")
    n_frames = len({p.frame for p in prompts})
    if n_frames > max_prompted_frames:
        raise LimitExceeded(f"prompts on {n_frames} frames; the limit is {max_prompted_frames}")

