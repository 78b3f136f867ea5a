"""The service's Prometheus metrics, beside Serve's own: one class per deployment kind, created in its constructor.

Every metric is a ``ray.serve.metrics`` one: Serve adds the ``deployment``, ``replica`` and ``application`` tags, and
Ray exports it on each node's metrics port (``metrics-export-port``, 8080 on KubeRay) with the ``ray_`` prefix, so
``sam2_cache_hits_total`` is scraped as ``ray_sam2_cache_hits_total``. Outside a Ray worker (unit tests) recording
is a no-op on Ray's side.

Each wrapper also keeps its value in this process (``Count.value``, ``Distribution.count`` / ``.sum``), which is
what the deployments' ``stats()`` report: the handle counters and the exported metrics come from the same increments.

Units: seconds, bytes; histograms count one observation per forward pass, decoder pass, frame or batch.

Two behaviours of Ray 2.60's export (OpenTelemetry) that shape this module:

* A gauge's value is dropped about two report intervals (~20 s) after it was last set, so a gauge that does not
  change disappears. Deployments with gauges call their metrics' ``refresh()`` from Serve's periodic
  ``check_health`` (every ``health_check_period_s``, default 10 s), which sets each gauge again.
* A histogram's exported ``_sum`` is rebuilt from bucket midpoints, not from the observed values: it is exact only
  for values at a bucket's midpoint. Batch sizes have one bucket per size up to 8 so that theirs is exact; for
  seconds, ``_sum / _count`` is a mean within bucket resolution (the ``_bucket`` counts are exact).
"""

from __future__ import annotations

import time
from collections import Counter as _Tally
from typing import Any, Callable, Optional, Sequence

# Bucket upper bounds. Seconds: a decoder pass on a GPU (~ms) up to a base-plus CPU video frame (~10 s) and beyond.
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 150.0, 300.0)
# Half-integers: sizes 1-8 each sit at the midpoint of their own bucket (Ray rebuilds _sum from midpoints).
BATCH_SIZES = (0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 16.5, 32.5)


def _key(tags: Optional[dict]) -> tuple:
    return tuple(sorted((tags or {}).items()))


class Count:
    """A Prometheus counter and its running totals in this process (``value``; ``by_tags`` per tag set)."""

    def __init__(self, name: str, description: str, tag_keys: Sequence[str] = ()):
        from ray.serve.metrics import Counter

        self._metric = Counter(name, description=description, tag_keys=tuple(tag_keys))
        self.by_tags: _Tally = _Tally()

    @property
    def value(self) -> float:
        return sum(self.by_tags.values())

    def inc(self, n: float = 1, tags: Optional[dict] = None) -> None:
        if n:
            self._metric.inc(n, tags=tags)
            self.by_tags[_key(tags)] += n


class Level:
    """A Prometheus gauge and its last value in this process."""

    def __init__(self, name: str, description: str):
        from ray.serve.metrics import Gauge

        self._metric = Gauge(name, description=description)
        self.value: float = 0

    def set(self, value: float) -> None:
        self._metric.set(value)
        self.value = value


class Distribution:
    """A Prometheus histogram and its count and sum in this process (seconds, unless the name says otherwise)."""

    def __init__(self, name: str, description: str, boundaries: Sequence[float] = SECONDS,
                 tag_keys: Sequence[str] = ()):
        from ray.serve.metrics import Histogram

        self._metric = Histogram(name, description=description, boundaries=list(boundaries),
                                 tag_keys=tuple(tag_keys))
        self.count, self.sum = 0, 0.0

    def observe(self, value: float, tags: Optional[dict] = None) -> None:
        self._metric.observe(value, tags=tags)
        self.count += 1
        self.sum += value

    def timed(self, fn: Callable[..., Any], tags: Optional[dict] = None,
              counts: Optional[Callable[[Any], bool]] = None) -> Callable[..., Any]:
        """``fn`` observing its own duration: wrap the job given to a torch thread, so that only the work is timed,
        not the wait in its queue. ``counts(result)`` False: not observed (e.g. a stream's end, no frame); a call
        that raises is observed."""
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except BaseException:
                self.observe(time.perf_counter() - start, tags)
                raise
            if counts is None or counts(result):
                self.observe(time.perf_counter() - start, tags)
            return result
        return run


