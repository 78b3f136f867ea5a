"""sam2_serve/common/videos.py: probing, limits, clear errors, and frame access by index across containers and codecs."""

from __future__ import annotations

import io

import numpy as np
import pytest

from sam2_serve.common.errors import InvalidVideo, LimitExceeded, PayloadTooLarge
from sam2_serve.common.videos import FrameReader, encode_video, probe_video


def _clip(frames, **kw) -> bytes:
    buf = io.BytesIO()
    encode_video(frames, buf, **kw)
    return buf.getvalue()


def _frames(n, h, w):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return [np.roll(base, 3 * i, axis=1) for i in range(n)]


def test_probe_bedroom(bedroom_path):
    info = probe_video(bedroom_path.read_bytes())
    assert (info.width, info.height, info.num_frames) == (960, 540, 200)
    assert info.fps == pytest.approx(30) and info.duration_s == pytest.approx(200 / 30)
    assert info.times_s[1] == pytest.approx(1 / 30)


def test_random_access_equals_sequential(bedroom_path):
    data = bedroom_path.read_bytes()
    seq = FrameReader(data)
    frames = [seq.get(i) for i in range(40)]
    jumpy = FrameReader(data)
    for i in (35, 3, 39, 0, 20, 21):
        assert np.array_equal(jumpy.get(i), frames[i]), i
    assert seq.frames_decoded == 40  # sequential reads decode each frame once


@pytest.mark.parametrize("codec,container,pix_fmt,size", [
    ("libvpx-vp9", "webm", "yuv420p", (64, 96)),      # WebM/VP9, portrait
    ("libx264", "matroska", "yuv420p", (50, 66)),     # MKV/H.264, even but odd-looking sizes
    ("mpeg4", "avi", "yuv420p", (48, 64)),            # AVI/MPEG-4 part 2
    ("ffv1", "matroska", "bgr0", (37, 53)),           # odd sizes, lossless
])
def test_containers_and_codecs(codec, container, pix_fmt, size):
    h, w = size
    data = _clip(_frames(6, h, w), codec=codec, container=container, pix_fmt=pix_fmt)
    info = probe_video(data)
    assert (info.width, info.height, info.num_frames) == (w, h, 6)
    reader = FrameReader(data, info)
    assert reader.get(5).shape == (h, w, 3) and reader.get(0).dtype == np.uint8


def test_lossless_roundtrip():
    frames = _frames(4, 37, 53)
    reader = FrameReader(_clip(frames, codec="ffv1", container="matroska", pix_fmt="bgr0"))
    assert all(np.array_equal(reader.get(i), frames[i]) for i in range(4))


def test_bad_inputs(bedroom_path, truck_path):
    data = bedroom_path.read_bytes()
    with pytest.raises(InvalidVideo, match="empty"):
        probe_video(b"")
    with pytest.raises(InvalidVideo, match="not a video"):
        probe_video(b"hello, I am not a video" * 10)
    with pytest.raises(InvalidVideo, match="complete|truncated"):
        probe_video(data[: len(data) // 2])
    with pytest.raises(InvalidVideo, match="still image"):
        probe_video(truck_path.read_bytes())
    with pytest.raises(PayloadTooLarge, match="bytes"):
        probe_video(data, max_bytes=1000)
    with pytest.raises(LimitExceeded, match="frames"):
        probe_video(data, max_frames=50)
    with pytest.raises(PayloadTooLarge, match="lasts"):
        probe_video(data, max_seconds=2)
    with pytest.raises(PayloadTooLarge, match="pixels"):
        probe_video(data, max_frame_pixels=100_000)
    with pytest.raises(InvalidVideo, match="outside"):
        FrameReader(data).get(200)


def test_undecodable_frame_is_a_clear_error():
    from sam2_serve.testing import corrupt_clip

    data = corrupt_clip(8, bad=5)
    reader = FrameReader(data, probe_video(data))
    for i in range(5):
        reader.get(i)
    with pytest.raises(InvalidVideo, match="frame 5 could not be decoded"):
        reader.get(5)
