"""The ``sam2-serve`` command line against the real shared application: output files exist, decode, match what
the client gets, and the track overlay has one frame per streamed frame."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from sam2_serve import Concept, Frame, Model, Region
from sam2_serve.client.cli import main
from sam2_serve.client.render import overlay
from tests.integration.test_client import CLIP_FRAMES, short_clip  # noqa: F401 (a fixture)
from sam2_serve.testing import decode_frames

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clip_path(short_clip, tmp_path_factory) -> Path:  # noqa: F811
    path = tmp_path_factory.mktemp("cli") / "clip.mp4"
    path.write_bytes(short_clip)
    return path


def _png(path: Path) -> np.ndarray:
    img = PILImage.open(path)
    img.load()
    return np.asarray(img)


def _blocks(diff: np.ndarray) -> np.ndarray:
    """|mean| of each 4x4 block of a (H, W, 3) difference (H, W multiples of 4)."""
    h, w, c = diff.shape
    return np.abs(diff.reshape(h // 4, 4, w // 4, 4, c).mean(axis=(1, 3)))


def test_predict_writes_masks_and_overlay(base_url, groceries_path, tmp_path, capsys):
    out = tmp_path / "mask.png"
    rc = main(["predict", str(groceries_path), "--point", "0.45,0.5", "--point", "0.2,0.3,0", "-o", str(out),
               "--overlay", str(tmp_path / "overlay.png"), "--url", base_url])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    mask = _png(out)
    assert mask.shape == (534, 800) and set(np.unique(mask)) == {0, 255}
    expected = Model(base_url).predict(image=groceries_path, regions=[
        Region(point=[0.45, 0.5]), Region(point=[0.2, 0.3], concepts=[Concept("0", 0.0)])])
    assert np.array_equal(mask == 255, expected[0].mask)
    assert summary[0]["mask"] == str(out) and summary[0]["score"] == pytest.approx(expected[0].score)
    over = _png(tmp_path / "overlay.png")
    original = np.asarray(PILImage.open(groceries_path).convert("RGB"))
    assert over.shape == (534, 800, 3)
    assert np.array_equal(over, overlay(original, [expected[0].mask]))  # PNG: exact
    assert np.array_equal(over[~expected[0].mask], original[~expected[0].mask])

    # several masks: one file each
    rc = main(["predict", str(groceries_path), "--point", "0.45,0.5", "--multimask", "-o", str(out), "--url",
               base_url])
    assert rc == 0 and all(_png(tmp_path / f"mask_{i}.png").shape == (534, 800) for i in range(3))


def test_segment_anything_writes_masks_overlay_and_json(base_url, groceries_path, tmp_path):
    out = tmp_path / "auto"
    rc = main(["segment-anything", str(groceries_path), "-o", str(out), "--points-per-side", "4",
               "--pred-iou-thresh", "0", "--stability-score-thresh", "0", "--param", "box_nms_thresh=1.0",
               "--url", base_url])
    assert rc == 0
    summary = json.loads((out / "regions.json").read_text())
    assert len(summary) == 16
    for entry in summary:
        mask = _png(out / entry["mask"]) == 255
        assert mask.shape == (534, 800) and mask.sum() == entry["area"] > 0
    assert [e["score"] for e in summary] == sorted((e["score"] for e in summary), reverse=True)
    assert _png(out / "overlay.png").shape == (534, 800, 3)


def test_track_renders_overlay_with_every_streamed_frame(base_url, clip_path, tmp_path):
    """Through the installed console script, as a user runs it."""
    out = tmp_path / "overlay.mp4"
    script = Path(sys.executable).with_name("sam2-serve")
    assert script.is_file(), f"{script} is missing: install the project (pip install --no-build-isolation -e .)"
    proc = subprocess.run([str(script), "track", str(clip_path), "--point", "0.5,0.6", "-o", str(out),
                           "--url", base_url], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert f"{CLIP_FRAMES}/{CLIP_FRAMES} frames" in proc.stderr  # the progress bar reached the end
    rendered = [f.astype(float) for f in decode_frames(out, 100)]
    source = decode_frames(clip_path, 100)
    assert len(rendered) == len(source) == CLIP_FRAMES
    assert rendered[0].shape == source[0].shape == (180, 320, 3)
    # the masks are drawn where the service says the object is
    tracked = list(Model(base_url).generate(clip_path, frames=[Frame(regions=[Region(point=[0.5, 0.6],
                                                                                     track_id="1")])]))
    for frame, got, src in zip(tracked, rendered, source):
        expected = overlay(src, [frame.regions[0].mask])
        # H.264 is lossy (and subsamples colour): compare 4x4 block means; the rendering is far closer to the
        # source with the mask drawn than to the source alone
        assert _blocks(got - expected).mean() < _blocks(got - src.astype(float)).mean() / 3

    # a window of the video: one output frame per streamed frame
    rc = main(["track", str(clip_path), "--point", "0.5,0.6", "--start-frame", "2", "--max-frames", "3",
               "-o", str(out), "--quiet", "--url", base_url])
    assert rc == 0 and len(decode_frames(out, 100)) == 3


def test_cli_errors(base_url, groceries_path, tmp_path, capsys):
    rc = main(["predict", str(groceries_path), "--point", "1.5,0.5", "-o", str(tmp_path / "m.png"), "--url",
               base_url])
    assert rc == 1 and "(1.5, 0.5) are outside [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "m.png").exists()
    with pytest.raises(SystemExit) as info:
        main(["predict", str(groceries_path), "--point", "0.5", "--url", base_url])
    assert info.value.code == 2 and "--point '0.5'" in capsys.readouterr().err
    rc = main(["track", str(tmp_path / "missing.mp4"), "--point", "0.5,0.5", "--url", base_url])
    assert rc == 1 and "missing.mp4" in capsys.readouterr().err
