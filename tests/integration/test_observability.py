"""What an operator sees of the shared application: the sam2_ metrics on Ray's Prometheus endpoint after real
traffic, each with a sensible value, and JSON log lines that carry the request id.

Ray exports custom metrics from each worker every few seconds (``metrics_report_interval_ms``, 10 s by default) to
the node's metrics agent, which serves Prometheus text on the metrics export port (``ray.init(_metrics_export_port=)``
in conftest); the test polls it with a bounded wait. Counters are cumulative over the test session, so the checks
are lower bounds (other tests' traffic adds to them), or compare a replica's series with that replica's ``stats()``,
which read the same counters.
"""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.integration.conftest import APP_NAME, assert_healthy
from tests.integration.test_generate import tracker_stats
from tests.integration.test_live import Live

pytestmark = pytest.mark.integration

EXPORT_BOUND_S = 120  # a few report intervals, on a busy 2-core machine


def scrape() -> list:
    """Every sample of Ray's Prometheus endpoint whose name starts with ``ray_sam2_`` and that the shared app
    exported (``application`` label), as prometheus_client ``Sample``s."""
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    (node,) = [n for n in ray.nodes() if n["Alive"]]
    text = requests.get(f"http://127.0.0.1:{node['MetricsExportPort']}/metrics", timeout=30).text
    return [s for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("ray_sam2_") and s.labels.get("application") == APP_NAME]


def value(samples: list, name: str, **labels) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels`` (over replicas and tag values)."""
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def until_exported(checks, what: str) -> list:
    """Scrape until ``checks(samples)`` returns no failures; fail with them after ``EXPORT_BOUND_S``."""
    deadline = time.monotonic() + EXPORT_BOUND_S
    while True:
        samples = scrape()
        failures = checks(samples)
        if not failures:
            return samples
        assert time.monotonic() < deadline, f"{what} after {EXPORT_BOUND_S} s: " + "; ".join(failures)
        time.sleep(2)


def _png(shape: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(7).integers(0, 255, (*shape, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def image_b64() -> str:
    """An image no other test sends: its first click misses the cache and encodes, the second one hits."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2024).integers(0, 255, (120, 160, 3), np.uint8)).save(buf, format="PNG")
    return b64(buf.getvalue())


