"""Faults, overload, limits and authentication on a hardened application of this module's own.

``sam2-faults`` (route prefix ``/faults``) runs in the session's Serve instance next to the shared app, which it
leaves untouched: this module kills its replicas. It is configured as production would be: an API key (from a
file, ``required``), small non-default limits and short queues, so each setting is shown to be configurable and
answered with its status and message over real HTTP. It is deleted when the module ends.
"""

from __future__ import annotations

import base64
import io
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

pytestmark = pytest.mark.integration

APP, PREFIX = "sam2-faults", "/faults"
KEY = secrets.token_hex(24)
LIMITS = {"max_body_bytes": 4 << 20, "max_image_bytes": 1 << 20, "max_image_pixels": 2_000_000, "max_points": 8,
          "max_objects": 12, "max_segment_points": 2048, "max_video_bytes": 2 << 20, "max_video_frames": 30,
          "max_video_seconds": 5, "max_frame_pixels": 400_000, "max_video_objects": 3, "max_prompted_frames": 4}
RECOVERY_BOUND_S = 240  # generous: replicas load a model on a shared 2-core machine; the figure is printed


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def replica_actors(deployment: str) -> list[str]:
    import ray

    prefix = f"SERVE_REPLICA::{APP}#{deployment}#"
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]


def kill_replica(deployment: str) -> str:
    import ray

    (name,) = replica_actors(deployment)  # one replica per deployment in this app
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    return name


@pytest.fixture(scope="module")
def faults(serve_app, tiny_checkpoint, tmp_path_factory):
    """Base URL of the hardened app, deployed for this module and deleted after it."""
    from ray import serve

    from sam2_serve.deployments.app import build_app

    key_file = tmp_path_factory.mktemp("secret") / "api-key"
    key_file.write_text(f"# sam2-faults test key\n{KEY}\n")
    small = {"num_cpus": 0.05, "num_replicas": 1}
    args = {"model": "sam2.1-hiera-tiny", "checkpoint": str(tiny_checkpoint), "device": "cpu",
            "cache_bytes": 64 << 20, "limits": LIMITS, "retry_after_s": 2, "request_timeout_s": 120,
            "auth": {"api_key_env": None, "api_key_file": str(key_file), "required": True},
            "encoder": {**small, "cpu_max_batch_size": 2},
            # Short queues so that a burst overflows them: at most 2 + 2 decodes wait per caller.
            "decoder": {**small, "max_ongoing_requests": 2, "max_queued_requests": 2},
            "ingress": {**small, "max_ongoing_requests": 6, "max_queued_requests": 2},
            "tracker": {**small, "hydra_overrides": ["++model.image_size=256"], "max_sessions": 2}}
    serve.run(build_app(args), name=APP, route_prefix=PREFIX)
    yield serve_app[0] + PREFIX
    serve.delete(APP)


@pytest.fixture
def api(faults) -> requests.Session:
    with requests.Session() as s:
        s.headers["Authorization"] = f"Bearer {KEY}"
        yield s


@pytest.fixture(scope="module")
def groceries_b64(groceries_path) -> str:
    return b64(groceries_path.read_bytes())


