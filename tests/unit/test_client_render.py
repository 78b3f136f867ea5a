"""Overlays drawn by the command line: colours, outlines, and the video writer (frame count, odd sizes)."""

from __future__ import annotations

import numpy as np
import pytest

from sam2_serve.common.videos import encode_video
from sam2_serve import Frame, Region
from sam2_serve.client.render import color, overlay, read_frames, video_info, write_overlay_video


def test_overlay_blends_and_outlines():
    rgb = np.full((6, 8, 3), 100, np.uint8)
    mask = np.zeros((6, 8), bool)
    mask[1:5, 2:7] = True
    out = overlay(rgb, [mask], colors=[(200, 0, 50)], alpha=0.5)
    assert out[3, 4].tolist() == [150, 50, 75]                  # inside: half-way to the colour
    assert out[1, 2].tolist() == [200, 0, 50]                   # outline: the colour itself
    assert np.array_equal(out[~mask], rgb[~mask])               # outside: untouched
    assert len({color(i) for i in range(40)}) == 40
    with pytest.raises(ValueError, match="mask 0"):
        overlay(rgb, [np.zeros((5, 8), bool)])


def test_overlay_video_writes_one_frame_per_tracked_frame(tmp_path):
    """An odd-sized source (33x21) gives an even-sized H.264 output (32x20), one frame per streamed frame, with
    each track in its own colour over the right source frame."""
    source = [np.full((21, 33, 3), 40 * i, np.uint8) for i in range(6)]
    src_path = tmp_path / "src.mp4"
    encode_video(source, src_path, fps=10, pix_fmt="yuv444p")  # 4:4:4 allows odd sizes
    assert video_info(src_path) == (6, 10.0)
    mask = np.zeros((21, 33), bool)
    mask[4:16, 4:20] = True
    frames = [Frame(index=i, regions=[Region(mask=mask, track_id="a"), Region(mask=~mask, track_id="b")])
              for i in (2, 3, 5)]
    out = tmp_path / "overlay.mp4"
    seen = []
    assert write_overlay_video(src_path, iter(frames), out, on_frame=seen.append) == 3
    assert seen == [1, 2, 3]
    rendered = list(read_frames(out))
    assert len(rendered) == 3 and rendered[0].shape == (20, 32, 3)
    decoded_source = list(read_frames(src_path))
    for got, i in zip(rendered, (2, 3, 5)):
        def error(k):  # |mean| difference per 4x4 block (H.264 in YUV blurs saturated colour edges)
            d = got.astype(float) - overlay(decoded_source[k], [mask, ~mask], [color(0), color(1)])[:20, :32]
            return np.abs(d.reshape(5, 4, 8, 4, 3).mean(axis=(1, 3))).mean()

        errors = [error(k) for k in range(6)]
        assert int(np.argmin(errors)) == i and errors[i] < 6, errors  # drawn over the right source frame
    with pytest.raises(ValueError, match="no frame 9"):
        write_overlay_video(src_path, [Frame(index=9, regions=[])], tmp_path / "x.mp4")
