"""Video tracking over upstream ``SAM2VideoPredictor``, streaming, without holding the whole video.

Upstream ``init_state`` decodes every frame to a float32 tensor before the first mask (~12 MiB a frame at 1024)
and keeps every frame's outputs. Here the predictor's own methods run on an ``inference_state`` whose
``images`` entry is a lazy sequence (``LazyFrames``): a frame is decoded with PyAV and preprocessed only when
sam2 asks for it, which it does once per frame (its one-frame feature cache serves every object on that frame).

``TrackStream`` (``VideoModel.track``, what the tracker's ``generate`` streams) tracks frame by frame with
upstream's per-frame step (``_run_single_frame_inference``, exactly what ``propagate_in_video`` runs) and prunes
what sam2 can no longer read: non-conditioning outputs keep their memory only while they are among the
``num_maskmem - 1`` frames the next frame attends to, and only their object pointer while within
``max_obj_ptrs_in_encoder``; older ones are dropped. Conditioning (prompted) frames are kept. State per object is
therefore flat in video length.

``VideoSession`` (interactive, the web demo's flow) keeps upstream's full per-frame outputs, since corrections
and re-propagation read them (only the decoded video is not kept), and calls upstream's
``add_new_points_or_box`` / ``add_new_mask`` / ``propagate_in_video`` / ``remove_object`` directly.

Frame preprocessing is upstream's video loader's (``sam2.utils.misc._load_img_as_tensor`` + normalization):
PIL resize of the whole frame to the square model input (no aspect-ratio padding), /255, mean/std.

The ``inference_state`` layout, the private per-frame step and the pruning window are sam2's internals: every read
or write of them is a function of ``sam2_serve.models.sam2_internals``.
"""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from sam2_serve.common.images import resize_square
from sam2_serve.common.masks import mask_box
from sam2_serve.common.videos import FrameReader
from sam2_serve.common.types import TrackedFrame, TrackedObject, VideoObjectPrompt
from sam2_serve.models import sam2_internals
from sam2_serve.models.fast_encoder import FastEncoder
from sam2_serve.models.loader import LoadedModel
from sam2_serve.models.sam2_internals import fix_memory_dtype

__all__ = ["IMG_MEAN", "IMG_STD", "preprocess_frame", "fix_memory_dtype", "LazyFrames", "VideoModel", "FrameStepper",
           "TrackStream", "VideoSession"]

IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)


def preprocess_frame(rgb: np.ndarray, image_size: int) -> torch.Tensor:
    """RGB uint8 (H, W, 3) -> normalized float32 (3, S, S), as upstream's video frame loader computes it."""
    img_np = resize_square(rgb, image_size) / 255.0  # float64, like upstream
    img = torch.from_numpy(img_np).permute(2, 0, 1).to(torch.float32)
    img -= torch.tensor(IMG_MEAN, dtype=torch.float32)[:, None, None]
    img /= torch.tensor(IMG_STD, dtype=torch.float32)[:, None, None]
    return img


class LazyFrames:
    """``inference_state["images"]``: frame ``i`` of a clip, decoded and preprocessed when sam2 indexes it.

    sam2 indexes ``images`` only on a miss of its feature cache, i.e. once per backbone pass, so
    ``encoded`` counts image-encoder passes per clip frame.
    """

    def __init__(self, reader: FrameReader, image_size: int, device: torch.device, offset: int = 0,
                 length: Optional[int] = None):
        self.reader, self.image_size, self.device, self.offset = reader, image_size, device, offset
        self.length = len(reader) - offset if length is None else length
        self.encoded: Counter[int] = Counter()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.length:
            raise IndexError(index)
        self.encoded[index] += 1
        return preprocess_frame(self.reader.get(self.offset + index), self.image_size).to(self.device)

    @property
    def frames_encoded(self) -> int:
        return sum(self.encoded.values())

    @property
    def max_encodes_per_frame(self) -> int:
        return max(self.encoded.values(), default=0)