@pytest.fixture(scope="module")
def image_id(faults, groceries_b64) -> str:
    r = requests.post(f"{faults}/v1/embed", json={"image": {"base64": groceries_b64}},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()["image_id"]


def click_body(image: dict, n_boxes: int = 6) -> dict:
    """Several boxes (one object each), three masks per object: a decode that takes a little while."""
    boxes = [[0.05 * i, 0.05 * i, 0.5 + 0.04 * i, 0.5 + 0.04 * i] for i in range(n_boxes)]
    return {"image": image, "regions": [{"box": b} for b in boxes], "multimask_output": True, "mask_format": "rle"}


def masks_of(body: dict) -> list[np.ndarray]:
    from pycocotools import mask as mask_utils

    return [mask_utils.decode({"size": r["mask"]["rle"]["size"], "counts": r["mask"]["rle"]["counts"].encode()})
            .astype(bool) for r in body["regions"]]


def assert_same_masks(got: dict, want: dict) -> None:
    g, w = masks_of(got), masks_of(want)
    assert len(g) == len(w) > 0
    for a, b in zip(g, w):
        assert 0 < b.sum() < b.size
        assert (a & b).sum() / max((a | b).sum(), 1) >= 0.99
    np.testing.assert_allclose([r["score"] for r in got["regions"]], [r["score"] for r in want["regions"]],
                               atol=1e-4)


def assert_retryable(r: requests.Response) -> None:
    """A failure a client can act on: 503 with Retry-After and a JSON code that says what happened."""
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1
    if r.headers.get("content-type", "").startswith("application/json"):
        assert r.json()["error"]["code"] in ("overloaded", "replica_unavailable"), r.text
        assert "retry" in r.json()["error"]["message"].lower()
    else:  # the HTTP proxy's own answer when the ingress queue is full
        assert "backpressure" in r.text


def wait_until_ok(send, what: str) -> tuple[float, requests.Response]:
    """Send until a 200; returns the seconds it took and the 200. Anything but a 200 or a retryable 503 fails."""
    start = time.monotonic()
    while True:
        r = send()
        if r.status_code == 200:
            took = time.monotonic() - start
            print(f"\n{what}: healthy again after {took:.1f} s")
            return took, r
        assert r.status_code in (404, 503), r.text  # 404: an image_id lost with its encoder (says so)
        assert time.monotonic() - start < RECOVERY_BOUND_S, f"{what}: not healthy after {RECOVERY_BOUND_S} s"
        time.sleep(1)


# ---- authentication over HTTP ---------------------------------------------------------------------------------------


def test_api_key_missing_wrong_right(faults, http, api, groceries_b64):
    body = {"image": {"base64": groceries_b64}, "regions": [{"point": [0.5, 0.5]}], "mask_format": "jpeg"}
    wrong = "Bearer " + secrets.token_hex(24)
    for path, method in (("/v1/predict", "post"), ("/v1/segment_anything", "post"), ("/v1/embed", "post"),
                         ("/v1/generate", "post"), ("/v1/sessions", "post"), ("/v1/models", "get"),
                         ("/v1/sessions/abc", "get")):
        for headers in ({}, {"Authorization": wrong}, {"Authorization": f"Token {KEY}"}):
            r = http.request(method, faults + path, json=body if method == "post" else None, headers=headers,
                             timeout=60)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.json()["error"]["code"] == "unauthorized" and "Bearer" in r.headers["WWW-Authenticate"]
            assert KEY not in r.text
    r = api.post(f"{faults}/v1/predict", json=body, timeout=60)  # the right key: on to validation (bad mask_format)
    assert r.status_code == 400 and "mask_format" in r.text
    assert api.get(f"{faults}/v1/models", timeout=60).status_code == 200
    assert http.get(f"{faults}/healthz", timeout=60).status_code == 200  # health stays open


def test_browser_page_open_with_auth_on(faults, http, api):
    """The page and its files (no data in them) load without a key, under a route prefix too; the API they call
    keeps asking for one (the page sends the key its user types: tests/integration/test_browser.py)."""
    r = http.get(f"{faults}/", timeout=60)
    assert r.status_code == 200 and 'src="static/app.js"' in r.text, r.text[:300]
    r = http.get(faults, timeout=60, allow_redirects=False)  # relative links need the prefix's trailing slash
    assert r.status_code in (307, 308) and r.headers["location"].endswith(f"{PREFIX}/"), (r.status_code, r.headers)
    for path in ("static/app.js", "static/style.css"):
        assert http.get(f"{faults}/{path}", timeout=60).status_code == 200, path
    r = http.post(f"{faults}/v1/embed", json={"image": {"image_id": "x" * 16}}, timeout=60)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
    assert api.post(f"{faults}/v1/embed", json={"image": {"image_id": "x" * 16}}, timeout=60).status_code == 404


# ---- limits: configured to non-defaults here, each answered with its status and a message --------------------------


def _clip(n: int, w: int, h: int, fps: int) -> bytes:
    from sam2_serve.common.videos import encode_video

    rng = np.random.default_rng(n)
    frames = [np.full((h, w, 3), rng.integers(0, 255, 3), np.uint8) for _ in range(n)]
    buf = io.BytesIO()
    encode_video(frames, buf, fps=fps)
    return buf.getvalue()


@pytest.fixture(scope="module")
def limit_cases(groceries_path, groceries_b64, bedroom_path):
    img = {"base64": groceries_b64}
    big = np.asarray(Image.open(groceries_path).convert("RGB").resize((1800, 1200)))
    noise = io.BytesIO()  # incompressible: ~1.9 MB as PNG, under the pixel and body limits
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (800, 800, 3), np.uint8)).save(noise, format="PNG")

    def video(data: bytes, **extra) -> dict:
        return {"video": {"base64": b64(data)}, "frames": [{"index": 0, "regions": [{"point": [0.5, 0.5]}]}], **extra}

    return {
        "body bytes": ("/v1/predict", {"image": {"base64": "A" * (5 << 20)}, "regions": [{"point": [0.5, 0.5]}]},
                       413, f"limit is {4 << 20} bytes"),
        "image bytes": ("/v1/predict", {"image": {"base64": b64(noise.getvalue())}, "regions": [{"point": [.5, .5]}]},
                        413, f"limit is {1 << 20} bytes"),
        "image pixels": ("/v1/predict", {"image": {"base64": b64(jpeg(big, 30))}, "regions": [{"point": [.5, .5]}]},
                         413, "limit is 2000000 pixels"),
        "points": ("/v1/predict", {"image": img, "regions": [{"point": [0.5, 0.5]}] * 9}, 422, "limit is 8"),
        "objects": ("/v1/predict", {"image": img, "regions": [{"box": [0, 0, 0.5, 0.5]}] * 13}, 422, "limit is 12"),
        "segment points": ("/v1/segment_anything", {"image": img, "points_per_side": 46}, 422, "limit is 2048"),
        "video bytes": ("/v1/generate", video(bedroom_path.read_bytes()), 413, f"limit is {2 << 20} bytes"),
        "video frames": ("/v1/generate", video(_clip(40, 64, 64, 30)), 422, "limit is 30"),
        "video seconds": ("/v1/generate", video(_clip(8, 64, 64, 1)), 413, "limit is 5 s"),
        "frame pixels": ("/v1/generate", video(_clip(3, 800, 600, 30)), 413, "limit is 400000 pixels"),
        "video objects": ("/v1/generate", {**video(_clip(3, 64, 64, 30)), "frames": [
            {"index": 0, "regions": [{"point": [0.1 * i, 0.5]} for i in range(1, 5)]}]}, 422, "limit is 3"),
        "prompted frames": ("/v1/generate", {**video(_clip(6, 64, 64, 30)), "frames": [
            {"index": i, "regions": [{"point": [0.5, 0.5], "track_id": "a"}]} for i in range(5)]}, 422, "limit is 4"),
    }


