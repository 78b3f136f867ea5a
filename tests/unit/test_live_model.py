"""sam2_serve/models/live.py: frames pushed one by one track as ``TrackStream`` (what /v1/generate runs) tracks the
same frames with the same prompts, a correction on the latest frame equals upstream's correction after
``propagate_in_video``, and what a stream holds stays flat (bedroom.mp4, tiny checkpoint at 256)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2_serve.common.errors import InvalidRequest
from sam2_serve.common.types import VideoObjectPrompt
from sam2_serve.common.videos import FrameReader
from sam2_serve.testing import assert_same_mask, decode_frames, load_video_reference, write_frames_dir

N = 19  # > max_obj_ptrs_in_encoder (16) + 2: pruning is exercised and stats can be compared over 2 frames


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_video_reference(tiny_checkpoint)


@pytest.fixture(scope="module")
def model(loaded):
    from sam2_serve.models.video import VideoModel

    return VideoModel(loaded)


@pytest.fixture(scope="module")
def frames(bedroom_path) -> list[np.ndarray]:
    return decode_frames(bedroom_path, N)


def _click(frame, track_id, x, y, label=1, clear=True):
    return VideoObjectPrompt(frame, track_id, np.array([[x, y]], np.float32), np.array([label], np.int32),
                             clear_old_points=clear)


def _live(model, frames):
    from sam2_serve.models.live import LiveTrack

    h, w = frames[0].shape[:2]
    return LiveTrack(model, w, h)


def test_pushed_frames_track_as_generate_with_objects_added_and_removed(model, frames, bedroom_path):
    """Object a from frame 0, b from frame 3 (both mid-stream for the live side), a removed after frame 5, b after
    frame 7: every mask equals TrackStream's on the same frames (the whole 200-frame file, so both see sam2's
    full pointer window), and the frames after the last removal cost no model work."""
    a, b = _click(0, "a", 480, 300), VideoObjectPrompt(3, "b", box=np.array([300, 150, 700, 450], np.float32))
    stream = model.track(FrameReader(bedroom_path.read_bytes()), [a, b], 0, None)
    reference = {}
    for frame in stream:
        reference[frame.index] = {o.track_id: o.mask for o in frame.objects}
        if frame.index == 9:
            break
    stream.close()

    live = _live(model, frames)
    with pytest.raises(InvalidRequest, match="send a frame first"):
        live.add([a])
    got = {}
    for i in range(10):
        frame = live.push(frames[i], index=100 + i, time_s=i / 30)
        assert frame.index == 100 + i and frame.time_s == pytest.approx(i / 30)
        got[i] = {o.track_id: o.mask for o in frame.objects}
        if i % 2:  # the memory pass between frames, as the tracker runs it; on even frames the next call runs it
            live.finish()
        if i in (0, 3):
            answer = live.add([a if i == 0 else b])
            assert answer.index == 100 + i
            prompted = {o.track_id: o.mask for o in answer.objects}
            assert list(prompted) == (["a"] if i == 0 else ["a", "b"])
            for track_id, mask in prompted.items():  # the frame's masks, now with the new object
                assert_same_mask(mask, reference[i][track_id], f"prompt answer on frame {i}, object {track_id}")
            got[i] = prompted
        if i == 5:
            live.remove("a")
            assert live.track_ids == ["b"]
        if i == 7:
            live.remove("b")
            assert live.track_ids == []
    encoded = live.stats()["frames_encoded"]
    for i in range(10):
        expected = {k: v for k, v in reference[i].items() if not (k == "a" and i > 5 or k == "b" and i > 7)}
        assert list(got[i]) == list(expected), i
        for track_id, mask in got[i].items():
            assert_same_mask(mask, expected[track_id], f"frame {i} object {track_id}")
    assert encoded == 8, "frames 0-7 encoded once each, none after the last object went"
    assert live.stats()["max_encodes_per_frame"] == 1


def test_correction_on_the_latest_frame_equals_upstream(model, loaded, frames, tmp_path):
    """Click on frame 0, frames 1-4 tracked, a negative click on frame 4 (the latest), then frames 5-6: equal to
    upstream's propagate_in_video to frame 4, the same click, then propagation on (16 frames in its folder, so
    that its pointer window is the full one, as a live stream's)."""
    P = loaded.model
    folder = write_frames_dir(frames[:16], tmp_path / "frames16")
    click, fix = _click(0, "1", 480, 300), _click(4, "1", 300, 200, label=0, clear=False)
    with torch.inference_mode():
        state = P.init_state(str(folder), offload_video_to_cpu=True)
        P.add_new_points_or_box(state, 0, "1", points=click.points, labels=click.labels)
        for _ in P.propagate_in_video(state, max_frame_num_to_track=4):
            pass
        _, _, ref_fix = P.add_new_points_or_box(state, 4, "1", points=fix.points, labels=fix.labels,
                                                clear_old_points=False)
        ref_after = {f: (logits[0, 0] > 0).numpy()
                     for f, _, logits in P.propagate_in_video(state, start_frame_idx=5, max_frame_num_to_track=1)}

    live = _live(model, frames)
    for i in range(5):
        live.push(frames[i], i, 0.0)
        if i == 0:
            live.add([click])
    corrected = live.add([fix])
    (obj,) = corrected.objects
    assert_same_mask(obj.mask, (ref_fix[0, 0] > 0).numpy(), "the correction on frame 4")
    for i in (5, 6):
        (obj,) = live.push(frames[i], i, 0.0).objects
        assert_same_mask(obj.mask, ref_after[i], f"frame {i} after the correction")


