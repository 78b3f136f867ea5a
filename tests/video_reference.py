"""Upstream ``SAM2VideoPredictor`` as the reference for video tests: same checkpoint, same frames, same prompts.

Frames are decoded here with PyAV independently of the service and handed to upstream's own JPEG-folder
loader (``init_state(dir)``) as lossless PNG content under ``00000.jpg`` names (PIL reads by content), so the
reference preprocesses exactly as upstream does, from the very pixels the service decodes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image

TRACKER_OVERRIDES = ("++model.image_size=256",)  # tiny model at 256: ~0.25 s a frame on 2 cores


def load_reference(checkpoint, overrides=TRACKER_OVERRIDES):
    """The upstream video predictor (with the CPU dtype fix MEASUREMENTS.md describes)."""
    from models.loader import load_model
    from models.video import fix_memory_dtype

    loaded = load_model("sam2.1-hiera-tiny", checkpoint, "cpu", video=True, hydra_overrides=list(overrides),
                        sam2_exact=True)
    fix_memory_dtype(loaded.model)
    return loaded


def decode_frames(path, count: int, start: int = 0) -> list[np.ndarray]:
    import av

    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= start + count:
                break
            if i >= start:
                frames.append(frame.to_ndarray(format="rgb24"))
    return frames


def write_frames_dir(frames: list[np.ndarray], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(frames):
        Image.fromarray(rgb).save(folder / f"{i:05d}.jpg", format="PNG")
    return folder


def upstream_run(predictor, frames_dir: Path, prompts: Iterable[dict], start: Optional[int] = None,
                 steps: Iterable = ()) -> dict:
    """Prompts (``add_new_points_or_box`` kwargs with ``frame_idx`` and ``obj_id``, or ``mask``), then
    ``propagate_in_video(start_frame_idx=start)``. Returns {frame: {obj_id: (mask, low_res_logits, score)}}."""
    import torch

    with torch.inference_mode():
        state = predictor.init_state(str(frames_dir), offload_video_to_cpu=True)
        for p in prompts:
            p = dict(p)
            if "mask" in p:
                predictor.add_new_mask(state, p["frame_idx"], p["obj_id"], p["mask"])
            else:
                predictor.add_new_points_or_box(state, **p)
        return propagate(predictor, state, start), state


def propagate(predictor, state, start=None, reverse=False) -> dict:
    out = {}
    for frame, obj_ids, logits in predictor.propagate_in_video(state, start_frame_idx=start, reverse=reverse):
        per = {}
        for i, obj_id in enumerate(obj_ids):
            od = state["output_dict_per_obj"][i]
            o = od["cond_frame_outputs"].get(frame) or od["non_cond_frame_outputs"].get(frame)
            per[obj_id] = ((logits[i, 0] > 0).numpy(), o["pred_masks"][0, 0].float().numpy(),
                           float(o["object_score_logits"].reshape(-1)[0]))
        out[frame] = per
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def assert_same_mask(ours: np.ndarray, ref: np.ndarray, where: str) -> None:
    assert ours.shape == ref.shape, where
    assert 0.005 < ref.mean() < 0.995, f"{where}: reference mask is trivial ({ref.mean():.3f} of the frame)"
    assert iou(ours, ref) >= 0.99, f"{where}: IoU {iou(ours, ref):.4f}"


def corrupt_clip(frames: int = 8, bad: int = 5, size=(48, 64)) -> bytes:
    """A lossless FFV1/MKV clip whose packet ``bad`` is random bytes: it probes fine (the container is intact and
    frame 0 decodes) but frame ``bad`` cannot be decoded, so a stream fails after it began."""
    import io

    import av

    from common.videos import encode_video

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    encode_video([rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(frames)], buf, codec="ffv1",
                 container="matroska", pix_fmt="bgr0")
    out = io.BytesIO()
    with av.open(io.BytesIO(buf.getvalue())) as src, av.open(out, mode="w", format="matroska") as dst:
        stream = src.streams.video[0]
        out_stream = dst.add_stream_from_template(stream)
        for i, packet in enumerate(p for p in src.demux(stream) if p.dts is not None):
            if i == bad:
                junk = av.Packet(bytes(rng.integers(0, 255, packet.size, dtype=np.uint8)))
                junk.pts, junk.dts, junk.time_base = packet.pts, packet.dts, packet.time_base
                packet = junk
            packet.stream = out_stream
            dst.mux(packet)
    return out.getvalue()