class VideoModel:
    """Ray-free video tracker over one loaded ``SAM2VideoPredictor`` (stateless itself: state lives in streams
    and sessions, so concurrent streams share the weights without a lock)."""

    def __init__(self, loaded: LoadedModel, encoder: Optional[FastEncoder] = None):
        """``encoder``: the runtime of each frame's backbone pass (``fast_encoder.load_fast_encoder``); None or a
        torch one: the model's own ``forward_image``. Everything else (memory attention and encoder, the decoder)
        runs upstream's torch code either way."""
        from sam2.sam2_video_predictor import SAM2VideoPredictor

        if not isinstance(loaded.model, SAM2VideoPredictor):
            raise TypeError("VideoModel needs a model loaded with load_model(..., video=True)")
        self.loaded = loaded
        self.encoder = encoder or FastEncoder("torch", "the model's own forward_image")
        self.predictor = loaded.model
        if self.encoder.forward_image is not None:  # a view: the loaded model itself stays all torch
            self.predictor = sam2_internals.video_predictor_view(loaded.model, self.encoder.forward_image)
        fix_memory_dtype(self.predictor)
        sam2_internals.silence_missing_extension_warnings()

    @property
    def image_size(self) -> int:
        return int(self.predictor.image_size)

    def context(self) -> ExitStack:
        """What every model step runs under: inference mode and the configured autocast (entered per step, so a
        stream can move between worker threads)."""
        stack = ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(self.loaded.autocast())
        return stack

    def new_state(self, reader: FrameReader, offset: int = 0, length: Optional[int] = None) -> dict:
        """An ``inference_state`` as upstream's ``init_state`` builds it, with lazy frames and no warm-up encode.

        Clip frame ``i`` is video frame ``offset + i``; ``num_frames`` is the clip length (sam2 reads it).
        """
        images = LazyFrames(reader, self.image_size, self.loaded.device, offset, length)
        return sam2_internals.new_inference_state(images, (reader.info.height, reader.info.width), self.loaded.device)

    def add_prompt(self, state: dict, frame: int, p: VideoObjectPrompt):
        """Upstream ``add_new_mask`` / ``add_new_points_or_box`` for one object on clip frame ``frame``.

        Returns upstream's ``(frame_idx, obj_ids, video_res_masks)``: logits (num_objects, 1, H, W).
        """
        if p.mask is not None:
            return self.predictor.add_new_mask(state, frame, p.track_id, p.mask)
        return self.predictor.add_new_points_or_box(
            state, frame, p.track_id, points=p.points, labels=p.labels, box=p.box,
            clear_old_points=p.clear_old_points, normalize_coords=True)

    def frame_result(self, state: dict, index: int, time_s: float, obj_ids: Sequence, logits: torch.Tensor,
                     scores: Sequence[Optional[float]], low_res: Optional[Sequence] = None) -> TrackedFrame:
        """Video-resolution logits (num_objects, 1, H, W) -> ``TrackedFrame`` with boolean masks."""
        masks = (logits[:, 0] > 0.0).cpu().numpy()
        objects = []
        for i, obj_id in enumerate(obj_ids):
            objects.append(TrackedObject(
                track_id=str(obj_id), mask=masks[i], score=scores[i], box=mask_box(masks[i]),
                logits=None if low_res is None or low_res[i] is None else low_res[i]))
        height, width = sam2_internals.video_size(state)
        return TrackedFrame(index=index, time_s=time_s, width=width, height=height, objects=objects)

    def track(self, reader: FrameReader, prompts: Sequence[VideoObjectPrompt], start: int = 0,
              max_frames: Optional[int] = None, with_logits: bool = False) -> "TrackStream":
        """Stream ``TrackedFrame``s for video frames ``start .. start + max_frames - 1`` (see ``TrackStream``)."""
        return TrackStream(self, reader, prompts, start, max_frames, with_logits)

    def open_session(self, reader: FrameReader, keep_frames: Optional[int] = None) -> "VideoSession":
        """An interactive session; ``keep_frames``: bound its state on longer videos (``VideoSession``)."""
        return VideoSession(self, reader, keep_frames)

    def live(self, width: int, height: int):
        """A ``sam2_serve.models.live.LiveTrack``: frames of ``width`` x ``height`` pixels pushed one at a time."""
        from sam2_serve.models.live import LiveTrack  # live builds on this module

        return LiveTrack(self, width, height)