LIMIT_NAMES = ["body bytes", "image bytes", "image pixels", "points", "objects", "segment points", "video bytes",
               "video frames", "video seconds", "frame pixels", "video objects", "prompted frames"]


def test_each_limit_is_configurable_and_answered(faults, api, limit_cases):
    assert sorted(LIMIT_NAMES) == sorted(limit_cases)
    failures = []
    for name in LIMIT_NAMES:
        path, body, status, needle = limit_cases[name]
        r = api.post(faults + path, json=body, timeout=120)
        message = r.json().get("error", {}).get("message", "") if r.headers.get("content-type", "").startswith(
            "application/json") else r.text
        if r.status_code != status or needle not in message:
            failures.append(f"{name}: {r.status_code} {r.text[:300]}")
    assert not failures, "\n".join(failures)
    r = api.post(f"{faults}/v1/sessions/none/prompts", json={"index": 0, "regions": [{"point": [0, 0]}]}, timeout=60)
    assert r.status_code == 404, r.text


# ---- overload: a burst past the queues gets fast 503s with Retry-After, and nothing else fails --------------------


def test_burst_past_the_queues_gets_503_with_retry_after(faults, api, image_id):
    n = 24
    barrier = threading.Barrier(n)
    body = click_body({"image_id": image_id})

    def one(_):
        with requests.Session() as s:
            s.headers["Authorization"] = f"Bearer {KEY}"
            barrier.wait()
            t0 = time.monotonic()
            r = s.post(f"{faults}/v1/predict", json=body, timeout=300)
            return r, time.monotonic() - t0

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    statuses = [r.status_code for r, _ in results]
    rejected = [(r, t) for r, t in results if r.status_code == 503]
    print(f"\nburst of {n}: {statuses.count(200)} x 200, {len(rejected)} x 503; 503 answered in "
          f"{max(t for _, t in rejected) if rejected else 0:.2f} s at most, 200s in "
          f"{max((t for r, t in results if r.status_code == 200), default=0):.2f} s at most")
    assert set(statuses) <= {200, 503}, [r.text[:200] for r, _ in results if r.status_code not in (200, 503)]
    assert rejected and statuses.count(200) >= 1
    for r, _ in rejected:
        assert_retryable(r)
    kinds = {"json" if r.headers["content-type"].startswith("application/json") else "proxy" for r, _ in rejected}
    print(f"rejected by: {sorted(kinds)}")
    wait_until_ok(lambda: api.post(f"{faults}/v1/predict", json=body, timeout=120), "after the burst")


