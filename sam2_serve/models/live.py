"""Live tracking: frames pushed one at a time (a camera, an RTSP stream), objects added, corrected and removed on
the latest frame, with state that stays flat however long the stream runs.

``LiveTrack`` is ``TrackStream``'s core (``sam2_serve.models.video.FrameStepper``: upstream's per-frame step, each
object tracked alone, pruning of what sam2 can no longer read) over a frame source that grows as frames arrive
(``PushedFrames``) instead of a video file. Prompts go to upstream's ``add_new_points_or_box`` / ``add_new_mask``
on the latest frame, then its memory encoder, exactly as ``propagate_in_video`` runs it before it starts; removal is
upstream's ``remove_object``. So an object prompted on frame ``k`` of a stream is tracked on every later frame as
``/v1/generate`` tracks it on the same frames with the same prompt.

Clip frames, as sam2 numbers them, count the frames tracked; the caller's own frame numbers (``index``, counting
frames the caller skipped too) only label the results. The stream's length is unknown: sam2 is told it is
``LIVE_NUM_FRAMES`` long, which it reads only to cap its object-pointer window (``max_obj_ptrs_in_encoder`` frames);
a file of at least that many frames is tracked the same way.

What the state holds after frame ``r``: per object its conditioning (prompted) outputs, the memories and pointers
that tracking frame ``r`` read (so a correction on ``r`` sees what tracking it saw), ``r``'s own output, and the
backbone features and pixels of frame ``r`` alone (a prompt on it costs no second encoder pass). The next frame
prunes to its own window first.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from sam2_serve.common.errors import InvalidRequest
from sam2_serve.common.types import TrackedFrame, VideoObjectPrompt
from sam2_serve.models import sam2_internals
from sam2_serve.models.video import FrameStepper, VideoModel, preprocess_frame

__all__ = ["LIVE_NUM_FRAMES", "PushedFrames", "LiveTrack"]

# sam2's num_frames for a stream of unknown length: above any window it caps (max_obj_ptrs_in_encoder: 16).
LIVE_NUM_FRAMES = 1 << 31


class PushedFrames:
    """``inference_state["images"]`` of a live stream: clip frame ``i`` -> the preprocessed frame (3, S, S),
    computed when sam2 indexes it (once per backbone pass; never for frames no object is tracked on).

    Holds the RGB pixels of the latest frame only (``push`` drops the others). ``frames_encoded`` and
    ``max_encodes_per_frame`` count image-encoder passes.
    """

    def __init__(self, image_size: int, device: torch.device):
        self.image_size, self.device = image_size, device
        self._rgb: dict[int, np.ndarray] = {}
        self._encodes: dict[int, int] = {}  # the held frame's passes
        self.frames_encoded = 0
        self.max_encodes_per_frame = 0

    def push(self, frame: int, rgb: np.ndarray) -> None:
        self._rgb = {frame: rgb}
        self._encodes = {}

    def clear(self) -> None:
        self._rgb, self._encodes = {}, {}

    def __len__(self) -> int:
        return LIVE_NUM_FRAMES

    def __getitem__(self, index: int) -> torch.Tensor:
        rgb = self._rgb.get(index)
        if rgb is None:
            raise IndexError(f"frame {index} of a live stream is no longer held (only the latest frame is)")
        self._encodes[index] = n = self._encodes.get(index, 0) + 1
        self.frames_encoded += 1
        self.max_encodes_per_frame = max(self.max_encodes_per_frame, n)
        return preprocess_frame(rgb, self.image_size).to(self.device)


class LiveTrack:
    """Tracking of frames pushed one at a time (see the module docstring). ``width`` x ``height``: the size of
    every frame of the stream, in pixels. Not thread-safe: callers serialize calls on one stream."""

    def __init__(self, model: VideoModel, width: int, height: int):
        self.model, self.width, self.height = model, width, height
        self.frames = PushedFrames(model.image_size, model.loaded.device)
        self.state = sam2_internals.new_inference_state(self.frames, (height, width), model.loaded.device)
        self.core = FrameStepper(model, self.state)
        self.current: Optional[int] = None  # the latest clip frame
        self.index, self.time_s = 0, 0.0    # its number and time as the caller gave them

    @property
    def track_ids(self) -> list[str]:
        return [str(o) for o in sam2_internals.object_ids(self.state)]

    def push(self, rgb: np.ndarray, index: int, time_s: float, size: Optional[tuple[int, int]] = None) -> TrackedFrame:
        """Track every object on the next frame; ``index`` and ``time_s`` (seconds) label the result. Frames before
        the first prompt cost no model work.

        ``rgb``: the frame, RGB uint8 (H, W, 3) at the stream's size, or already resized to the model's input
        (S, S, 3) by ``resize_square`` (the resize this would do), with ``size`` = the frame's own (W, H).
        """
        width, height = size or (rgb.shape[1], rgb.shape[0])
        if (width, height) != (self.width, self.height):
            raise InvalidRequest(f"the frame is {width}x{height} pixels; this stream's frames are "
                                 f"{self.width}x{self.height} (send a reset message first to change the size)")
        side = self.model.image_size
        if rgb.shape not in ((height, width, 3), (side, side, 3)):
            raise ValueError(f"pixels of shape {rgb.shape} for a {width}x{height} frame: send them at that size or "
                             f"at the model's input size {side}x{side}")
        r = 0 if self.current is None else self.current + 1
        with self.model.context():
            self.core.prune(r)  # what frame r and later read; frame r - 1's features go
            sam2_internals.prune_inputs(self.state, r)
            self.frames.push(r, rgb)
            self.current, self.index, self.time_s = r, index, time_s
            if not sam2_internals.object_ids(self.state):
                return self._result([], None, [])
            # r's memory encoder pass waits for finish() (or the next call): the masks need not wait for it.
            obj_ids, video_res, scores, _ = self.core.track(r, memory_later=True)
            sam2_internals.record_tracked(self.state, r)  # a prompt on r now corrects, as after propagation
            return self._result(obj_ids, video_res, scores)

    def finish(self) -> None:
        """The memory encoder's pass on the latest frame, which ``push`` leaves to be run once its answer is on
        its way (every other method runs it first, so calling this only moves the work earlier).

        On the CPU it runs on one thread fewer than the model's others: it runs while the answer travels back and
        the next frame comes in and is decoded (single-threaded work in other processes, measured slowed by a
        pass on every core)."""
        threads = torch.get_num_threads()
        if self.model.loaded.device.type == "cpu" and threads > 1:
            torch.set_num_threads(threads - 1)
        try:
            with self.model.context():
                self.core.encode_memories()
        finally:
            torch.set_num_threads(threads)

    def add(self, prompts: Sequence[VideoObjectPrompt]) -> TrackedFrame:
        """Prompts on the latest frame (their ``frame`` is ignored): a new ``track_id`` starts an object there,
        a known one is corrected. Returns that frame's masks for every object."""
        if self.current is None:
            raise InvalidRequest("no frame yet: prompts apply to the latest frame; send a frame first")
        r = self.current
        with self.model.context():
            self.core.add_prompts([(r, p) for p in prompts])
            obj_ids = sam2_internals.object_ids(self.state)
            outputs = [sam2_internals.frame_output(self.state, i, r) for i in range(len(obj_ids))]
            low_res = torch.cat([sam2_internals.mask_logits(o).to(self.model.loaded.device) for o in outputs])
            video_res = sam2_internals.video_res_masks(self.model.predictor, self.state, low_res)
            return self._result(obj_ids, video_res, [sam2_internals.object_score(o) for o in outputs])

    def remove(self, track_id: str) -> None:
        """Upstream ``remove_object`` (``track_id`` must be one of ``track_ids``)."""
        with self.model.context():
            self.core.encode_memories()
            self.model.predictor.remove_object(self.state, track_id, strict=True, need_output=False)

    def _result(self, obj_ids: Sequence, video_res: Optional[torch.Tensor], scores: Sequence) -> TrackedFrame:
        if not obj_ids:
            return TrackedFrame(index=self.index, time_s=self.time_s, width=self.width, height=self.height,
                                objects=[])
        return self.model.frame_result(self.state, self.index, self.time_s, obj_ids, video_res, scores)

    def stats(self) -> dict:
        """``FrameStepper.stats`` plus ``frames_done`` (frames pushed) and ``inputs`` (frames holding prompts,
        summed over objects)."""
        self.finish()  # the state counted is then complete
        _, _, points, masks = sam2_internals.per_frame_tensors(self.state)
        inputs = sum(len(per_frame) for part in (points, masks) for per_frame in part.values())
        return {"frames_done": 0 if self.current is None else self.current + 1, **self.core.stats(),
                "inputs": inputs}

    def close(self) -> None:
        self.core.close()
        self.frames.clear()