def test_state_stays_flat(model, frames):
    """One object tracked over N frames with a correction click on every frame from 8 on: what the stream holds
    (outputs per kind, tensor bytes, prompts, features, pixels) is the same after frame N - 2 and N - 1."""
    live = _live(model, frames)
    stats = {}
    for i in range(N):
        live.push(frames[i], i, 0.0)
        if i == 0:
            live.add([_click(0, "1", 480, 300)])
        elif i >= 8:
            live.add([_click(i, "1", 470 + i, 310, clear=False)])
        stats[i] = live.stats()
    p = model.predictor
    last, before = stats[N - 1], stats[N - 2]
    for key in ("objects", "state_bytes", "features_cached", "inputs"):
        assert last[key] == before[key], (key, before[key], last[key])
    # frame r's window (num_maskmem - 1 memories, max_obj_ptrs - 1 pointers in all) plus r itself
    assert last["objects"]["1"] == {"cond": 1, "non_cond_memories": p.num_maskmem,
                                    "non_cond_pointers_only": p.max_obj_ptrs_in_encoder - p.num_maskmem}
    assert last["features_cached"] == 1 and last["inputs"] == 2  # frame 0's click, the latest frame's
    assert last["frames_encoded"] == N and last["max_encodes_per_frame"] == 1
    assert len(live.frames._rgb) == 1


def test_frames_of_another_size_are_refused(model, frames):
    live = _live(model, frames)
    live.push(frames[0], 0, 0.0)
    with pytest.raises(InvalidRequest, match="960x540"):
        live.push(frames[0][:100], 1, 0.0)
    assert live.push(frames[1], 1, 0.0).objects == []  # still usable


def test_frames_resized_by_the_ingress_track_as_full_frames(model, frames):
    """The ingress sends a frame larger than the model's input already resized (``resize_square``: the resize the
    tracker would do) with the frame's size: the same masks, bit for bit, through a click and a correction."""
    from sam2_serve.common.images import resize_square

    side = model.image_size
    full, resized = _live(model, frames), _live(model, frames)
    for i in range(5):
        a = full.push(frames[i], i, 0.0)
        b = resized.push(resize_square(frames[i], side), i, 0.0, size=(960, 540))
        if i in (0, 3):
            click = _click(i, "1", 480 - 20 * i, 300, clear=i == 0)
            a, b = full.add([click]), resized.add([click])
        full.finish()
        resized.finish()
        assert [o.track_id for o in a.objects] == [o.track_id for o in b.objects] == ["1"]
        for x, y in zip(a.objects, b.objects):
            assert x.mask.shape == (540, 960) and 0.005 < x.mask.mean() < 0.995, f"frame {i}"
            assert np.array_equal(x.mask, y.mask), f"frame {i}"
            assert x.score == y.score
    with pytest.raises(InvalidRequest, match="640x480 pixels; this stream's frames are 960x540"):
        resized.push(resize_square(frames[5], side), 5, 0.0, size=(640, 480))
    with pytest.raises(ValueError, match="model's input size"):
        resized.push(frames[5][:, :500], 5, 0.0, size=(960, 540))