# ---- replica faults ------------------------------------------------------------------------------------------------


def _in_flight(n: int, send, kill, delay_s: float):
    """Start ``n`` requests together, run ``kill`` after ``delay_s``, return their responses."""
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(send, i) for i in range(n)]
        time.sleep(delay_s)
        killed = kill()
        return killed, [f.result() for f in futures]


def test_decoder_killed_while_requests_in_flight(faults, api, image_id):
    body = click_body({"image_id": image_id})
    reference = api.post(f"{faults}/v1/predict", json=body, timeout=120)
    assert reference.status_code == 200, reference.text
    (before,) = replica_actors("MaskDecoder")

    def send(_):
        with requests.Session() as s:
            s.headers["Authorization"] = f"Bearer {KEY}"
            return s.post(f"{faults}/v1/predict", json=body, timeout=300)

    killed, responses = _in_flight(4, send, lambda: kill_replica("MaskDecoder"), 0.3)
    print(f"\nkilled {killed}: statuses {[r.status_code for r in responses]}")
    for r in responses:
        if r.status_code == 200:
            assert_same_masks(r.json(), reference.json())
        else:
            assert_retryable(r)
    took, _ = wait_until_ok(lambda: api.post(f"{faults}/v1/predict", json=body, timeout=120), "decoder replaced")
    assert took < RECOVERY_BOUND_S
    assert replica_actors("MaskDecoder") != [before]
    r = api.post(f"{faults}/v1/predict", json=body, timeout=120)
    assert r.status_code == 200
    assert_same_masks(r.json(), reference.json())


def test_encoder_killed_while_requests_in_flight(faults, api, groceries_rgb, image_id):
    reference = api.post(f"{faults}/v1/predict", json=click_body({"image_id": image_id}, 2), timeout=120)
    assert reference.status_code == 200, reference.text
    # Distinct images (a pixel differs), so each request needs its own encoder pass.
    images = []
    for i in range(2):
        rgb = groceries_rgb.copy()
        rgb[0, i] = 255 - rgb[0, i]
        images.append(b64(jpeg(rgb, 100)))

    def send(i):
        with requests.Session() as s:
            s.headers["Authorization"] = f"Bearer {KEY}"
            return s.post(f"{faults}/v1/predict", json=click_body({"base64": images[i]}, 2), timeout=300)

    killed, responses = _in_flight(2, send, lambda: kill_replica("ImageEncoder"), 1.0)
    print(f"\nkilled {killed}: statuses {[r.status_code for r in responses]}")
    for r in responses:
        if r.status_code != 200:
            assert_retryable(r)
    # The embeddings the dead encoder held are gone: a click by image_id says to send the image again (404),
    # a click with the image's bytes encodes it again on the new replica and gives the same masks as before.
    r = api.post(f"{faults}/v1/predict", json=click_body({"image_id": image_id}, 2), timeout=120)
    assert r.status_code in (404, 503, 200), r.text
    if r.status_code == 404:
        assert "send the image again" in r.json()["error"]["message"]
    took, r = wait_until_ok(lambda: send(0), "encoder replaced")
    assert took < RECOVERY_BOUND_S
    same = api.post(f"{faults}/v1/predict", json=click_body({"image_id": r.json()["image_id"]}, 2), timeout=120)
    assert same.status_code == 200
    assert_same_masks(same.json(), r.json())


