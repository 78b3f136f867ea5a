"""``sam2_serve.deployments.metrics`` in process (no Ray: recording on Ray's side is a no-op here): the values the
deployments' ``stats()`` read, and the ingress's request counts by route template, method and status.

tests/integration/test_observability.py scrapes the same metrics from Ray's Prometheus endpoint.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from sam2_serve.deployments.metrics import Count, Distribution, Level, RequestMetrics

KEY = "k" * 32


def test_count_level_distribution_keep_their_values():
    count = Count("sam2_test_things_total", "things", ("kind",))
    count.inc(tags={"kind": "a"})
    count.inc(2, tags={"kind": "b"})
    count.inc(0, tags={"kind": "c"})  # nothing happened: no series
    assert count.value == 3 and count.by_tags == {(("kind", "a"),): 1, (("kind", "b"),): 2}
    level = Level("sam2_test_level", "level")
    level.set(5)
    level.set(2)
    assert level.value == 2
    dist = Distribution("sam2_test_seconds", "seconds")
    assert dist.timed(lambda x, y=0: x + y)(1, y=2) == 3
    with pytest.raises(ZeroDivisionError):
        dist.timed(lambda: 1 / 0)()  # a failed pass is timed too
    dist.observe(1.5)
    assert dist.count == 3 and 1.5 <= dist.sum < 10
    frames = dist.timed(lambda it: next(it, None), counts=lambda frame: frame is not None)
    it = iter(["frame"])
    assert frames(it) == "frame" and frames(it) is None  # the end of a stream is not a frame
    assert dist.count == 4


def test_refresh_sets_every_gauge_again():
    """Ray drops a gauge ~20 s after its last set: ``refresh`` (called from check_health) sets each again."""
    from sam2_serve.deployments.metrics import TrackerMetrics

    metrics, calls = TrackerMetrics(), []
    metrics.sessions.set(3)
    for level in (metrics.sessions, metrics.streams):
        level._metric = type("Recorder", (), {"set": lambda self, v, tags=None, name=level: calls.append((name, v))})()
    metrics.refresh()
    assert sorted((lvl is metrics.sessions, v) for lvl, v in calls) == [(False, 0), (True, 3)]


def test_batch_sizes_sit_at_their_buckets_midpoints():
    """Ray rebuilds a histogram's _sum from bucket midpoints: batch sizes 1..8 must each be one."""
    from sam2_serve.deployments.metrics import BATCH_SIZES

    bounds = [0.0, *BATCH_SIZES]
    midpoints = [(lo + hi) / 2 for lo, hi in zip(bounds, bounds[1:])]
    assert all(size in midpoints for size in range(1, 9))


@pytest.fixture
def client(monkeypatch):
    """The FastAPI app of an ingress replica with an API key, over a local ``SAM2Ingress`` (no handles: a request
    that would reach a deployment fails with a 500)."""
    from sam2_serve.deployments.ingress import SAM2Ingress
    from sam2_serve.http.routes import build_http_app

    monkeypatch.setenv("SAM2_SERVE_API_KEY", KEY)
    ingress = SAM2Ingress(encoder=None, decoder=None, cache=None)
    return TestClient(build_http_app(ingress), raise_server_exceptions=False)


def test_requests_are_counted_by_route_template_method_and_status(client):
    auth = {"Authorization": f"Bearer {KEY}"}
    assert client.get("/healthz").status_code == 200
    assert client.get("/v1/sessions/abc").status_code == 401
    assert client.get("/v1/sessions/other", headers=auth).status_code == 500  # no tracker handle here: a bug, 500
    assert client.post("/v1/predict", json={"image": {"image_id": "x"}, "nonsense": 1},
                       headers=auth).status_code == 400
    assert client.post("/v1/predict", json={}, headers=auth).status_code == 400
    counts = client.app.state.request_metrics.requests.by_tags
    key = lambda route, method, status: (("method", method), ("route", route), ("status", status))  # noqa: E731
    assert counts == {key("/healthz", "GET", "200"): 1, key("/v1/sessions/{session_id}", "GET", "401"): 1,
                      key("/v1/sessions/{session_id}", "GET", "500"): 1, key("/v1/predict", "POST", "400"): 2}
    assert isinstance(client.app.state.request_metrics, RequestMetrics)