class _Bundle:
    """The metrics of one deployment kind."""

    def refresh(self) -> None:
        """Set every gauge again to its current value (Ray drops a gauge ~20 s after its last set)."""
        for level in vars(self).values():
            if isinstance(level, Level):
                level.set(level.value)


class CacheMetrics(_Bundle):
    """EmbeddingCache: lookups that found an embedding, lookups that did not, LRU evictions, bytes and entries held."""

    def __init__(self):
        self.hits = Count("sam2_cache_hits_total", "Embedding-cache lookups that found the image.")
        self.misses = Count("sam2_cache_misses_total", "Embedding-cache lookups that did not.")
        self.evictions = Count("sam2_cache_evictions_total", "Embeddings evicted to stay under cache_bytes.")
        self.bytes = Level("sam2_cache_bytes", "Bytes of embeddings the cache holds (bounded by cache_bytes).")
        self.entries = Level("sam2_cache_entries", "Embeddings the cache holds.")


class EncoderMetrics(_Bundle):
    """ImageEncoder: images encoded, images per forward pass, seconds per forward pass (on the torch thread)."""

    def __init__(self):
        self.images = Count("sam2_encoder_images_total", "Images encoded.")
        self.batch_size = Distribution("sam2_encoder_batch_size", "Images per encoder forward pass.", BATCH_SIZES)
        self.forward = Distribution("sam2_encoder_forward_seconds", "Seconds per encoder forward pass (one batch).")


class DecoderMetrics(_Bundle):
    """MaskDecoder: seconds per decoder pass (``op``: ``predict`` for a click, ``segment`` for one automatic-mask
    step), automatic-mask grid prompts decoded, and those stopped after the transformer (no mask could pass
    ``pred_iou_thresh``, so they were never upsampled).

    On CUDA a job's time runs until its result is on the host: a click's masks are, so its pass is timed whole; an
    automatic-mask step that keeps its logits on the GPU may end before its kernels do, and the batch's last step
    (which brings the survivors to the host) then carries the rest."""

    def __init__(self):
        self.passes = Distribution("sam2_decoder_pass_seconds", "Seconds per mask-decoder pass.", tag_keys=("op",))
        self.amg_prompts = Count("sam2_amg_prompts_total", "Automatic-mask grid prompts decoded.")
        self.amg_stopped = Count("sam2_amg_prompts_stopped_total",
                                 "Automatic-mask prompts stopped early: every mask's predicted IoU was below "
                                 "pred_iou_thresh, so no mask was upsampled.")


class TrackerMetrics(_Bundle):
    """VideoTracker: frames streamed (``rate()`` of it is frames/s) and seconds per frame, live sessions and
    streams, streams started and streams cancelled (the caller went away before the last frame)."""

    def __init__(self):
        self.frames = Count("sam2_tracker_frames_total", "Video frames tracked and streamed (generate, "
                            "propagate, live).")
        self.frame = Distribution("sam2_tracker_frame_seconds", "Seconds of model work per streamed frame.")
        self.sessions = Level("sam2_tracker_sessions", "Interactive sessions this replica holds.")
        self.live_streams = Level("sam2_tracker_live_streams", "Live streams (WS /v1/live) this replica holds.")
        self.streams = Level("sam2_tracker_streams", "Streams (generate, propagate) running on this replica.")
        self.streams_started = Count("sam2_tracker_streams_started_total", "Streams started.")
        self.streams_cancelled = Count("sam2_tracker_streams_cancelled_total",
                                       "Streams stopped because the caller went away before the last frame.")


class RequestMetrics(_Bundle):
    """The ingress: HTTP requests by route (the path template, e.g. ``/v1/sessions/{session_id}``), method and
    status (``sam2_serve.http.guard.GuardedRoute`` counts each once, when it is answered or its stream starts)."""

    def __init__(self):
        self.requests = Count("sam2_requests_total", "HTTP API requests by route, method and status.",
                              ("route", "method", "status"))

    def count(self, route: str, method: str, status: int) -> None:
        self.requests.inc(tags={"route": route, "method": method, "status": str(status)})