def _tensor_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


class FrameStepper:
    """Forward tracking one frame at a time on an ``inference_state``: the core of ``TrackStream`` (frames of a
    file) and ``LiveTrack`` (frames pushed one by one, ``sam2_serve.models.live``).

    Every object is tracked alone, as in its own upstream state (sam2 tracks objects independently), with
    upstream's per-frame step; ``prune`` drops what sam2 can no longer read (see the module docstring), so what a
    stream holds per object is flat in its length. ``features`` holds the backbone features of frames that will
    be read again (prompted frames not yet reached; a live stream's latest frame), shown to sam2 as its feature
    cache around every upstream call, so no frame is encoded twice. Model steps run under ``model.context()``,
    entered by the caller.
    """

    def __init__(self, model: VideoModel, state: dict):
        self.model, self.state = model, state
        self.features: dict[int, tuple] = {}  # clip frame -> sam2's cached (image, backbone_out)
        self._memory_todo: list = []  # memory encoder passes left for later by track(..., memory_later=True)

    def upstream(self, fn, *args, **kwargs):
        """Run an upstream method with every frame feature this stream holds visible in sam2's cache."""
        sam2_internals.set_frame_features(self.state, dict(self.features))
        try:
            return fn(*args, **kwargs)
        finally:
            self.features.update(sam2_internals.frame_features(self.state))

    def add_prompts(self, prompts: Sequence[tuple[int, VideoObjectPrompt]]) -> None:
        """Upstream ``add_new_points_or_box`` / ``add_new_mask`` for each (clip frame, prompt), in order, then the
        memory encoder on the new prompts, exactly as ``propagate_in_video`` runs it before it starts."""
        self.encode_memories()
        for frame, p in prompts:
            self.upstream(self.model.add_prompt, self.state, frame, p)
        self.upstream(sam2_internals.consolidate_prompts, self.model.predictor, self.state)

    def track(self, r: int, with_logits: bool = False,
              memory_later: bool = False) -> tuple[list, torch.Tensor, list, Optional[list]]:
        """Every object on clip frame ``r`` (at least one object): (object ids, video-resolution logits
        (num_objects, 1, H, W), object scores, low-res logits (h, w) per object or None).

        ``memory_later``: leave the memory encoder's pass on ``r`` (what tracking ``r + 1`` reads, not ``r``'s
        masks) for ``encode_memories``, which ``add_prompts`` and ``prune`` run first: a caller that answers with
        ``r``'s masks before the encoder runs has answered sooner, with the same masks and the same state after."""
        p, state = self.model.predictor, self.state
        obj_ids = sam2_internals.object_ids(state)
        pred_masks, scores, low_res = [], [], []
        for obj_idx in range(len(obj_ids)):
            if memory_later:
                out, masks, todo = self.upstream(sam2_internals.track_object_then_memory, p, state, obj_idx, r)
                if todo is not None:
                    self._memory_todo.append(todo)
            else:
                out, masks = self.upstream(sam2_internals.track_object, p, state, obj_idx, r)
            pred_masks.append(masks)
            scores.append(sam2_internals.object_score(out))
            low_res.append(masks[0, 0].float().cpu().numpy() if with_logits else None)
        video_res = sam2_internals.video_res_masks(p, state, torch.cat(pred_masks, dim=0))
        return obj_ids, video_res, scores, low_res if with_logits else None

    def prune(self, next_frame: int) -> None:
        """Drop what tracking ``next_frame`` and later frames will not read: outputs outside sam2's memory window,
        and features of earlier frames."""
        self.encode_memories()
        sam2_internals.prune_outputs(self.model.predictor, self.state, next_frame)
        for k in [k for k in self.features if k < next_frame]:
            del self.features[k]
        sam2_internals.set_frame_features(self.state, {})

    def stats(self) -> dict:
        """``objects``: per track id, counts of conditioning outputs, non-conditioning outputs holding a memory,
        and those holding only an object pointer; ``state_bytes``: tensor bytes in all per-frame outputs and
        inputs; ``features_cached``: frames whose backbone features are held; ``frames_encoded`` /
        ``max_encodes_per_frame``: image-encoder passes (the frame source counts them)."""
        state = self.state
        frames = sam2_internals.state_frames(state)
        return {
            "objects": sam2_internals.output_counts(state),
            "state_bytes": _tensor_bytes(sam2_internals.per_frame_tensors(state)),
            "features_cached": len(set(self.features) | set(sam2_internals.frame_features(state))),
            "frames_encoded": frames.frames_encoded,
            "max_encodes_per_frame": frames.max_encodes_per_frame,
        }

    def encode_memories(self) -> None:
        """Run the memory encoder passes ``track(..., memory_later=True)`` left (none: nothing to do), with the
        frame features this stream holds. Under ``model.context()``, as every step. A pass that fails stays to do:
        the next call tries it again (and raises), rather than tracking on with a memory missing."""
        while self._memory_todo:
            self.upstream(self._memory_todo[0])
            self._memory_todo.pop(0)

    def close(self) -> None:
        self._memory_todo.clear()
        self.features.clear()
        sam2_internals.set_frame_features(self.state, {})


