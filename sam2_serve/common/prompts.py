"""Turn API prompts (``regions`` or ``dict_inputs``) into per-object pixel prompts for the decoder.

Coordinate convention everywhere: x = column, y = row; normalized coordinates are fractions of width (x) and
height (y) and are scaled by (W, H) here; pixel coordinates (``denormalize_coord=false``) pass through.

Grouping into objects: regions sharing a ``track_id`` are one object (at most one box plus any points).
Regions without a track id form one object, except that several boxes and no points give one object per box.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from sam2_serve.common.errors import InvalidRequest, LimitExceeded
from sam2_serve.common.schemas import Concept, DictInputs, RegionPrompt
from sam2_serve.common.types import ObjectPrompt


def point_label(concepts: Sequence[Concept], where: str) -> int:
    """1 (positive) or 0 (negative) from a point's concept; no concept means positive."""
    if not concepts:
        return 1
    c = concepts[0]
    named = {"1": 1, "0": 0}.get(c.name)
    if c.value is None:
        if named is None:
            raise InvalidRequest(f"{where}: concept name {c.name!r} is not a label; use \"1\"/\"0\" or give a value")
        return named
    label = 1 if c.value >= 0.5 else 0
    if named is not None and named != label:
        raise InvalidRequest(f"{where}: concept name {c.name!r} and value {c.value} disagree about the label")
    return label


class _Scaler:
    """Checks coordinates against their range and maps them to pixels."""

    def __init__(self, width: int, height: int, normalized: bool):
        self.w, self.h, self.normalized = width, height, normalized
        self.xmax, self.ymax = (1.0, 1.0) if normalized else (float(width), float(height))
        self.unit = "[0, 1] (fractions of width and height)" if normalized else f"x in [0, {width}], y in [0, {height}] pixels"

    def xy(self, x: float, y: float, where: str) -> tuple[float, float]:
        if not (math.isfinite(x) and math.isfinite(y)) or not (0 <= x <= self.xmax and 0 <= y <= self.ymax):
            raise InvalidRequest(f"{where}: coordinates ({x}, {y}) are outside {self.unit}")
        return (x * self.w, y * self.h) if self.normalized else (x, y)

    def box(self, b: Sequence[float], where: str) -> np.ndarray:
        x0, y0 = self.xy(b[0], b[1], where)
        x1, y1 = self.xy(b[2], b[3], where)
        if x1 < x0 or y1 < y0:
            raise InvalidRequest(f"{where}: box must be [xmin, ymin, xmax, ymax] with xmax >= xmin and ymax >= ymin")
        return np.array([x0, y0, x1, y1], dtype=np.float32)


def _object(points: list, labels: list, box: Optional[np.ndarray], track_id: Optional[str]) -> ObjectPrompt:
    return ObjectPrompt(
        point_coords=np.array(points, dtype=np.float32).reshape(-1, 2) if points else None,
        point_labels=np.array(labels, dtype=np.int32) if points else None,
        box=box,
        track_id=track_id,
    )


def from_regions(regions: Sequence[RegionPrompt], width: int, height: int, normalized: bool = True) -> list[ObjectPrompt]:
    scale = _Scaler(width, height, normalized)
    groups: dict[Optional[str], dict] = {}
    for i, r in enumerate(regions):
        g = groups.setdefault(r.track_id, {"points": [], "labels": [], "boxes": []})
        where = f"regions[{i}]"
        if r.point is not None:
            g["points"].append(scale.xy(r.point[0], r.point[1], where))
            g["labels"].append(point_label(r.concepts, where))
        else:
            g["boxes"].append(scale.box(r.box, where))
    objects = []
    for track_id, g in groups.items():
        if len(g["boxes"]) > 1:
            if track_id is not None:
                raise InvalidRequest(f"track_id {track_id!r} has {len(g['boxes'])} boxes; an object takes at most one box")
            if g["points"]:
                raise InvalidRequest("several boxes plus points without track_id are ambiguous: give each object's "
                                     "box and points the same 'track_id'")
            objects.extend(_object([], [], b, None) for b in g["boxes"])
            continue
        objects.append(_object(g["points"], g["labels"], g["boxes"][0] if g["boxes"] else None, track_id))
    return objects


def from_dict_inputs(d: DictInputs, width: int, height: int, normalized: bool = True) -> list[ObjectPrompt]:
    scale = _Scaler(width, height, normalized)
    points = d.points or []
    labels = d.labels
    if points and labels is None:
        raise InvalidRequest("dict_inputs.labels is required with dict_inputs.points (1 positive, 0 negative)")
    labels = labels or []
    if len(points) != len(labels):
        raise InvalidRequest(f"dict_inputs.points has {len(points)} points but dict_inputs.labels has {len(labels)} labels")
    int_labels = []
    for i, v in enumerate(labels):
        if v not in (0, 1):
            raise InvalidRequest(f"dict_inputs.labels[{i}] is {v}; labels are 1 (positive) or 0 (negative)")
        int_labels.append(int(v))
    pix = [scale.xy(p[0], p[1], f"dict_inputs.points[{i}]") for i, p in enumerate(points)]
    boxes = d.box if d.box is None or isinstance(d.box[0], list) else [d.box]
    boxes = [scale.box(b, f"dict_inputs.box[{i}]") for i, b in enumerate(boxes or [])]
    if len(boxes) > 1:
        if pix:
            raise InvalidRequest("dict_inputs with several boxes cannot take points; use regions with track_id")
        return [_object([], [], b, None) for b in boxes]
    return [_object(pix, int_labels, boxes[0] if boxes else None, None)]


def to_objects(regions: Optional[Sequence[RegionPrompt]], dict_inputs: Optional[DictInputs], width: int, height: int,
               normalized: bool = True, max_points: int = 256, max_objects: int = 64) -> list[ObjectPrompt]:
    """Validate and group prompts; raises ``InvalidRequest``/``LimitExceeded`` with a message naming the field."""
    if regions and dict_inputs is not None:
        raise InvalidRequest("give either 'regions' or 'dict_inputs', not both")
    if regions:
        objects = from_regions(regions, width, height, normalized)
    elif dict_inputs is not None and (dict_inputs.points or dict_inputs.box):
        objects = from_dict_inputs(dict_inputs, width, height, normalized)
    else:
        raise InvalidRequest("no prompts: give 'regions' (points/boxes) or 'dict_inputs'; "
                             "for every object in the image use /v1/segment_anything")
    n_points = sum(0 if o.point_coords is None else len(o.point_coords) for o in objects)
    if n_points > max_points:
        raise LimitExceeded(f"{n_points} points in one request; the limit is {max_points}")
    if len(objects) > max_objects:
        raise LimitExceeded(f"{len(objects)} objects in one request; the limit is {max_objects}")
    return objects
