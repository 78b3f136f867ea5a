"""WS /v1/live on the shared application: frames pushed one by one with prompts give /v1/generate's masks; objects
are added and removed mid-stream; every bad message is answered with an error and the stream goes on; frames sent
faster than they are tracked are skipped (latest wins) and reported; the tracker's state stays flat and is released
when the connection ends. Real frames of bedroom.mp4 (PyAV), PNG-encoded, over a real WebSocket."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
import requests
from PIL import Image
from websockets.sync.client import connect

from sam2_serve import Model
from sam2_serve.common.masks import decode_png, decode_rle
from sam2_serve.testing import assert_same_mask, decode_frames
from tests.integration.conftest import assert_healthy

pytestmark = pytest.mark.integration

N = 6
TIMEOUT_S = 300  # model work on a shared 2-core CPU: generous, never a pass/fail criterion


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class Live:
    """A test client: a raw WebSocket to /v1/live, JSON answers read with a timeout."""

    def __init__(self, base_url: str, query: str = "", headers=None):
        url = base_url.replace("http://", "ws://") + "/v1/live" + query
        self.ws = connect(url, additional_headers=headers, max_size=None, open_timeout=60, proxy=None,
                          compression=None)  # as the project's client: frames are compressed images already

    def send(self, message) -> None:
        self.ws.send(message if isinstance(message, (bytes, str)) else json.dumps(message))

    def frame(self, rgb: np.ndarray) -> None:
        self.send(png(rgb))

    def recv(self) -> dict:
        return json.loads(self.ws.recv(timeout=TIMEOUT_S))

    def ready(self) -> dict:
        answer = self.recv()
        assert answer["type"] == "ready", answer
        return answer

    def ask(self, message) -> dict:
        self.send(message)
        return self.recv()

    def close(self) -> None:
        self.ws.close()


def mask(region: dict) -> np.ndarray:
    m = region["mask"]
    return decode_png(m["png"]) if "png" in m else decode_rle(m["rle"])


@pytest.fixture(scope="module")
def frames(bedroom_path) -> list[np.ndarray]:
    return decode_frames(bedroom_path, N)


@pytest.fixture(scope="module")
def small(frames) -> list[np.ndarray]:
    return [np.asarray(Image.fromarray(f).resize((320, 180))) for f in frames]


@pytest.fixture
def live(base_url, deployment_handle):
    client = Live(base_url)
    stream_id = client.ready()["stream_id"]
    yield client
    client.close()
    wait_stream_released(deployment_handle, stream_id)  # a test after it that counts streams sees it gone


def tracker_live_stats(deployment_handle, stream_id: str) -> dict:
    h = deployment_handle("VideoTracker").options(session_id=stream_id)
    return h.live_stats.remote(stream_id).result(timeout_s=60)


def live_streams(deployment_handle) -> int:
    from tests.integration.test_generate import tracker_stats

    return sum(s["live_streams"] for s in tracker_stats(deployment_handle).values())


def wait_released(deployment_handle, count: int) -> None:
    """Until the trackers hold ``count`` live streams (a closed connection's stream is released just after)."""
    deadline = time.monotonic() + 60
    while live_streams(deployment_handle) != count and time.monotonic() < deadline:
        time.sleep(0.5)
    assert live_streams(deployment_handle) == count


A = {"point": [0.5, 0.55], "track_id": "a"}
B = {"box": [0.3, 0.28, 0.73, 0.83], "track_id": "b"}


def test_equals_generate_with_objects_added_and_removed(base_url, frames, bedroom_path):
    """Object a prompted on frame 0, b on frame 2, a removed after frame 4: every frame's masks are /v1/generate's
    on the same video with the same prompts (IoU >= 0.99, masks neither empty nor full)."""
    body = {"video": {"base64": base64.b64encode(bedroom_path.read_bytes()).decode()}, "mask_format": "rle",
            "frames": [{"index": 0, "regions": [A]}, {"index": 2, "regions": [B]}]}
    reference = []
    with requests.post(f"{base_url}/v1/generate", json=body, stream=True, timeout=TIMEOUT_S) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines():  # the whole 200-frame file: both sides see sam2's full pointer window
            reference.append({g["track_id"]: mask(g) for g in json.loads(line)["regions"]})
            if len(reference) == N:
                break

    live = Live(base_url, "?mask_format=rle")
    ready = live.ready()
    assert ready["mask_format"] == "rle" and "latest frame wins" in ready["policy"]
    got = []
    for i, rgb in enumerate(frames):
        live.frame(rgb)
        answer = live.recv()
        assert (answer["type"], answer["index"], answer["skipped"]) == ("frame", i, []), answer
        if i in (0, 2):
            answer = live.ask({"type": "prompt", "id": f"p{i}", "index": i, "regions": [A if i == 0 else B]})
            assert (answer["type"], answer["index"], answer["id"]) == ("prompt", i, f"p{i}"), answer
        got.append({g["track_id"]: mask(g) for g in answer["regions"]})
        if i == 4:
            answer = live.ask({"type": "remove", "id": 7, "track_id": "a"})
            assert answer == {"type": "removed", "id": 7, "track_id": "a", "track_ids": ["b"]}, answer
    closed = live.ask({"type": "close"})
    assert closed == {"type": "closed", "id": None, "frames_received": N, "frames_tracked": N, "frames_skipped": 0}
    live.close()
    for i in range(N):
        expected = {k: v for k, v in reference[i].items() if not (k == "a" and i > 4)}
        assert list(got[i]) == list(expected), (i, list(got[i]), list(expected))
        for track_id, m in got[i].items():
            assert_same_mask(m, expected[track_id], f"frame {i} object {track_id}")


def test_frames_resized_by_the_client_give_the_masks_of_whole_frames(base_url, frames):
    """``model.live`` sends bedroom's 960x540 frames resized to the tracker's 256x256 input after a ``frame_size``
    message (89 kB instead of 400 kB a frame): every answer's masks, boxes and scores are those of the same frames
    sent whole over a raw WebSocket (which the service resizes itself), at 960x540."""
    whole = Live(base_url, "?mask_format=rle")
    assert whole.ready()["input_size"] == 256
    expected = []
    for i, rgb in enumerate(frames[:4]):
        answer = whole.ask(png(rgb))
        if i == 0:
            answer = whole.ask({"type": "prompt", "regions": [A]})
        expected.append(answer)
    whole.close()

    with Model(base_url, timeout=TIMEOUT_S) as model, model.live(frames[:4], prompts={0: [A]}) as live:
        got = [f for f in live if f.kind == "prompt" or f.index > 0]
        assert (live.input_size, live.frame_size) == (256, (960, 540))
    assert [(f.kind, f.index) for f in got] == [("prompt", 0), ("frame", 1), ("frame", 2), ("frame", 3)]
    for frame, want in zip(got, expected):
        (region,), (other,) = frame.regions, want["regions"]
        assert region.mask.shape == (540, 960) and 0.005 < region.mask.mean() < 0.995
        assert np.array_equal(region.mask, mask(other)), f"frame {frame.index}"
        assert (region.track_id, region.box, region.score) == (other["track_id"], other["box"], other["score"])


def test_bad_messages_are_answered_and_the_stream_goes_on(live, small, base_url):
    big = png(np.zeros((2000, 5000, 3), np.uint8))  # 10 M pixels, few bytes
    live.frame(small[0])  # index 0
    assert live.recv()["type"] == "frame"
    cases = [
        ("not json", "{nope", "invalid_request", "JSON"),
        ("not an object", "[1, 2]", "invalid_request", ""),
        ("unknown type", {"type": "dance"}, "invalid_request", "type"),
        ("no regions", {"type": "prompt", "regions": []}, "invalid_request", "regions"),
        ("point outside", {"type": "prompt", "regions": [{"point": [1.5, 0.5]}]}, "invalid_request", "outside"),
        ("two kinds", {"type": "prompt", "regions": [{"point": [0.5, 0.5], "box": [0, 0, 1, 1]}]},
         "invalid_request", "exactly one"),
        ("unknown field", {"type": "prompt", "regions": [{"point": [0.5, 0.5]}], "frame": 3},
         "invalid_request", "frame"),
        ("stale index", {"type": "prompt", "index": 5, "regions": [{"point": [0.5, 0.5]}]},
         "invalid_request", "latest frame is 0"),
        ("too many points", {"type": "prompt", "regions": [{"point": [0.01 * i, 0.5], "track_id": "p"}
                                                           for i in range(20)]}, "limit_exceeded", "points"),
        ("too many objects", {"type": "prompt", "regions": [{"point": [0.01 * i, 0.5], "track_id": str(i)}
                                                            for i in range(40)]}, "limit_exceeded", "objects"),
        ("remove unknown", {"type": "remove", "track_id": "ghost"}, "not_found", "ghost"),
        ("not an image", b"\x00\x01 not an image", "invalid_image", "not an image"),
        ("too many pixels", big, "payload_too_large", "pixels"),
        ("another size", png(small[1][:90]), "invalid_request", "320x180"),
        ("frame_size of nothing", {"type": "frame_size", "width": 0, "height": 180}, "invalid_request", "width"),
        ("frame_size too large", {"type": "frame_size", "width": 5000, "height": 2000}, "payload_too_large",
         "10000000 pixels"),
    ]
    index = 1
    for case, message, code, needle in cases:
        answer = live.ask(message)
        assert answer["type"] == "error", (case, answer)
        assert answer["error"]["code"] == code and needle.lower() in answer["error"]["message"].lower(), (case, answer)
        if isinstance(message, bytes):
            assert answer["index"] == index, (case, answer)
            index += 1
    # still usable: a frame, a prompt on it, the next frame tracks the object
    assert live.ask(png(small[1]))["index"] == index
    answer = live.ask({"type": "prompt", "regions": [{"point": [0.5, 0.55]}], "id": "ok"})
    assert answer["type"] == "prompt" and [g["track_id"] for g in answer["regions"]] == ["1"], answer
    answer = live.ask(png(small[2]))
    assert answer["type"] == "frame" and 0.005 < mask(answer["regions"][0]).mean() < 0.995
    assert_healthy(base_url)


def test_prompt_before_any_frame_and_bad_query(base_url):
    live = Live(base_url)
    live.ready()
    answer = live.ask({"type": "prompt", "id": 1, "regions": [{"point": [0.5, 0.5]}]})
    assert answer["type"] == "error" and "send a frame first" in answer["error"]["message"] and answer["id"] == 1
    live.close()
    bad = Live(base_url, "?mask_format=jpeg")
    answer = bad.recv()
    assert answer["type"] == "error" and "mask_format" in answer["error"]["message"], answer
    with pytest.raises(Exception):
        bad.recv()  # closed by the server
    assert bad.ws.close_code == 1008


def test_latest_frame_wins_and_skips_are_reported(live, small):
    """After a prompt (frames then cost model work), 8 frames sent at once: the tracker takes the first, newer
    frames replace the waiting one, and the answers list every replaced frame exactly once."""
    live.frame(small[0])
    live.recv()
    live.ask({"type": "prompt", "regions": [{"point": [0.5, 0.55]}]})
    for i in range(8):
        live.frame(small[i % N])
    answered, skipped, last = [], [], 0
    while len(answered) + len(skipped) < 8:
        answer = live.recv()
        assert answer["type"] == "frame", answer
        assert all(last < s < answer["index"] for s in answer["skipped"]), (last, answer["skipped"], answer["index"])
        answered.append(answer["index"])
        skipped += answer["skipped"]
        last = answer["index"]
    assert sorted(answered + skipped) == list(range(1, 9)) and skipped, (answered, skipped)
    assert answered[-1] == 8  # the newest frame is always tracked
    closed = live.ask({"type": "close"})
    assert (closed["frames_received"], closed["frames_skipped"]) == (9, len(skipped)), closed


def wait_stream_released(deployment_handle, stream_id: str) -> None:
    """Until the tracker answers that ``stream_id`` is gone (a closed connection's stream is released just after).
    By the stream's id, not by counting streams: one an earlier test closed may still be on its way out."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            tracker_live_stats(deployment_handle, stream_id)
        except Exception as exc:  # SessionGone, through Serve
            assert "live stream" in str(exc) and "open a new connection" in str(exc), exc
            return
        time.sleep(0.5)
    raise AssertionError(f"live stream {stream_id} still held 60 s after its connection closed")


def test_state_stays_flat_and_is_released(base_url, small, deployment_handle):
    live = Live(base_url)
    stream_id = live.ready()["stream_id"]
    stats = []
    for i in range(19):  # > max_obj_ptrs_in_encoder (16) + 2
        live.frame(small[i % N])
        live.recv()
        if i == 0:
            live.ask({"type": "prompt", "regions": [{"point": [0.5, 0.55]}]})
        if i >= 17:
            stats.append(tracker_live_stats(deployment_handle, stream_id))
    assert stats[0]["objects"] == stats[1]["objects"] and stats[0]["objects"]["1"]["non_cond_memories"] == 7
    assert stats[0]["state_bytes"] == stats[1]["state_bytes"] and stats[1]["features_cached"] == 1
    assert live_streams(deployment_handle) >= 1
    live.close()  # without a close message: the connection just ends
    wait_stream_released(deployment_handle, stream_id)
