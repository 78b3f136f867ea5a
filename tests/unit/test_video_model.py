"""sam2_serve/models/video.py against upstream SAM2VideoPredictor on bedroom.mp4 frames (tiny checkpoint, 256 input)."""

from __future__ import annotations

import numpy as np
import pytest

from sam2_serve.common.types import VideoObjectPrompt
from sam2_serve.common.videos import FrameReader
from sam2_serve.testing import (assert_same_mask, decode_frames, load_video_reference, propagate,
                                   upstream_run, write_frames_dir)

N = 18  # > max_obj_ptrs_in_encoder (16) + 1, so pruning is exercised; ~0.25 s a frame


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_video_reference(tiny_checkpoint)


@pytest.fixture(scope="module")
def model(loaded):
    from sam2_serve.models.video import VideoModel

    return VideoModel(loaded)  # the same weights object as the reference: sam2's model holds no per-video state


@pytest.fixture(scope="module")
def video_bytes(bedroom_path) -> bytes:
    return bedroom_path.read_bytes()


@pytest.fixture(scope="module")
def frames(bedroom_path) -> list[np.ndarray]:
    return decode_frames(bedroom_path, N)


@pytest.fixture(scope="module")
def frames_dir(frames, tmp_path_factory):
    return write_frames_dir(frames, tmp_path_factory.mktemp("frames"))


@pytest.fixture(scope="module")
def short_dir(frames, tmp_path_factory):
    """The first 8 frames: upstream propagates to the end of its folder, so short cases get a short folder."""
    return write_frames_dir(frames[:8], tmp_path_factory.mktemp("frames8"))


def _pt(x, y):
    return np.array([[x, y]], np.float32), np.array([1], np.int32)


def _assert_one_object_as_upstream(ours, ref, n: int) -> None:
    """Frames 0..n-1 of one object (id 1): masks, logits and scores as upstream's (``upstream_run``'s ``ref``)."""
    assert [f.index for f in ours] == list(range(n))
    for f in ours:
        (obj,) = f.objects
        mask, logits, score = ref[f.index][1]
        assert_same_mask(obj.mask, mask, f"frame {f.index}")
        np.testing.assert_allclose(obj.logits, logits, atol=1e-3)
        assert obj.score == pytest.approx(score, abs=1e-3)


def test_one_click_equals_upstream_and_memory_stays_flat(model, loaded, video_bytes, frames_dir):
    points, labels = _pt(480, 300)
    stream = model.track(FrameReader(video_bytes), [VideoObjectPrompt(0, "1", points, labels)], 0, N,
                         with_logits=True)
    ours, stats = [], {}
    for frame in stream:
        ours.append(frame)
        stats[frame.index] = stream.stats()
    ref, _ = upstream_run(loaded.model, frames_dir,
                          [dict(frame_idx=0, obj_id=1, points=points, labels=labels)])
    _assert_one_object_as_upstream(ours, ref, N)
    p = loaded.model
    # Bounded: after 16 frames what is held per object stops growing (memories, pointers, bytes).
    per = stats[N - 1]["objects"]["1"]
    assert per == {"cond": 1, "non_cond_memories": p.num_maskmem - 1,
                   "non_cond_pointers_only": p.max_obj_ptrs_in_encoder - p.num_maskmem}
    assert stats[16]["objects"] == stats[N - 1]["objects"]
    assert stats[16]["state_bytes"] == stats[N - 1]["state_bytes"]
    assert stats[N - 1]["max_encodes_per_frame"] == 1 and stats[N - 1]["frames_encoded"] == N
    assert stats[N - 1]["features_cached"] == 0
    assert stats[N - 1]["frames_decoded"] == N


def test_two_objects_prompted_on_different_frames(model, loaded, video_bytes, short_dir):
    """A box on frame 0 and points on frame 3: each equals upstream tracking that object alone from its frame."""
    box = np.array([300, 150, 700, 450], np.float32)
    points = np.array([[200, 400], [250, 420]], np.float32)
    labels = np.array([1, 1], np.int32)
    n = 8
    prompts = [VideoObjectPrompt(3, "b", points, labels), VideoObjectPrompt(0, "a", box=box)]
    stream = model.track(FrameReader(video_bytes), prompts, 0, n)
    ours = list(stream)
    assert stream.stats()["max_encodes_per_frame"] == 1
    ref_a, _ = upstream_run(loaded.model, short_dir, [dict(frame_idx=0, obj_id="a", box=box)])
    ref_b, _ = upstream_run(loaded.model, short_dir, [dict(frame_idx=3, obj_id="b", points=points,
                                                          labels=labels)], start=3)
    assert [f.index for f in ours] == list(range(n))
    for f in ours:
        ids = [o.track_id for o in f.objects]
        assert ids == (["a"] if f.index < 3 else ["a", "b"]), f.index
        for o in f.objects:
            ref = (ref_a if o.track_id == "a" else ref_b)[f.index][o.track_id][0]
            assert_same_mask(o.mask, ref, f"frame {f.index} object {o.track_id}")


