"""Bounded state for interactive sessions on long videos: ``SessionWindow``.

Upstream keeps every tracked frame's output for every object (~0.8 MB per object per frame at 1024 input), so a
session's memory grows with the video. A session with ``keep_frames`` K keeps, per object, its prompted frames and
the outputs of the frames within K of the frame a propagation last reached (either side); older outputs are
dropped as the propagation moves on. A video of at most K frames is never pruned (upstream's state exactly).

Every answer stays upstream's: sam2 reads a frame's memory window (``sam2_internals.memory_window``: the
previous ``num_maskmem - 1`` memories and ``max_obj_ptrs_in_encoder - 1`` pointers, in the direction tracked), so
the window records, per object, the frames it dropped that upstream still holds, and refuses
(``LimitExceeded``, 422) what would read one of them: a correction on a dropped frame or on a frame whose window
reaches one, and a propagation starting where its window does. A new object, a frame never tracked, and a
propagation from a prompted frame that no drop reaches remain exact; a propagation through a frame restores it.
"""

from __future__ import annotations

from typing import Optional

from sam2_serve.common.errors import LimitExceeded
from sam2_serve.models import sam2_internals


class Intervals:
    """A set of frame numbers as sorted, disjoint, non-adjacent closed intervals (a drop is a run of frames)."""

    def __init__(self):
        self.spans: list[list[int]] = []

    def add(self, lo: int, hi: int) -> None:
        spans = sorted(self.spans + [[lo, hi]])
        merged: list[list[int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.spans = merged

    def remove(self, x: int) -> None:
        out = []
        for a, b in self.spans:
            if a <= x <= b:
                out += [s for s in ([a, x - 1], [x + 1, b]) if s[0] <= s[1]]
            else:
                out.append([a, b])
        self.spans = out

    def first_in(self, lo: int, hi: int) -> Optional[int]:
        """The smallest member in [lo, hi], or None."""
        for a, b in self.spans:
            if b >= lo and a <= hi:
                return max(a, lo)
        return None

    def __len__(self) -> int:
        return sum(b - a + 1 for a, b in self.spans)


class SessionWindow:
    """The bounded state of one session (``VideoSession``): ``after_frame`` prunes as a propagation goes,
    ``check_prompt`` / ``check_propagate`` refuse what would read dropped state (see the module docstring)."""

    def __init__(self, model, state: dict, keep_frames: int):
        self.model, self.state, self.keep = model, state, int(keep_frames)
        self.dropped: dict[str, Intervals] = {}  # track id -> frames dropped that upstream holds
        if self.keep < self._reach(1 << 20):  # propagation itself must never need a dropped frame
            raise ValueError(f"keep_frames {self.keep} is shorter than what tracking one frame reads "
                             f"({self._reach(1 << 20)} frames)")

    def _reach(self, frame: int) -> int:
        """How many frames back (in the direction tracked) tracking ``frame`` reads."""
        memory_from, pointers_from = sam2_internals.memory_window(
            self.model.predictor, frame, sam2_internals.num_frames(self.state))
        return frame - min(memory_from, pointers_from)

    def _objects(self):
        for obj_idx, obj_id in enumerate(sam2_internals.object_ids(self.state)):
            yield obj_idx, str(obj_id), self.dropped.setdefault(str(obj_id), Intervals())

    def after_frame(self, frame: int) -> None:
        """``frame`` was just tracked (upstream stored it again): drop what is farther than ``keep`` frames."""
        for obj_idx, _, dropped in self._objects():
            dropped.remove(frame)
            held = sam2_internals.object_frames(self.state, obj_idx)
            far = sorted(f for f in held.non_cond if abs(f - frame) > self.keep and f not in held.cond)
            sam2_internals.drop_frames(self.state, obj_idx, far)
            for f in far:
                dropped.add(f, f)

    def _refuse(self, track_id: str, what: str, frame: int, bad: int) -> None:
        raise LimitExceeded(
            f"{what} would read object {track_id!r}'s tracking state on frame {bad}, which this session no longer "
            f"holds (on a video this long it keeps {self.keep} frames around the latest propagation, plus prompted "
            f"frames): propagate again from a prompted frame up to frame {frame} (max_frames), then retry")

    def _check_window(self, track_id: str, dropped: Intervals, frame: int, reverse: bool, what: str,
                      itself: bool) -> None:
        reach = self._reach(frame)
        lo, hi = (frame + 1, frame + reach) if reverse else (frame - reach, frame - 1)
        bad = dropped.first_in(frame, frame) if itself else None
        bad = bad if bad is not None else dropped.first_in(lo, hi)
        if bad is not None:
            self._refuse(track_id, what, frame, bad)

    def check_prompt(self, track_id: str, frame: int) -> None:
        """A prompt for ``track_id`` on ``frame``: exact unless it corrects a frame whose state was dropped."""
        for obj_idx, obj_id, dropped in self._objects():
            if obj_id != track_id:
                continue
            tracked = sam2_internals.object_frames(self.state, obj_idx).tracked
            if frame in tracked:  # a correction: sam2 reads the frame's window
                self._check_window(obj_id, dropped, frame, tracked[frame], f"a prompt on frame {frame}", True)
            elif dropped.first_in(frame, frame) is not None:  # upstream would correct it, we would start afresh
                self._refuse(obj_id, f"a prompt on frame {frame}", frame, frame)

    def check_propagate(self, start: Optional[int], reverse: bool) -> None:
        """A propagation from ``start`` (None: the first prompted frame, as upstream): refused when a frame it
        would read before reaching its own frames was dropped."""
        if start is None:
            cond = [f for i, _, _ in self._objects() for f in sam2_internals.object_frames(self.state, i).cond]
            if not cond:
                return
            start = min(cond)
        for obj_idx, obj_id, dropped in self._objects():
            self._check_window(obj_id, dropped, start, reverse, f"propagating from frame {start}", False)

    def forget(self, track_id: str) -> None:
        self.dropped.pop(str(track_id), None)

    def stats(self) -> dict:
        return {"keep_frames": self.keep, "dropped_frames": {k: len(v) for k, v in self.dropped.items()}}
