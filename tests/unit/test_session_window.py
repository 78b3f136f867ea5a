"""Sessions on long videos (sam2_serve/models/session_window.py): state bounded in video length, every answer still
upstream's (a full-state ``SAM2VideoPredictor`` on the same frames), and what would need dropped state refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2_serve.common.errors import LimitExceeded
from sam2_serve.common.types import VideoObjectPrompt
from sam2_serve.common.videos import FrameReader
from sam2_serve.models.session_window import Intervals
from sam2_serve.testing import assert_same_mask, decode_frames, load_video_reference, propagate, write_frames_dir
from tests.unit.test_video_model import _clip_bytes

N, KEEP = 30, 20


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint):
    return load_video_reference(tiny_checkpoint)


@pytest.fixture(scope="module")
def frames(bedroom_path):
    return decode_frames(bedroom_path, N)


def _click(frame, track_id, x, y, label=1):
    return VideoObjectPrompt(frame, track_id, np.array([[x, y]], np.float32), np.array([label], np.int32))


def test_intervals():
    s = Intervals()
    for f in (3, 4, 5, 9):
        s.add(f, f)
    s.add(6, 8)
    assert s.spans == [[3, 9]] and len(s) == 7
    s.remove(5)
    assert s.spans == [[3, 4], [6, 9]]
    assert s.first_in(0, 2) is None and s.first_in(5, 7) == 6 and s.first_in(4, 4) == 4


def test_long_session_is_bounded_and_exact(loaded, frames, tmp_path):
    from sam2_serve.models.video import VideoModel

    model, P = VideoModel(loaded), loaded.model
    click, fix = _click(0, "1", 480, 300), _click(26, "1", 300, 200, label=0)
    session = model.open_session(FrameReader(_clip_bytes(frames)), keep_frames=KEEP)
    session.add_prompt(click)
    ours, stats = {}, {}
    for frame in session.propagate():
        ours[frame.index] = frame.objects[0].mask
        stats[frame.index] = session.stats()

    with torch.inference_mode():
        state = P.init_state(str(write_frames_dir(frames, tmp_path / "frames")), offload_video_to_cpu=True)
        P.add_new_points_or_box(state, 0, "1", points=click.points, labels=click.labels)
        ref = propagate(P, state)
        _, _, ref_fix = P.add_new_points_or_box(state, 26, "1", points=fix.points, labels=fix.labels)
        ref_after = propagate(P, state, start=26)
        _, _, ref_new = P.add_new_points_or_box(state, 5, "2", points=click.points, labels=click.labels)
    assert sorted(ours) == list(range(N))
    for f in range(N):
        assert_same_mask(ours[f], ref[f]["1"][0], f"frame {f}")

    # Bounded: after frame f, the non-conditioning outputs within KEEP frames of f; the rest dropped.
    held = {f: s["outputs"]["1"]["non_cond_memories"] + s["outputs"]["1"]["non_cond_pointers_only"]
            for f, s in stats.items()}
    assert held[N - 1] == held[N - 5] == KEEP + 1 and stats[N - 1]["outputs"]["1"]["cond"] == 1
    assert stats[N - 1]["state_bytes"] == stats[N - 5]["state_bytes"]
    assert stats[N - 1]["dropped_frames"] == {"1": N - 2 - KEEP}  # frames 1 .. N - 2 - KEEP (0: prompted)

    # A correction on a kept frame (its window 11..25 held): upstream's, and so is propagation from it.
    corrected = session.add_prompt(fix)
    assert_same_mask(corrected.objects[0].mask, (ref_fix[0, 0] > 0).numpy(), "the correction on frame 26")
    again = {f.index: f.objects[0].mask for f in session.propagate(start=26, max_frames=3)}
    for f in (26, 27, 28):
        assert_same_mask(again[f], ref_after[f]["1"][0], f"frame {f} after the correction")

    # What would read dropped state is refused, saying what to do; nothing changed.
    for what, call in (("a correction whose window was dropped", lambda: session.add_prompt(_click(20, "1", 1, 1))),
                       ("a correction on a dropped frame", lambda: session.add_prompt(_click(3, "1", 1, 1))),
                       ("a propagation from a dropped window", lambda: next(session.propagate(start=12))),
                       ("backward into dropped frames", lambda: next(session.propagate(start=5, reverse=True)))):
        with pytest.raises(LimitExceeded, match="propagate again from a prompted frame"):
            call()
    session.window.check_propagate(None, False)     # from the prompted frame 0: nothing before it to read
    session.window.check_propagate(28, True)        # backward from 28: reads 29.. , all held

    # A new object, even on a dropped frame, starts there as upstream starts it.
    answer = session.add_prompt(_click(5, "2", 480, 300))
    assert [o.track_id for o in answer.objects] == ["1", "2"]
    assert_same_mask(answer.objects[1].mask, (ref_new[1, 0] > 0).numpy(), "new object on frame 5")
    session.remove_object("1")
    assert "1" not in session.stats()["dropped_frames"]


def test_short_videos_keep_everything(loaded, frames):
    from sam2_serve.models.video import VideoModel

    session = VideoModel(loaded).open_session(FrameReader(_clip_bytes(frames[:8])), keep_frames=KEEP)
    assert session.window is None and "keep_frames" not in session.stats()
    with pytest.raises(ValueError, match="shorter than"):
        VideoModel(loaded).open_session(FrameReader(_clip_bytes(frames)), keep_frames=10)


def test_tracker_sessions_are_bounded_and_refuse_before_work(tiny_checkpoint, frames):
    """The ``VideoTracker`` deployment class (built without Ray) gives sessions on videos longer than
    ``session_keep_frames`` a window, and refuses a correction on dropped state before any model work."""
    import asyncio

    from sam2_serve.common.limits import Limits
    from sam2_serve.common.schemas import SessionPromptRequest
    from sam2_serve.common.videos import probe_video
    from sam2_serve.deployments.tracker import VideoTracker
    from sam2_serve.testing import TINY, TRACKER_OVERRIDES

    tracker = VideoTracker(TINY, str(tiny_checkpoint), device="cpu", torch_threads=1,
                           hydra_overrides=TRACKER_OVERRIDES, session_keep_frames=KEEP)
    clip = _clip_bytes(frames)

    def prompt(index, x, y):
        return SessionPromptRequest(index=index, regions=[{"point": [x, y], "track_id": "1"}])

    async def run():
        sid = (await tracker.create_session(clip, probe_video(clip)))["session_id"]
        await tracker.add_prompts(sid, prompt(0, 0.5, 0.55), Limits())
        tracked = [f.index async for f in tracker.propagate(sid)]
        before = tracker._sessions[sid].session.stats()
        with pytest.raises(LimitExceeded, match="frame 3"):
            await tracker.add_prompts(sid, prompt(3, 0.2, 0.2), Limits())
        return tracked, before, tracker._sessions[sid].session.stats()

    tracked, before, after = asyncio.run(run())
    assert tracked == list(range(N))
    assert before["dropped_frames"] == {"1": N - 2 - KEEP} and after == before  # refused: nothing changed
