"""Interactive sessions over HTTP with two tracker replicas: the full flow, routing by session id, expiry,
a killed replica (clear 410), the per-replica cap, and bad session inputs."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest

from sam2_serve.common.masks import decode_png
from sam2_serve.common.videos import encode_video
from tests.integration.conftest import APP_NAME, assert_healthy
from sam2_serve.testing import decode_frames

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clip(bedroom_path) -> bytes:
    """8 bedroom frames at 320x180 as H.264/MP4 (small upload, quick probe)."""
    from PIL import Image

    frames = [np.asarray(Image.fromarray(f).resize((320, 180))) for f in decode_frames(bedroom_path, 8)]
    buf = io.BytesIO()
    encode_video(frames, buf)
    return buf.getvalue()


def _create(http, base_url, clip, **extra) -> dict:
    r = http.post(f"{base_url}/v1/sessions", json={"video": {"base64": base64.b64encode(clip).decode()}, **extra},
                  timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _owner(session_id: str) -> str:
    return session_id.rpartition(".")[0]


def _delete(http, base_url, sid):
    http.delete(f"{base_url}/v1/sessions/{sid}", timeout=30)


def test_session_flow_on_both_replicas(base_url, http, clip):
    """Sessions on each of the two replicas: every call of a session reaches its replica (a wrong one answers 410)."""
    sessions = {}
    try:
        for _ in range(12):
            s = _create(http, base_url, clip)
            if _owner(s["session_id"]) in sessions:
                _delete(http, base_url, s["session_id"])  # keep one per replica, far below the cap
                continue
            sessions[_owner(s["session_id"])] = s
            if len(sessions) == 2:
                break
        assert len(sessions) == 2, "sessions never landed on two replicas"
        for s in sessions.values():
            sid = s["session_id"]
            assert (s["width"], s["height"], s["num_frames"]) == (320, 180, 8)
            base = f"{base_url}/v1/sessions/{sid}"
            r = http.post(f"{base}/prompts", json={"index": 0, "regions": [
                {"point": [0.5, 0.6], "track_id": "a"}, {"box": [0.1, 0.1, 0.4, 0.5], "track_id": "b"}]}, timeout=60)
            assert r.status_code == 200, r.text
            frame = r.json()
            assert frame["index"] == 0 and [g["track_id"] for g in frame["regions"]] == ["a", "b"]
            assert 0.005 < decode_png(frame["regions"][0]["mask"]["png"]).mean() < 0.995
            with http.post(f"{base}/propagate", json={"max_frames": 4}, stream=True, timeout=120) as r:
                assert r.status_code == 200, r.text
                lines = [json.loads(x) for x in r.iter_lines() if x]
            assert [x["index"] for x in lines] == [0, 1, 2, 3]
            # correction click mid-video, then backward from there
            r = http.post(f"{base}/prompts", json={"index": 3, "regions": [
                {"point": [0.3, 0.3], "concepts": [{"name": "0"}], "track_id": "a"}]}, timeout=60)
            assert r.status_code == 200, r.text
            with http.post(f"{base}/propagate", json={"start_frame": 3, "max_frames": 3, "reverse": True},
                           stream=True, timeout=120) as r:
                lines = [json.loads(x) for x in r.iter_lines() if x]
            assert [x["index"] for x in lines] == [3, 2, 1]
            r = http.delete(f"{base}/objects/b", timeout=30)
            assert r.status_code == 200 and r.json()["track_ids"] == ["a"], r.text
            r = http.delete(f"{base}/objects/b", timeout=30)
            assert r.status_code == 404 and "'b'" in r.json()["error"]["message"]
            assert http.get(base, timeout=30).json()["track_ids"] == ["a"]
    finally:
        for sid in [s["session_id"] for s in sessions.values()]:
            _delete(http, base_url, sid)
    for s in sessions.values():
        r = http.get(f"{base_url}/v1/sessions/{s['session_id']}", timeout=30)
        assert r.status_code == 410 and "deleted" in r.json()["error"]["message"]


def test_session_expires(base_url, http, clip):
    sid = _create(http, base_url, clip, ttl_s=1)["session_id"]
    time.sleep(1.5)
    r = http.post(f"{base_url}/v1/sessions/{sid}/prompts", json={"index": 0, "regions": [{"point": [0.5, 0.5]}]},
                  timeout=30)
    assert r.status_code == 410, r.text
    assert "expired" in r.json()["error"]["message"]


def test_unknown_session_and_bad_session_inputs(base_url, http, clip):
    r = http.get(f"{base_url}/v1/sessions/nope", timeout=30)
    assert r.status_code == 404 and "POST /v1/sessions" in r.json()["error"]["message"]
    sid = _create(http, base_url, clip)["session_id"]
    base = f"{base_url}/v1/sessions/{sid}"
    try:
        r = http.post(f"{base}/propagate", json={}, timeout=30)
        assert r.status_code == 400 and "add prompts" in r.json()["error"]["message"]
        r = http.post(f"{base}/prompts", json={"index": 8, "regions": [{"point": [0.5, 0.5]}]}, timeout=30)
        assert r.status_code == 400 and "past the end" in r.json()["error"]["message"]
        r = http.post(f"{base}/prompts", json={"index": 0, "regions": [{"box": [0.5, 0.5, 0.2, 0.9]}]}, timeout=30)
        assert r.status_code == 400 and "xmax" in r.json()["error"]["message"]
        r = http.post(f"{base}/prompts", json={"index": 0, "regions": []}, timeout=30)
        assert r.status_code == 400
        r = http.delete(f"{base}/objects/ghost", timeout=30)
        assert r.status_code == 404 and "ghost" in r.json()["error"]["message"]
        r = http.post(f"{base_url}/v1/sessions", json={"video": {"base64": base64.b64encode(b"junk" * 50).decode()}},
                      timeout=30)
        assert r.status_code == 400 and "not a video" in r.json()["error"]["message"]
        r = http.post(f"{base}/prompts", json={"index": 0, "regions": [{"point": [0.5, 0.5]}]}, timeout=60)
        assert r.status_code == 200  # the session is fine after all that
    finally:
        _delete(http, base_url, sid)


def test_session_cap_per_replica(base_url, http, clip):
    """3 sessions per replica x 2 replicas: a 7th is refused with a message saying what to do."""
    made, refused = [], None
    try:
        for _ in range(7):
            r = http.post(f"{base_url}/v1/sessions", json={"video": {"base64": base64.b64encode(clip).decode()}},
                          timeout=60)
            if r.status_code != 200:
                refused = r
                break
            made.append(r.json()["session_id"])
        assert refused is not None and refused.status_code == 422, [made, refused and refused.text]
        assert "DELETE" in refused.json()["error"]["message"]
        assert len(made) >= 3
    finally:
        for sid in made:
            _delete(http, base_url, sid)


def test_killed_replica_gives_410(base_url, http, clip, ray_cluster):
    import ray
    from ray import serve

    sid = _create(http, base_url, clip)["session_id"]
    actor = ray.get_actor(f"SERVE_REPLICA::{APP_NAME}#VideoTracker#{_owner(sid)}", namespace="serve")
    ray.kill(actor, no_restart=True)
    r = http.get(f"{base_url}/v1/sessions/{sid}", timeout=60)
    assert r.status_code == 410, r.text
    assert "replica" in r.json()["error"]["message"] and "create a new session" in r.json()["error"]["message"]
    # Serve replaces the replica; wait for two live ones (the killed one not among them) so later tests see the
    # full app.
    h = serve.get_deployment_handle("VideoTracker", app_name=APP_NAME)
    deadline, live = time.monotonic() + 180, set()
    while time.monotonic() < deadline:
        status = serve.status().applications[APP_NAME].deployments["VideoTracker"]
        if status.status == "HEALTHY":
            live = {h.stats.remote().result(timeout_s=60)["replica"] for _ in range(8)}
            if len(live) == 2 and _owner(sid) not in live:
                break
        time.sleep(1)
    assert len(live) == 2 and _owner(sid) not in live, live
    r = http.get(f"{base_url}/v1/sessions/{sid}", timeout=60)
    assert r.status_code == 410
    assert_healthy(base_url)
