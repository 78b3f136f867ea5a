"""What tests and benchmarks share: test media, seeded checkpoints, and upstream sam2 as the reference.

Needs the server extra (torch, sam2). Nothing here is used by the service itself.

* ``DATA``/``data``: the real test inputs shipped in ``tests/data`` (photos and a clip from sam2's notebooks;
  ``$SAM2_SERVE_TEST_DATA`` for another folder with the same layout).
* ``write_checkpoint``: sam2's own network, built from its config with a fixed seed and saved as sam2 saves
  checkpoints. Real weights cannot be downloaded in CI, and fake models prove nothing.
* References: upstream ``SAM2AutomaticMaskGenerator`` (``upstream_masks``) and ``SAM2VideoPredictor``
  (``load_video_reference``, ``upstream_run``) on the same checkpoint and the same pixels, and the comparisons
  (``assert_same_masks``, ``assert_same_mask``) that refuse trivial masks, which would prove nothing.
"""

from __future__ import annotations

import functools
import io
import os
import socket
import warnings
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SAM2_SERVE_TEST_DATA", ROOT / "tests" / "data"))
TINY = "sam2.1-hiera-tiny"
# The tracker's test input size: the tiny model at 256 pixels takes ~0.25 s a frame on 2 cores.
TRACKER_OVERRIDES = ("++model.image_size=256",)
# Automatic-mask thresholds at which random weights keep one mask per grid point (random masks score low).
KEEP_ALL = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


def data(rel: str) -> Path:
    """A test input, e.g. ``data("images/truck.jpg")``; a missing one is an error, never a skip."""
    path = DATA / rel
    if not path.is_file():
        raise FileNotFoundError(f"test data {path} is missing: it ships in tests/data (or set SAM2_SERVE_TEST_DATA)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- checkpoints ---------------------------------------------------------------------------------------------

def write_checkpoint(path: Path, model: str = TINY, seed: int = 0, hydra_overrides: tuple[str, ...] = ()) -> Path:
    """Build ``model``'s network with random weights (seeded) and save it as ``{"model": state_dict}``.

    The object-score head's last bias is set to +10: with random weights it is negative, and SAM 2 would then
    report "no object" on every video frame (image prediction does not read it).
    """
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    from sam2_serve.models.registry import get_spec
    from sam2_serve.models.sam2_internals import OBJECT_SCORE_BIAS_KEY as key

    torch.manual_seed(seed)
    net = build_sam2_video_predictor(get_spec(model).config, ckpt_path=None, device="cpu",
                                     hydra_overrides_extra=list(hydra_overrides))
    state = net.state_dict()
    if key in state:
        state[key] = torch.full_like(state[key], 10.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state}, path)
    return path


def cached_checkpoint(model: str, folder: Path, seed: int = 0) -> Path:
    """``write_checkpoint`` into ``folder`` once (named as the real file), reused afterwards (benchmarks)."""
    from sam2_serve.models.registry import get_spec

    path = Path(folder) / get_spec(model).hf_file
    return path if path.is_file() else write_checkpoint(path, model, seed=seed)


# ---- automatic masks: upstream SAM2AutomaticMaskGenerator ---------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _upstream_image_model(checkpoint: str, model: str = TINY):
    from sam2.build_sam import build_sam2

    from sam2_serve.models.registry import get_spec

    return build_sam2(get_spec(model).config, checkpoint, device="cpu")