class TrackStream:
    """An iterator of ``TrackedFrame``s: one object's prompts enter on its first prompted frame, and it is tracked
    from there on (alone, as if in its own upstream state: sam2 tracks objects independently).

    Frames before the first prompt are yielded with no objects and cost no model work. All prompts of one object
    (also those on later frames) are added when it enters, as upstream does when prompts precede
    ``propagate_in_video``; later prompted frames' features are kept until reached, so no frame is encoded twice.
    Call ``stats()`` between frames for the state's bookkeeping.
    """

    def __init__(self, model: VideoModel, reader: FrameReader, prompts: Sequence[VideoObjectPrompt], start: int,
                 max_frames: Optional[int], with_logits: bool):
        self.model, self.reader, self.start, self.with_logits = model, reader, start, with_logits
        n = len(reader) - start
        self.length = n if max_frames is None else min(n, max_frames)
        if self.length <= 0:
            raise ValueError(f"start frame {start} is past the last frame {len(reader) - 1}")
        self.state = model.new_state(reader, start, self.length)
        self.core = FrameStepper(model, self.state)
        by_obj: dict[str, list[VideoObjectPrompt]] = {}
        for p in prompts:
            if not start <= p.frame < start + self.length:
                raise ValueError(f"prompt on frame {p.frame} is outside frames {start}..{start + self.length - 1}")
            by_obj.setdefault(p.track_id, []).append(p)
        self.entering: dict[int, list[list[VideoObjectPrompt]]] = {}
        for obj_prompts in by_obj.values():
            obj_prompts.sort(key=lambda q: q.frame)
            self.entering.setdefault(obj_prompts[0].frame - start, []).append(obj_prompts)
        self.next = 0

    def __iter__(self) -> Iterator[TrackedFrame]:
        return self

    def __next__(self) -> TrackedFrame:
        r = self.next
        if r >= self.length:
            self.close()
            raise StopIteration
        self.next += 1
        with self.model.context():
            if r in self.entering:
                # Later prompted frames first, this frame last: its features are then the freshest in sam2's cache.
                self.core.add_prompts([(q.frame - self.start, q) for obj_prompts in self.entering.pop(r)
                                       for q in sorted(obj_prompts, key=lambda q: -q.frame)])
            frame = self._track(r)
            self.core.prune(r + 1)
        return frame

    def _track(self, r: int) -> TrackedFrame:
        time_s = self.reader.info.times_s[self.start + r]
        if not sam2_internals.object_ids(self.state):
            height, width = sam2_internals.video_size(self.state)
            return TrackedFrame(index=self.start + r, time_s=time_s, width=width, height=height, objects=[])
        obj_ids, video_res, scores, low_res = self.core.track(r, self.with_logits)
        return self.model.frame_result(self.state, self.start + r, time_s, obj_ids, video_res, scores, low_res)

    def stats(self) -> dict:
        """Bookkeeping of what this stream holds (for tests and monitoring): ``FrameStepper.stats`` plus
        ``frames_done`` and ``frames_decoded``."""
        return {"frames_done": self.next, **self.core.stats(), "frames_decoded": self.reader.frames_decoded}

    def close(self) -> None:
        self.core.close()
        self.reader.close()