def test_frames_encoded_by_openvino_equal_upstream(loaded, video_bytes, short_dir):
    """The tracker's fast path (encoder_backend openvino): each frame's backbone pass on OpenVINO, the rest upstream's
    torch code; masks and logits equal upstream's all-torch propagation. The entry (tiny at 256) is the one the
    integration app's trackers export, in the cache beside the session's checkpoint."""
    from sam2_serve.models.fast_encoder import load_fast_encoder
    from sam2_serve.models.video import VideoModel

    fast = load_fast_encoder(loaded, "openvino")
    assert fast.backend == "openvino", fast.reason
    model = VideoModel(loaded, fast)
    assert model.predictor is not loaded.model and model.predictor.forward_image is fast.forward_image
    points, labels = _pt(480, 300)
    n = 8
    ours = list(model.track(FrameReader(video_bytes), [VideoObjectPrompt(0, "1", points, labels)], 0, n,
                            with_logits=True))
    ref, _ = upstream_run(loaded.model, short_dir, [dict(frame_idx=0, obj_id=1, points=points, labels=labels)])
    _assert_one_object_as_upstream(ours, ref, n)


def test_session_correction_equals_upstream(model, loaded, frames, short_dir):
    """Click, propagate, correction click mid-video, propagate again: every step equal to upstream's."""
    import torch

    sub = short_dir
    clip = _clip_bytes(frames[:8])
    p0, l0 = _pt(480, 300)
    p1, l1 = np.array([[300, 200]], np.float32), np.array([0], np.int32)

    session = model.open_session(FrameReader(clip))
    first = session.add_prompt(VideoObjectPrompt(0, "1", p0, l0))
    run1 = list(session.propagate())
    corrected = session.add_prompt(VideoObjectPrompt(5, "1", p1, l1, clear_old_points=True))
    run2 = list(session.propagate())

    P = loaded.model
    with torch.inference_mode():
        state = P.init_state(str(sub), offload_video_to_cpu=True)
        _, _, ref_first = P.add_new_points_or_box(state, 0, "1", points=p0, labels=l0)
        ref1 = propagate(P, state)
        _, _, ref_corr = P.add_new_points_or_box(state, 5, "1", points=p1, labels=l1)
        ref2 = propagate(P, state)
    assert_same_mask(first.objects[0].mask, (ref_first[0, 0] > 0).numpy(), "first click")
    assert_same_mask(corrected.objects[0].mask, (ref_corr[0, 0] > 0).numpy(), "correction")
    for run, ref in ((run1, ref1), (run2, ref2)):
        assert [f.index for f in run] == sorted(ref)
        for f in run:
            assert_same_mask(f.objects[0].mask, ref[f.index]["1"][0], f"frame {f.index}")
    assert session.stats()["objects"] == ["1"]


def _clip_bytes(frames) -> bytes:
    """Frames as a lossless FFV1/MKV clip: decoding it gives back exactly these pixels."""
    import io

    from sam2_serve.common.videos import encode_video

    buf = io.BytesIO()
    encode_video(frames, buf, codec="ffv1", container="matroska", pix_fmt="bgr0")
    return buf.getvalue()


def test_preprocess_matches_upstream_loader(frames_dir):
    import torch
    from sam2.utils.misc import load_video_frames_from_jpg_images

    from PIL import Image

    from sam2_serve.models.video import preprocess_frame

    images, h, w = load_video_frames_from_jpg_images(str(frames_dir), 256, True, compute_device=torch.device("cpu"))
    rgb = np.asarray(Image.open(frames_dir / "00003.jpg").convert("RGB"))
    assert (h, w) == rgb.shape[:2]
    assert torch.equal(preprocess_frame(rgb, 256), images[3])
