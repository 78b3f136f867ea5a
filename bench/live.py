"""Live video (WS /v1/live) through the real service: per-frame latency against /v1/generate, and the tracker's
memory over a long stream.

    .venv/bin/python -m bench.live [--frames 20] [--memory-frames 100 1000] [--url http://...]
                                   [--model sam2.1-hiera-base-plus --image-size 0]   # the default model at 1024

Targets (issue 16), bedroom.mp4 frames (960x540), one click on frame 0, tiny model at ``++model.image_size=256``
(its step is short, so what a pushed frame costs beyond it weighs most):
  latency   per-frame time of a live stream, each frame sent once the previous one is answered (PNG up as
            ``model.live`` sends it: resized to the tracker's input first, after a ``frame_size`` message; RLE
            masks down: the round trip a client sees; the client's own resize + encode, done before, is
            printed beside it), <= 1.1x /v1/generate's
            per-frame time on the same video (time between NDJSON lines): the median of 6 pairs' ratios (a run
            of each, back to back, in alternating order), the best of each beside it; and the tracker replica's
            own seconds a frame in each (what the round trip adds is the difference)
  memory    resident memory of the VideoTracker replica after 1000 pushed frames <= 1.1x after 100 (frames cycle
            through bedroom's 200, forward then backward); the tracker's own state bytes beside it
Starts Ray and the application here (one tracker replica) unless ``--url`` names a running one (then replica
memory is read on this machine: run it where the tracker runs).
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from contextlib import contextmanager
from typing import Optional

import numpy as np
import requests

from bench.common import DATA, bench_checkpoint, machine, replica_rss_mib, table
from sam2_serve.client.live import encode_frame, prepare_frame

VIDEO = DATA / "videos" / "bedroom.mp4"
CLICK = {"point": [0.5, 0.55], "track_id": "1"}


def generate_per_frame(url: str, n: int) -> float:
    body = {"video": {"base64": base64.b64encode(VIDEO.read_bytes()).decode()}, "mask_format": "rle",
            "frames": [{"index": 0, "regions": [CLICK]}]}
    times = []
    with requests.post(f"{url}/v1/generate", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        last = None
        for _ in r.iter_lines():
            now = time.perf_counter()
            if last is not None:
                times.append(now - last)
            last = now
            if len(times) == n:
                break
    return float(np.mean(times[1:]))  # frame 0 carries the prompt; then steady state


class Stream:
    def __init__(self, url: str):
        from websockets.sync.client import connect

        # As the project's client connects (sam2_serve.client.live): no permessage-deflate on PNG frames.
        self.ws = connect(url.replace("http", "ws", 1) + "/v1/live?mask_format=rle", max_size=None, proxy=None,
                          compression=None)
        ready = json.loads(self.ws.recv())
        self.stream_id, self.input_size = ready["stream_id"], ready["input_size"]

    def prepared(self, frames: list[np.ndarray]) -> list[bytes]:
        """The frames as ``model.live`` sends them on this stream (its ``frame_size`` message sent)."""
        out = [prepare_frame(f, "png", self.input_size) for f in frames]
        size = out[0][1]
        if size is not None:
            self.ws.send(json.dumps({"type": "frame_size", "width": size[0], "height": size[1]}))
            assert json.loads(self.ws.recv())["type"] == "frame_size"
        return [data for data, _ in out]

    def push(self, data: bytes) -> dict:
        self.ws.send(data)
        return json.loads(self.ws.recv())

    def prompt(self) -> None:
        self.ws.send(json.dumps({"type": "prompt", "regions": [CLICK]}))
        self.ws.recv()


def live_per_frame(url: str, rgb: list[np.ndarray]) -> float:
    s = Stream(url)
    frames = s.prepared(rgb)
    s.push(frames[0])
    s.prompt()
    times = []
    for data in frames[1:]:
        t0 = time.perf_counter()
        s.push(data)
        times.append(time.perf_counter() - t0)
    s.ws.close()
    return float(np.mean(times[1:]))


def tracker_steps() -> tuple[int, float]:
    """(frames stepped, seconds in those steps) of the VideoTracker replica: live steps exclude the memory-encoder
    pass run after the answer (``LiveTrack.finish``); generate's include it."""
    from ray import serve

    stats = serve.get_deployment_handle("VideoTracker", app_name="sam2").stats.remote().result()
    return stats["frame_steps"], stats["frame_step_s"]


def client_ms(frames: list[np.ndarray], input_size: int, repeats: int = 3) -> tuple[float, float]:
    """The client's milliseconds a frame (median, the two alternated frame by frame), before sending: (resize +
    encode as ``model.live`` does, encode whole)."""
    prep, whole = [], []
    for f in frames * repeats:
        for out, fn in ((prep, lambda: prepare_frame(f, "png", input_size)), (whole, lambda: encode_frame(f, "png"))):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return float(np.median(prep)) * 1e3, float(np.median(whole)) * 1e3