class VideoSession:
    """Interactive tracking on one video: prompts answer at once, ``propagate`` streams (upstream's own methods).

    Keeps upstream's per-frame outputs (corrections and re-propagation read them), not the decoded video:
    frames are decoded again when a propagation or a prompt needs them. On a video longer than ``keep_frames``,
    only the outputs within ``keep_frames`` of the latest propagated frame (and prompted frames) are kept, and what
    would need a dropped one is refused (``sam2_serve.models.session_window``). Not thread-safe: callers serialize
    calls on one session (the deployment holds a per-session lock, never a global one).
    """

    def __init__(self, model: VideoModel, reader: FrameReader, keep_frames: Optional[int] = None):
        from sam2_serve.models.session_window import SessionWindow

        self.model, self.reader = model, reader
        self.state = model.new_state(reader)
        long = keep_frames is not None and len(reader) > keep_frames
        self.window = SessionWindow(model, self.state, keep_frames) if long else None

    @property
    def num_frames(self) -> int:
        return sam2_internals.num_frames(self.state)

    @property
    def track_ids(self) -> list[str]:
        return [str(o) for o in sam2_internals.object_ids(self.state)]

    def _result(self, frame: int, obj_ids, logits) -> TrackedFrame:
        scores = [sam2_internals.object_score(sam2_internals.frame_output(self.state, i, frame))
                  for i in range(len(obj_ids))]
        return self.model.frame_result(self.state, frame, self.reader.info.times_s[frame], obj_ids, logits, scores)

    def add_prompt(self, p: VideoObjectPrompt) -> TrackedFrame:
        """Add points/box (or a mask) for ``p.track_id`` on ``p.frame``; that frame's masks for every object."""
        self.check_prompt(p)
        with self.model.context():
            frame, obj_ids, logits = self.model.add_prompt(self.state, p.frame, p)
            return self._result(frame, obj_ids, logits)

    def check_prompt(self, p: VideoObjectPrompt) -> None:
        """``LimitExceeded`` when the prompt would read tracking state this session dropped (long videos)."""
        if self.window is not None:
            self.window.check_prompt(p.track_id, p.frame)

    def remove_object(self, track_id: str) -> None:
        with self.model.context():
            self.model.predictor.remove_object(self.state, track_id, strict=True, need_output=False)
        if self.window is not None:
            self.window.forget(track_id)

    def propagate(self, start: Optional[int] = None, max_frames: Optional[int] = None,
                  reverse: bool = False) -> Iterator[TrackedFrame]:
        """Upstream ``propagate_in_video`` from ``start`` (default: the first prompted frame), ``max_frames``
        frames at most, forward or backward; yields one ``TrackedFrame`` per frame."""
        if self.window is not None:
            self.window.check_propagate(start, reverse)
        limit = None if max_frames is None else max(0, max_frames - 1)  # upstream tracks limit + 1 frames
        gen = self.model.predictor.propagate_in_video(self.state, start_frame_idx=start,
                                                       max_frame_num_to_track=limit, reverse=reverse)
        try:
            while True:
                with self.model.context():
                    try:
                        frame, obj_ids, logits = next(gen)
                    except StopIteration:
                        return
                    result = self._result(frame, obj_ids, logits)
                if self.window is not None:
                    self.window.after_frame(frame)
                yield result
        finally:
            gen.close()

    def stats(self) -> dict:
        return {"num_frames": self.num_frames, "objects": self.track_ids,
                "state_bytes": _tensor_bytes(sam2_internals.per_frame_tensors(self.state, inputs=False)),
                "outputs": sam2_internals.output_counts(self.state), "frames_decoded": self.reader.frames_decoded,
                **(self.window.stats() if self.window is not None else {})}

    def close(self) -> None:
        sam2_internals.set_frame_features(self.state, {})
        self.reader.close()