def test_tracker_killed_while_streaming(faults, api, data_dir):
    import json

    from bench.load import default_workload

    clip = default_workload(data_dir, video_frames=8).video
    session = api.post(f"{faults}/v1/sessions", json={"video": {"base64": b64(clip)}}, timeout=300)
    assert session.status_code == 200, session.text
    sid = session.json()["session_id"]
    body = {"video": {"base64": b64(clip)}, "mask_format": "rle",
            "frames": [{"index": 0, "regions": [{"point": [0.5, 0.5], "track_id": "a"}]}]}
    with api.post(f"{faults}/v1/generate", json=body, stream=True, timeout=300) as r:
        assert r.status_code == 200, r.text
        lines = r.iter_lines()
        first = json.loads(next(lines))  # the stream is in flight
        killed = kill_replica("VideoTracker")
        rest = [json.loads(line) for line in lines if line]
    print(f"\nkilled {killed} after frame {first['index']}: {len(rest)} more lines, last {str(rest[-1:])[:200]}")
    assert "error" not in first
    if len(rest) < 7:  # cut short: the last line says why, and that a retry will do
        assert rest and rest[-1]["error"]["code"] == "replica_unavailable", rest[-1:]
        assert rest[-1]["retry_after_s"] >= 1 and all("error" not in x for x in rest[:-1])
    r = api.get(f"{faults}/v1/sessions/{sid}", timeout=120)  # the session lived on the killed replica
    assert r.status_code == 410 and "create a new session" in r.json()["error"]["message"], r.text

    def generate_again():
        with api.post(f"{faults}/v1/generate", json={**body, "max_frames": 2}, stream=True, timeout=300) as g:
            if g.status_code != 200:
                return g
            out = [json.loads(line) for line in g.iter_lines() if line]
            assert len(out) == 2 and all("error" not in x for x in out), out
            return g

    took, _ = wait_until_ok(generate_again, "tracker replaced")
    assert took < RECOVERY_BOUND_S


def test_corrupt_checkpoint_is_reported_in_serve_status(serve_app, tiny_checkpoint, tmp_path):
    from ray import serve
    from ray.serve._private.common import DeploymentStatus

    from sam2_serve.deployments.app import build_app

    serve.delete(APP)  # the last test here: free the fault app's memory before starting more model replicas

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(tiny_checkpoint.read_bytes()[: 1 << 20])  # a truncated download
    small = {"num_cpus": 0.05, "num_replicas": 1}
    app = build_app({"model": "sam2.1-hiera-tiny", "checkpoint": str(corrupt), "device": "cpu",
                     "encoder": small, "decoder": small, "ingress": small, "tracker": small})
    name = "sam2-corrupt"
    start = time.monotonic()
    try:
        with pytest.raises(RuntimeError):
            serve.run(app, name=name, route_prefix="/corrupt")
        # The app fails as soon as one deployment has failed its retries; every deployment that loads the model
        # reports why from its first failed start on (``Retrying N more time(s). Error: ...``).
        failing = ("ImageEncoder", "MaskDecoder", "VideoTracker")
        while True:
            status = serve.status().applications[name]
            if all("ModelUnavailable" in status.deployments[d].message for d in failing):
                break
            assert time.monotonic() - start < RECOVERY_BOUND_S, status
            time.sleep(1)
        print(f"\n{name}: {status.status} after {time.monotonic() - start:.0f} s")
        assert status.status == "DEPLOY_FAILED"
        assert any(status.deployments[d].status == DeploymentStatus.DEPLOY_FAILED for d in failing), status
        for dep in failing:
            d = status.deployments[dep]
            assert d.status in (DeploymentStatus.DEPLOY_FAILED, DeploymentStatus.UPDATING), (dep, d)
            assert "ModelUnavailable" in d.message and str(corrupt) in d.message, d.message
            assert "could not be loaded" in d.message and "is the file complete" in d.message, d.message
        print(status.deployments["ImageEncoder"].message.strip().splitlines()[-1][:300])
    finally:
        serve.delete(name)
