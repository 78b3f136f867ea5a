"""POST /v1/generate and handle ``generate``: streamed NDJSON frames equal to upstream SAM2VideoPredictor,
streaming for real (first frame early, disconnect stops work), and every bad input answered with a clear 4xx."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest
import requests

from sam2_serve.common.masks import decode_png, decode_rle, encode_png
from tests.integration.conftest import assert_healthy
from sam2_serve.testing import (assert_same_mask, decode_frames, load_video_reference, upstream_run,
                                   write_frames_dir)

pytestmark = pytest.mark.integration

N = 6


@pytest.fixture(scope="module")
def video(bedroom_path) -> bytes:
    return bedroom_path.read_bytes()


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    return load_video_reference(tiny_checkpoint).model


@pytest.fixture(scope="module")
def frames_dir(bedroom_path, tmp_path_factory):
    return write_frames_dir(decode_frames(bedroom_path, N), tmp_path_factory.mktemp("gen_frames"))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _lines(response: requests.Response) -> list[dict]:
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].startswith("application/x-ndjson")
    return [json.loads(line) for line in response.iter_lines() if line]


def _mask(region: dict) -> np.ndarray:
    m = region["mask"]
    return decode_png(m["png"]) if "png" in m else decode_rle(m["rle"])


def tracker_stats(deployment_handle, replicas: int = 2) -> dict:
    """Stats of every tracker replica (calls land on a random replica; ask until each has answered)."""
    seen = {}
    h = deployment_handle("VideoTracker")
    for _ in range(60):
        s = h.stats.remote().result(timeout_s=30)
        seen[s["replica"]] = s
        if len(seen) >= replicas:
            break
    return seen


def test_list_dict_inputs_equals_upstream(base_url, http, video, reference, frames_dir):
    """The add_new_points_or_box form, pixel coordinates, whole floats as ints, RLE masks."""
    body = {"video": {"base64": _b64(video)}, "max_frames": N, "mask_format": "rle", "denormalize_coord": False,
            "list_dict_inputs": [{"points": [[480.0, 300.0]], "labels": [1.0], "obj_id": 1.0, "frame_idx": 0.0}]}
    with http.post(f"{base_url}/v1/generate", json=body, stream=True, timeout=300) as r:
        lines = _lines(r)
    ref, _ = upstream_run(reference, frames_dir, [dict(frame_idx=0, obj_id=1, points=[[480.0, 300.0]], labels=[1])])
    assert [line["index"] for line in lines] == list(range(N))
    assert lines[1]["time"] == pytest.approx(1 / 30, abs=1e-5)
    for line in lines:
        (region,) = line["regions"]
        assert region["track_id"] == "1"
        mask, _, score = ref[line["index"]][1]
        assert_same_mask(_mask(region), mask, f"frame {line['index']}")
        assert region["score"] == pytest.approx(score, abs=1e-3)
        assert region["box"] is not None and all(0 <= v <= 1 for v in region["box"])


def test_frames_form_multipart_and_handle(base_url, http, video, handle):
    """Regions with track ids (normalized point, box, and a mask prompt), uploaded as a file; the handle gives the
    same masks as booleans."""
    h, w = 540, 960
    mask = np.zeros((h, w), bool)
    mask[300:450, 100:300] = True
    frames = [{"index": 1, "regions": [{"point": [0.5, 0.55], "track_id": "p"},
                                       {"box": [0.1, 0.1, 0.4, 0.5], "track_id": "b"}]},
              {"index": 2, "regions": [{"mask": {"png": encode_png(mask)}, "track_id": "m"}]}]
    options = {"start_frame": 1, "max_frames": 3}
    with http.post(f"{base_url}/v1/generate", files={"video": ("clip.mp4", video, "video/mp4")},
                   data={"frames": json.dumps(frames), "options": json.dumps(options)}, stream=True, timeout=300) as r:
        lines = _lines(r)
    assert [line["index"] for line in lines] == [1, 2, 3]
    assert [[g["track_id"] for g in line["regions"]] for line in lines] == [["p", "b"], ["p", "b", "m"],
                                                                             ["p", "b", "m"]]
    got = list(handle.options(stream=True).generate.remote(video, frames=frames, **options))
    assert [f.index for f in got] == [1, 2, 3]
    for line, frame in zip(lines, got):
        for region, obj in zip(line["regions"], frame.objects):
            assert obj.mask.dtype == bool and obj.mask.shape == (h, w)
            assert np.array_equal(_mask(region), obj.mask)
            assert 0.005 < obj.mask.mean() < 0.995


def test_streams_early_and_disconnect_stops_work(base_url, video, deployment_handle):
    """The first frame of a 200-frame video arrives after ~1 frame of work; closing the connection stops the
    tracker (frames tracked stay far below 200, no stream left running)."""
    before = sum(s["frames_tracked"] for s in tracker_stats(deployment_handle).values())
    body = {"video": {"base64": _b64(video)}, "frames": [{"index": 0, "regions": [{"point": [0.5, 0.5]}]}]}
    r = requests.post(f"{base_url}/v1/generate", json=body, stream=True, timeout=300)
    first = json.loads(next(r.iter_lines()))
    assert first["index"] == 0 and first["regions"][0]["track_id"] == "1"
    r.close()
    deadline = time.monotonic() + 60
    while True:
        stats = tracker_stats(deployment_handle)
        if all(s["streams_active"] == 0 for s in stats.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert all(s["streams_active"] == 0 for s in stats.values()), stats
    done = sum(s["frames_tracked"] for s in stats.values()) - before
    assert 1 <= done < 60, done


def test_error_after_stream_began_ends_with_error_line(base_url, http):
    """Frame 5 of this clip cannot be decoded: frames 0-4 stream, then an {"error": ...} line ends the stream."""
    from sam2_serve.testing import corrupt_clip

    body = {"video": {"base64": _b64(corrupt_clip(8, bad=5))}, "frames": [{"index": 0, "regions": [
        {"point": [0.5, 0.5], "track_id": "1"}]}]}
    with http.post(f"{base_url}/v1/generate", json=body, stream=True, timeout=300) as r:
        lines = _lines(r)
    assert [line.get("index") for line in lines[:-1]] == [0, 1, 2, 3, 4]
    assert lines[-1]["error"]["code"] == "invalid_video", lines[-1]
    assert "frame 5" in lines[-1]["error"]["message"]
    assert_healthy(base_url)


def _truncated(video: bytes) -> bytes:
    return video[: len(video) // 2]


def _jpeg(truck_path) -> bytes:
    return truck_path.read_bytes()


ONE_CLICK = [{"index": 0, "regions": [{"point": [0.5, 0.5], "track_id": "1"}]}]


@pytest.mark.parametrize("case,body,status,needle", [
    ("not a video", {"video": b"this is not a video at all" * 20, "frames": ONE_CLICK}, 400, "not a video"),
    ("empty file", {"video": b"", "frames": ONE_CLICK}, 400, "empty"),
    ("truncated", {"video": "truncated", "frames": ONE_CLICK}, 400, "complete"),
    ("image as video", {"video": "jpeg", "frames": ONE_CLICK}, 400, "still image"),
    ("bad base64", {"video": "!!notbase64!!", "frames": ONE_CLICK}, 400, "base64"),
    ("frame past end", {"frames": [{"index": 500, "regions": [{"point": [0.5, 0.5]}]}]}, 400, "past the end"),
    ("list frame past end", {"list_dict_inputs": [{"points": [[1, 1]], "labels": [1], "obj_id": 0,
                                                   "frame_idx": 200}]}, 400, "past the end"),
    ("box out of range", {"frames": [{"index": 0, "regions": [{"box": [0.1, 0.1, 1.5, 0.5]}]}]}, 400, "outside"),
    ("point out of range", {"frames": [{"index": 0, "regions": [{"point": [-0.1, 0.5]}]}]}, 400, "outside"),
    ("pixel point out of range", {"denormalize_coord": False, "list_dict_inputs": [
        {"points": [[2000, 10]], "labels": [1], "obj_id": 0, "frame_idx": 0}]}, 400, "outside"),
    ("both forms", {"frames": ONE_CLICK, "list_dict_inputs": [{"points": [[1, 1]], "labels": [1], "obj_id": 0,
                                                                "frame_idx": 0}]}, 400, "not both"),
    ("no prompts", {}, 400, "no prompts"),
    ("empty frames", {"frames": []}, 400, "no prompts"),
    ("label not whole", {"list_dict_inputs": [{"points": [[1, 1]], "labels": [0.5], "obj_id": 0,
                                               "frame_idx": 0}]}, 400, "whole number"),
    ("label not 0/1", {"list_dict_inputs": [{"points": [[1, 1]], "labels": [2], "obj_id": 0,
                                             "frame_idx": 0}]}, 400, "labels"),
    ("points without labels", {"list_dict_inputs": [{"points": [[1, 1]], "obj_id": 0, "frame_idx": 0}]}, 400,
     "labels"),
    ("prompt before start", {"start_frame": 5, "frames": ONE_CLICK}, 400, "outside the frames"),
    ("start past end", {"start_frame": 200, "frames": ONE_CLICK}, 400, "start_frame"),
    ("max_frames zero", {"max_frames": 0, "frames": ONE_CLICK}, 400, "max_frames"),
    ("unknown field", {"frames": ONE_CLICK, "fps": 3}, 400, "fps"),
    ("region with two kinds", {"frames": [{"index": 0, "regions": [{"point": [0.5, 0.5], "box": [0, 0, 1, 1]}]}]},
     400, "exactly one"),
    ("mask wrong size", {"frames": [{"index": 0, "regions": [{"mask": {"png": encode_png(np.ones((10, 10), bool))},
                                                               "track_id": "m"}]}]}, 400, "960x540"),
    ("mask not png", {"frames": [{"index": 0, "regions": [{"mask": {"png": "aGVsbG8="}}]}]}, 400, "mask"),
    ("too many objects", {"frames": [{"index": 0, "regions": [{"point": [0.01 * i, 0.5], "track_id": str(i)}
                                                              for i in range(40)]}]}, 422, "objects"),
])
def test_bad_inputs(base_url, http, video, truck_path, case, body, status, needle):
    body = dict(body)
    v = body.pop("video", video)
    if v == "truncated":
        v = _truncated(video)
    elif v == "jpeg":
        v = _jpeg(truck_path)
    body["video"] = {"base64": v if isinstance(v, str) else _b64(v)}
    r = http.post(f"{base_url}/v1/generate", json=body, timeout=60)
    assert r.status_code == status, (case, r.status_code, r.text[:300])
    err = r.json()["error"]
    assert needle.lower() in err["message"].lower(), (case, err)


def test_bad_transport(base_url, http, video):
    r = http.post(f"{base_url}/v1/generate", data=b"video", headers={"content-type": "text/plain"}, timeout=30)
    assert r.status_code == 415, r.text
    r = http.post(f"{base_url}/v1/generate", data=b"{not json", headers={"content-type": "application/json"},
                  timeout=30)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = http.post(f"{base_url}/v1/generate", files={"frames": (None, json.dumps(ONE_CLICK))}, timeout=30)
    assert r.status_code == 400 and "'video' file" in r.json()["error"]["message"]
    r = http.post(f"{base_url}/v1/generate", files={"video": ("empty.mp4", b"")},
                  data={"frames": json.dumps(ONE_CLICK)}, timeout=30)
    assert r.status_code == 400 and "empty" in r.json()["error"]["message"]
    assert_healthy(base_url)


def test_handle_bad_input_raises_service_error(handle, video):
    from sam2_serve.common.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="past the end"):
        for _ in handle.options(stream=True).generate.remote(
                video, list_dict_inputs=[{"points": [[1, 1]], "labels": [1], "obj_id": 0, "frame_idx": 999}]):
            pass