@functools.lru_cache(maxsize=None)
def upstream_masks(checkpoint: str, image_path: str, params) -> tuple[dict, ...]:
    """Upstream's records for ``params`` (an ``AmgParams``) on the image, sorted by predicted IoU (stable)."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    rgb = np.asarray(Image.open(image_path).convert("RGB"))
    generator = SAM2AutomaticMaskGenerator(_upstream_image_model(checkpoint), **params.upstream_kwargs())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        records = generator.generate(rgb)
    return tuple(sorted(records, key=lambda r: -r["predicted_iou"]))


def assert_same_masks(ours: list[tuple[np.ndarray, float, float]], upstream, expected_count: Optional[int] = None):
    """``ours``: (bool mask, score, stability) in our order. Same count, same order, IoU >= 0.99, close scores."""
    import pytest

    assert len(ours) == len(upstream), (len(ours), len(upstream))
    if expected_count is not None:
        assert len(ours) == expected_count
    assert len(ours) > 0
    for i, ((mask, score, stability), ref) in enumerate(zip(ours, upstream)):
        ref_mask = ref["segmentation"]
        assert mask.shape == ref_mask.shape
        assert 0 < int(mask.sum()) < mask.size, f"mask {i} is empty or full"
        assert iou(mask, ref_mask) >= 0.99, f"mask {i}: IoU {iou(mask, ref_mask):.4f} with upstream's"
        assert score == pytest.approx(ref["predicted_iou"], abs=1e-4), i
        assert stability == pytest.approx(ref["stability_score"], abs=1e-3), i
    scores = [s for _, s, _ in ours]
    assert scores == sorted(scores, reverse=True)


# ---- video: upstream SAM2VideoPredictor ---------------------------------------------------------------------------

def load_video_reference(checkpoint, overrides=TRACKER_OVERRIDES):
    """Upstream's video predictor exactly as sam2 builds it, with the CPU dtype fix MEASUREMENTS.md describes."""
    from sam2_serve.models.loader import load_model
    from sam2_serve.models.video import fix_memory_dtype

    loaded = load_model(TINY, checkpoint, "cpu", video=True, hydra_overrides=list(overrides), sam2_exact=True)
    fix_memory_dtype(loaded.model)
    return loaded


def decode_frames(path, count: int, start: int = 0) -> list[np.ndarray]:
    """Frames ``start .. start + count - 1`` of a video as RGB uint8, decoded with PyAV independently of the service."""
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
    """Frames as upstream's JPEG-folder input: lossless PNG content under ``00000.jpg`` names (PIL reads by
    content), so upstream preprocesses the very pixels the service decodes."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(frames):
        Image.fromarray(rgb).save(folder / f"{i:05d}.jpg", format="PNG")
    return folder


def upstream_run(predictor, frames_dir: Path, prompts: Iterable[dict], start: Optional[int] = None):
    """Prompts (``add_new_points_or_box`` kwargs with ``frame_idx`` and ``obj_id``, or ``mask``), then
    ``propagate_in_video(start_frame_idx=start)``. Returns ({frame: {obj_id: (mask, low_res_logits, score)}}, state)."""
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
    """Upstream ``propagate_in_video`` -> {frame: {obj_id: (mask, low_res_logits, object score)}}."""
    from sam2_serve.models import sam2_internals as si

    out = {}
    for frame, obj_ids, logits in predictor.propagate_in_video(state, start_frame_idx=start, reverse=reverse):
        per = {}
        for i, obj_id in enumerate(obj_ids):
            o = si.frame_output(state, i, frame)
            per[obj_id] = ((logits[i, 0] > 0).numpy(), si.mask_logits(o)[0, 0].float().numpy(), si.object_score(o))
        out[frame] = per
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def assert_same_mask(ours: np.ndarray, ref: np.ndarray, where: str) -> None:
    """IoU >= 0.99 with the reference, which must cover neither nothing nor everything."""
    assert ours.shape == ref.shape, where
    assert 0.005 < ref.mean() < 0.995, f"{where}: reference mask is trivial ({ref.mean():.3f} of the frame)"
    assert iou(ours, ref) >= 0.99, f"{where}: IoU {iou(ours, ref):.4f}"


def corrupt_clip(frames: int = 8, bad: int = 5, size=(48, 64)) -> bytes:
    """A lossless FFV1/MKV clip whose packet ``bad`` is random bytes: it probes fine (the container is intact and
    frame 0 decodes) but frame ``bad`` cannot be decoded, so a stream fails after it began."""
    import av

    from sam2_serve.common.videos import encode_video

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