def test_metrics_after_traffic(base_url, http, handle, image_b64, bedroom_path, deployment_handle):
    click = {"image": {"base64": image_b64}, "regions": [{"point": [0.5, 0.5]}], "mask_format": "rle"}
    for _ in range(2):  # encode + decode, then a cache hit + decode
        r = http.post(f"{base_url}/v1/predict", json=click, timeout=300)
        assert r.status_code == 200, r.text
    bad = http.post(f"{base_url}/v1/predict", json={**click, "regions": [{"point": [0.5]}]}, timeout=60)
    assert bad.status_code == 400, bad.text
    # Automatic masks on the cached image: with pred_iou_thresh 1.0 no mask can pass, so prompts stop early.
    amg = handle.segment_anything.remote(image=base64.b64decode(image_b64), points_per_side=4,
                                         pred_iou_thresh=1.0).result(timeout_s=300)
    assert amg.stats["candidates"] + amg.stats["stopped"] > 0 and amg.stats["stopped"] > 0, amg.stats
    video = {"video": {"base64": b64(bedroom_path.read_bytes())},
             "frames": [{"index": 0, "regions": [{"point": [0.5, 0.5]}]}], "mask_format": "rle"}
    with http.post(f"{base_url}/v1/generate", json={**video, "max_frames": 3}, stream=True, timeout=300) as r:
        assert r.status_code == 200 and len([ln for ln in r.iter_lines() if ln]) == 3
    with requests.post(f"{base_url}/v1/generate", json=video, stream=True, timeout=300) as r:  # cancelled early
        assert r.status_code == 200 and json.loads(next(r.iter_lines()))["index"] == 0
    session = http.post(f"{base_url}/v1/sessions", json={"video": video["video"]}, timeout=300)
    assert session.status_code == 200, session.text
    live = Live(base_url)  # held open while the metrics are scraped: one live stream, one frame tracked
    live.ready()
    assert live.ask(_png((64, 96)))["type"] == "frame"

    def checks(m) -> list[str]:
        want = {
            "cache hit": value(m, "ray_sam2_cache_hits_total") >= 1,
            "cache miss": value(m, "ray_sam2_cache_misses_total") >= 1,
            "cache bytes": value(m, "ray_sam2_cache_bytes") > 1 << 20 and value(m, "ray_sam2_cache_entries") >= 1,
            "images encoded": value(m, "ray_sam2_encoder_images_total") >= 1,
            "encoder batches": value(m, "ray_sam2_encoder_batch_size_count") >= 1
            and value(m, "ray_sam2_encoder_batch_size_sum") >= value(m, "ray_sam2_encoder_batch_size_count"),
            "forward seconds": value(m, "ray_sam2_encoder_forward_seconds_count") >= 1
            and value(m, "ray_sam2_encoder_forward_seconds_sum") > 0,
            "decoder passes": value(m, "ray_sam2_decoder_pass_seconds_count", op="predict") >= 2
            and value(m, "ray_sam2_decoder_pass_seconds_sum", op="predict") > 0
            and value(m, "ray_sam2_decoder_pass_seconds_count", op="segment") >= 1,
            "amg prompts": value(m, "ray_sam2_amg_prompts_total") >= 16,
            "amg stopped": value(m, "ray_sam2_amg_prompts_stopped_total") >= amg.stats["stopped"],
            "frames": value(m, "ray_sam2_tracker_frames_total") >= 4
            and value(m, "ray_sam2_tracker_frame_seconds_count") >= 4,
            "streams": value(m, "ray_sam2_tracker_streams_started_total") >= 2,
            "cancelled": value(m, "ray_sam2_tracker_streams_cancelled_total") >= 1,
            "sessions": value(m, "ray_sam2_tracker_sessions") >= 1,
            "live streams": value(m, "ray_sam2_tracker_live_streams") >= 1,
            "200s": value(m, "ray_sam2_requests_total", route="/v1/predict", method="POST", status="200") >= 2,
            "400s": value(m, "ray_sam2_requests_total", route="/v1/predict", method="POST", status="400") >= 1,
            "sessions route": value(m, "ray_sam2_requests_total", route="/v1/sessions", status="200") >= 1,
        }
        return [name for name, ok in want.items() if not ok]

    samples = until_exported(checks, "metrics missing or off")
    # Every sam2_ series carries Serve's deployment and replica tags.
    assert all({"deployment", "replica"} <= set(s.labels) for s in samples)
    print(f"\n{len({s.name for s in samples})} sam2_ series names exported")
    r = http.delete(f"{base_url}/v1/sessions/{session.json()['session_id']}", timeout=60)
    assert r.status_code == 200, r.text
    live.close()

    # Per tracker replica, the exported counters equal what its stats() report (the same counters), once no
    # stream runs: frames streamed, streams cancelled, streams and sessions live now.
    def per_replica(m) -> list[str]:
        off = []
        for rid, s in tracker_stats(deployment_handle).items():
            pairs = {"frames": (value(m, "ray_sam2_tracker_frames_total", replica=rid), s["frames_tracked"]),
                     "cancelled": (value(m, "ray_sam2_tracker_streams_cancelled_total", replica=rid),
                                   s["streams_cancelled"]),
                     "streams": (value(m, "ray_sam2_tracker_streams", replica=rid), s["streams_active"]),
                     "sessions": (value(m, "ray_sam2_tracker_sessions", replica=rid), s["sessions"]),
                     "live streams": (value(m, "ray_sam2_tracker_live_streams", replica=rid),
                                      s["live_streams"]),
                     "frame steps": (value(m, "ray_sam2_tracker_frame_seconds_count", replica=rid),
                                     s["frame_steps"])}
            off += [f"{rid} {k}: exported {a}, stats {b}" for k, (a, b) in pairs.items() if a != b]
        return off

    until_exported(per_replica, "tracker metrics differ from stats()")
    assert_healthy(base_url)


# ---- logs: JSON, with the request id on every line logged inside a request -------------------------------------------


def _replica_log_lines(deployment: str) -> list[str]:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return [line for path in sorted(logs.glob(f"replica_{APP_NAME}_{deployment}_*.log"))
            for line in path.read_text(errors="replace").splitlines() if line.strip()]


def test_logs_are_json_with_request_ids(base_url, http, image_b64):
    r = http.post(f"{base_url}/v1/predict", json={"image": {"base64": image_b64}, "regions": [{"point": [0.2, 0.3]}]},
                  timeout=300)
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    deadline = time.monotonic() + 30
    while True:  # replica log files are written asynchronously to this process
        records = {d: [json.loads(line) for line in _replica_log_lines(d)]  # every line is one JSON object
                   for d in ("SAM2Ingress", "MaskDecoder", "ImageEncoder", "EmbeddingCache", "VideoTracker")}
        access = [x for x in records["SAM2Ingress"] if f"request {rid} POST /v1/predict" in x["message"]]
        if access or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert access, f"no access line for request {rid}"
    assert all(x["request_id"] == rid and x["levelname"] == "INFO" for x in access), access
    assert "status 200" in access[0]["message"] and access[0]["replica"] and access[0]["deployment"]
    for deployment, lines in records.items():
        assert lines, f"{deployment} wrote no log lines"
        assert all({"levelname", "message", "asctime", "replica"} <= set(x) for x in lines), deployment
    # Lines logged inside this request, in every deployment it reached (Serve's own per-call lines included), carry
    # its id; the decoder was reached (the click), and so its lines name the request.
    within = {d: [x for x in lines if x.get("request_id") == rid] for d, lines in records.items()}
    assert within["SAM2Ingress"] and within["MaskDecoder"], {d: len(v) for d, v in within.items()}