def memory(url: str, counts: list[int], rgb: list[np.ndarray]) -> list[tuple]:
    from ray import serve

    tracker = serve.get_deployment_handle("VideoTracker", app_name="sam2")
    s = Stream(url)
    frames = s.prepared(rgb)
    s.push(frames[0])
    s.prompt()
    rows, first = [], None
    for i in range(1, max(counts)):
        s.push(frames[i % len(frames)])
        if i + 1 in counts:
            time.sleep(2)  # as bench.load: measured after the replica's idle trim
            rss = replica_rss_mib().get("sam2:VideoTracker", float("nan"))
            stats = tracker.options(session_id=s.stream_id).live_stats.remote(s.stream_id).result()
            first = first or rss
            rows.append((i + 1, f"{rss:.0f}", f"{rss / first:.3f}x", stats["state_bytes"], stats["objects"]["1"]))
    s.ws.close()
    return rows


@contextmanager
def service(url: Optional[str], model: str = "sam2.1-hiera-tiny", image_size: Optional[int] = 256):
    """The base URL of the service: ``url`` (Ray joined at ``address="auto"``), or an application started here
    (``model``, one tracker replica at ``image_size``, None: the model's own 1024) and shut down after."""
    import ray
    from ray import serve

    if url is not None:
        ray.init(address="auto")
        yield url.rstrip("/")
        ray.shutdown()
        return
    from sam2_serve.deployments.app import build_app
    from sam2_serve.testing import free_port

    ray.init(num_cpus=4, include_dashboard=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    tracker = {"num_cpus": 0.5, "num_replicas": 1,
               "hydra_overrides": [f"++model.image_size={image_size}"] if image_size else []}
    serve.run(build_app({"model": model, "checkpoint": str(bench_checkpoint(model)), "device": "cpu",
                         "tracker": tracker}), name="sam2", route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=20, help="frames per latency run")
    ap.add_argument("--runs", type=int, default=6, help="latency pairs (a generate run and a live run)")
    ap.add_argument("--memory-frames", type=int, nargs="*", default=[100, 1000],
                    help="frame counts of the memory measure; none: latency only")
    ap.add_argument("--model", default="sam2.1-hiera-tiny", help="the model of the application started here")
    ap.add_argument("--image-size", type=int, default=256, help="its tracker's input size; 0: the model's (1024)")
    ap.add_argument("--url", help="a running service (application 'sam2'); default: start one here")
    args = ap.parse_args()

    from sam2_serve.testing import decode_frames

    base = decode_frames(VIDEO, 200)
    frames = base + base[::-1]
    with service(args.url, args.model, args.image_size or None) as url:
        print(f"machine: {machine()} (figures are noisy on a shared machine)")
        runs: dict[str, list[float]] = {"generate": [], "live": []}
        steps: dict[str, list[float]] = {"generate": [], "live": []}  # the tracker's own seconds a frame
        for i in range(args.runs):  # pairs, in alternating order: this host's speed drifts by a third over minutes
            for kind in (("generate", "live") if i % 2 == 0 else ("live", "generate")):
                before = tracker_steps()
                runs[kind].append(generate_per_frame(url, args.frames) if kind == "generate" else
                                  live_per_frame(url, frames[:args.frames]))
                after = tracker_steps()
                steps[kind].append((after[1] - before[1]) / max(1, after[0] - before[0]))
        g, lv = min(runs["generate"]), min(runs["live"])
        paired = float(np.median([x / y for x, y in zip(runs["live"], runs["generate"])]))
        step_g, step_lv = float(np.median(steps["generate"])), float(np.median(steps["live"]))
        print(table([("per frame (s), best of each", f"{lv:.3f}", f"{g:.3f}", f"{lv / g:.3f}x", ""),
                     ("median of the pairs' ratios", "", "", f"{paired:.3f}x", "<= 1.1x"),
                     ("the tracker's step (s), median of runs", f"{step_lv:.3f}", f"{step_g:.3f}",
                      f"{step_lv / step_g:.3f}x", "(reported)")],
                    ("measure", "live", "generate", "ratio", "target")))
        probe = Stream(url)  # the tracker's input size, from the service's ready message
        probe.ws.close()
        prep, whole = client_ms(frames[:args.frames], probe.input_size)
        print(f"client, before sending a frame (not in the round trip): resize + encode {prep:.1f} ms "
              f"(encoding it whole: {whole:.1f} ms)")
        print(json.dumps(runs))
        if not args.memory_frames:
            return
        rows = memory(url, args.memory_frames, frames)
        print(table(rows, ("frames pushed", "tracker RSS MiB", "vs first", "state bytes", "outputs held")))


if __name__ == "__main__":
    main()
