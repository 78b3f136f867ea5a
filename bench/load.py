"""Load test: N concurrent clients on 127.0.0.1 mixing predict (new and cached images), segment_anything and
generate for a bounded time; throughput, p50/p95/p99 per operation, errors by status, replica memory.

    .venv/bin/python -m bench.load [--clients 8] [--duration 120] [--mix predict_cached=8,predict_new=1,...]
    .venv/bin/python -m bench.load --url http://host:8000 --api-key-file key.txt   # a running service

Without ``--url`` it starts Ray and the application itself (``sam2.1-hiera-tiny`` unless ``--model``, a
random-weight checkpoint, CPU; the tracker at 256-pixel input so video fits a CPU run) and stops both after.
Requirements (issue 6): no 5xx except 503 from backpressure; replica memory after the run <= 1.1x after warm-up
(one request of each kind, then a third of the duration, at most 30 s, with the same clients and mix).

``run_load`` is also what tests/integration/test_load.py runs, briefly, against the test application.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import requests
from PIL import Image

OPS = ("predict_cached", "predict_new", "segment_anything", "generate")
DEFAULT_MIX = {"predict_cached": 8, "predict_new": 1, "segment_anything": 1, "generate": 1}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Workload:
    """What the clients send: a warm cached image, fresh images made on demand, a short video."""

    image: np.ndarray  # RGB uint8 (H, W, 3): new images are this with a few pixels changed
    video: bytes  # encoded clip
    video_frames: int = 3  # frames to track per generate request
    amg_points_per_side: int = 8  # segment_anything grid (on the cached image)
    image_id: Optional[str] = None  # set by warm_up
    _counter: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new_image(self) -> bytes:
        """A JPEG of ``image`` with a unique pixel pattern: a new content hash, so a full encoder pass."""
        with self._lock:
            self._counter += 1
            n = self._counter
        rgb = self.image.copy()
        rgb[0, :24] = np.frombuffer(n.to_bytes(72, "little"), np.uint8).reshape(24, 3)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=92)
        return buf.getvalue()


@dataclass
class Result:
    op: str
    status: int  # HTTP status; 0: no answer (connection error, client timeout)
    seconds: float
    detail: str = ""


def _point(rng: random.Random) -> list[float]:
    return [round(rng.uniform(0.1, 0.9), 4), round(rng.uniform(0.1, 0.9), 4)]


def send(op: str, s: requests.Session, url: str, w: Workload, rng: random.Random, timeout: float = 600) -> Result:
    """One request of kind ``op``; streams (generate) are read to their end."""
    t0 = time.perf_counter()
    try:
        if op == "predict_cached":
            r = s.post(f"{url}/v1/predict", json={"image": {"image_id": w.image_id},
                                                   "regions": [{"point": _point(rng)}], "mask_format": "rle"},
                       timeout=timeout)
        elif op == "predict_new":
            r = s.post(f"{url}/v1/predict", json={"image": {"base64": b64(w.new_image())},
                                                   "regions": [{"point": _point(rng)}], "mask_format": "rle"},
                       timeout=timeout)
        elif op == "segment_anything":
            r = s.post(f"{url}/v1/segment_anything", json={
                "image": {"image_id": w.image_id}, "points_per_side": w.amg_points_per_side, "mask_format": "rle",
                "pred_iou_thresh": 0, "stability_score_thresh": 0}, timeout=timeout)
        elif op == "generate":
            body = {"video": {"base64": b64(w.video)}, "max_frames": w.video_frames, "mask_format": "rle",
                    "frames": [{"index": 0, "regions": [{"point": _point(rng), "track_id": "a"}]}]}
            with s.post(f"{url}/v1/generate", json=body, timeout=timeout, stream=True) as r:
                if r.status_code == 200:
                    lines = [json.loads(ln) for ln in r.iter_lines() if ln]
                    bad = [ln for ln in lines if "error" in ln]
                    if bad or len(lines) != w.video_frames:
                        return Result(op, 0, time.perf_counter() - t0,
                                      f"stream: {len(lines)} frames, error {bad[:1]}")
                return Result(op, r.status_code, time.perf_counter() - t0, "" if r.ok else r.text[:200])
        else:
            raise ValueError(f"unknown operation {op!r}; one of {OPS}")
        return Result(op, r.status_code, time.perf_counter() - t0, "" if r.ok else r.text[:200])
    except requests.RequestException as exc:
        return Result(op, 0, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"[:200])


def warm_up(url: str, w: Workload, headers: dict, ops: list[str]) -> None:
    """Cache the image and run every operation once (model first-call costs are not load)."""
    with requests.Session() as s:
        s.headers.update(headers)
        r = s.post(f"{url}/v1/embed", json={"image": {"base64": b64(w.new_image())}}, timeout=600)
        r.raise_for_status()
        w.image_id = r.json()["image_id"]
        rng = random.Random(0)
        for op in ops:
            res = send(op, s, url, w, rng)
            if res.status != 200:
                raise RuntimeError(f"warm-up {op} failed: {res.status} {res.detail}")


def run_load(url: str, w: Workload, clients: int, duration_s: float, mix: dict[str, float],
             headers: Optional[dict] = None, seed: int = 0, on_tick: Optional[Callable[[], None]] = None
             ) -> list[Result]:
    """``clients`` threads, each sending back-to-back requests drawn from ``mix`` until ``duration_s`` is over
    (a request in flight then is completed and counted)."""
    ops, weights = zip(*[(op, wt) for op, wt in mix.items() if wt > 0])
    deadline = time.monotonic() + duration_s
    results: list[Result] = []
    lock = threading.Lock()

    def client(i: int):
        rng = random.Random(seed * 1000 + i)
        with requests.Session() as s:
            s.headers.update(headers or {})
            while time.monotonic() < deadline:
                res = send(rng.choices(ops, weights)[0], s, url, w, rng)
                with lock:
                    results.append(res)
                if res.status == 503:  # backpressure: honour Retry-After as a well-behaved client does
                    time.sleep(min(2.0, max(0.2, deadline - time.monotonic())))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(timeout=1)
            if on_tick:
                on_tick()
    return results


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def summarize(results: list[Result], wall_s: float) -> tuple[list[tuple], Counter]:
    """Rows (op, requests, ok, req/s, p50, p95, p99 in ms) and a Counter of (op, status) for non-200s."""
    by_op: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_op[r.op].append(r)
    rows = []
    for op in [o for o in OPS if o in by_op] + ["all"]:
        rs = results if op == "all" else by_op[op]
        ok = [r.seconds * 1000 for r in rs if r.status == 200]
        rows.append((op, len(rs), len(ok), f"{len(ok) / wall_s:.2f}", f"{percentile(ok, 50):.0f}",
                     f"{percentile(ok, 95):.0f}", f"{percentile(ok, 99):.0f}"))
    errors = Counter((r.op, r.status) for r in results if r.status != 200)
    return rows, errors


def server_errors(results: list[Result]) -> list[Result]:
    """What the requirement forbids: any 5xx but 503 (backpressure), and requests that got no answer."""
    return [r for r in results if r.status == 0 or (r.status >= 500 and r.status != 503)]


# ---- replica memory -----------------------------------------------------------------------------------------------


def replica_pids(app: str) -> dict[str, int]:
    """{replica actor name: pid} of ``app``'s replicas in the connected Ray cluster (not other clusters')."""
    import ray

    out = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["name"].startswith(f"SERVE_REPLICA::{app}#"):
            actor = ray.get_actor(a["name"], namespace=a["namespace"])
            out[a["name"].split("::", 1)[1]] = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))
    return out


def replica_rss(pids: dict[str, int], private: bool = False) -> dict[str, float]:
    """MiB resident per replica (``app#Deployment#id``), summed with its child processes.

    ``private``: without shared pages. A replica's RSS also counts the pages of Ray's shared object store that it
    wrote or read, e.g. every embedding the encoder put there for the embedding cache (bounded by ``cache_bytes``
    and by Ray's ``object_store_memory``, and freed by Ray, not by the process).
    """
    import psutil

    def mib(p) -> float:
        info = p.memory_info()
        return info.rss - (info.shared if private else 0)

    out = {}
    for name, pid in pids.items():
        try:
            proc = psutil.Process(pid)
            out[name] = sum(mib(p) for p in [proc, *proc.children(recursive=True)]) / 2**20
        except psutil.Error:
            out[name] = float("nan")
    return out


def memory_rows(before: dict[str, float], after: dict[str, float]) -> list[tuple]:
    rows = []
    for name in sorted(before):
        b, a = before[name], after.get(name, float("nan"))
        rows.append((name.split("#", 1)[1].rsplit("#", 1)[0], f"{b:.0f}", f"{a:.0f}", f"{a / b:.3f}"))
    return rows


# ---- command line ----------------------------------------------------------------------------------------------------


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        op, _, weight = part.partition("=")
        if op.strip() not in OPS:
            raise argparse.ArgumentTypeError(f"unknown operation {op!r}; one of {', '.join(OPS)}")
        mix[op.strip()] = float(weight or 1)
    return mix


def default_workload(data: Path, video_frames: int = 3, image: str = "truck.jpg") -> Workload:
    from sam2_serve.common.videos import encode_video

    rgb = np.asarray(Image.open(data / "images" / image).convert("RGB"))
    import av

    frames = []
    with av.open(str(data / "videos" / "bedroom.mp4")) as c:  # a short clip: the first frames, half size
        for frame in c.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24")[::2, ::2])
            if len(frames) == max(video_frames, 8):
                break
    buf = io.BytesIO()
    encode_video(frames, buf, fps=30)
    return Workload(image=rgb, video=buf.getvalue(), video_frames=video_frames)


def main() -> None:
    from bench.common import DATA, bench_checkpoint, machine, table

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of load after warm-up")
    ap.add_argument("--mix", type=parse_mix, default=DEFAULT_MIX, help="op=weight,... of " + ",".join(OPS))
    ap.add_argument("--url", help="a running service; default: start one here")
    ap.add_argument("--app", default="sam2", help="its Serve application name (for replica memory)")
    ap.add_argument("--api-key-file", help="file holding the API key, if the service needs one")
    ap.add_argument("--model", default="sam2.1-hiera-tiny")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment variable for every replica of a cluster started here (repeatable)")
    args = ap.parse_args()

    import ray
    from ray import serve

    headers = {}
    if args.api_key_file:
        headers["Authorization"] = "Bearer " + Path(args.api_key_file).read_text().strip()
    started = args.url is None
    if started:
        from sam2_serve.deployments.app import build_app
        from sam2_serve.testing import free_port

        ray.init(num_cpus=4, include_dashboard=False,
                 runtime_env={"env_vars": dict(e.split("=", 1) for e in args.env)} if args.env else None)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"model": args.model, "checkpoint": str(bench_checkpoint(args.model)), "device": "cpu",
                             "tracker": {"num_cpus": 0.5, "hydra_overrides": ["++model.image_size=256"]}}),
                  name=args.app, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
    else:
        ray.init(address="auto")
        url = args.url.rstrip("/")
    try:
        w = default_workload(DATA)
        ops = [op for op, wt in args.mix.items() if wt > 0]
        rss_start = replica_rss(replica_pids(args.app))
        warm_up(url, w, headers, ops)
        # Warm-up under the same concurrency, so that "after warm-up" holds the working set of N requests in
        # flight; the measured run must then not grow it (a leak or unbounded queue would).
        warm_s = min(30.0, args.duration / 3)
        run_load(url, w, args.clients, warm_s, args.mix, headers, seed=1)
        pids = replica_pids(args.app)
        time.sleep(2)  # both measured 2 s after the last answer (model replicas trim freed memory after 1 s idle)
        rss_warm, own_warm = replica_rss(pids), replica_rss(pids, private=True)
        t0 = time.monotonic()
        results = run_load(url, w, args.clients, args.duration, args.mix, headers)
        wall = time.monotonic() - t0
        time.sleep(2)
        rss_after, own_after = replica_rss(pids), replica_rss(pids, private=True)
        rows, errors = summarize(results, wall)
        print(f"\nLoad test: {machine()}; {args.model} on CPU; {args.clients} clients for {args.duration:.0f} s "
              f"(wall {wall:.0f} s); mix {args.mix}")
        print(table(rows, ("operation", "requests", "200", "ok/s", "p50 ms", "p95 ms", "p99 ms")))
        print("\nNon-200 answers by (operation, status):", dict(errors) or "none")
        for r in [r for r in results if r.status != 200][:5]:
            print(f"  {r.op} {r.status}: {r.detail[:160]}")
        print(f"\nReplica resident memory (MiB): at start / after warm-up ({warm_s:.0f} s, same clients) / after:")
        mem = [(n, f"{rss_start.get(k, float('nan')):.0f}", b, a, ratio)
               for k, (n, b, a, ratio) in zip(sorted(rss_warm), memory_rows(rss_warm, rss_after))]
        print(table(mem, ("replica", "start", "warm", "after", "after/warm")))
        print("\nPrivate memory (MiB; RSS without shared pages such as Ray's object store): after warm-up / after:")
        print(table(memory_rows(own_warm, own_after), ("replica", "warm", "after", "after/warm")))
        bad = server_errors(results)
        worst = max(own_after[k] / own_warm[k] for k in own_warm)
        worst_rss = max(rss_after[k] / rss_warm[k] for k in rss_warm)
        print(f"\nno 5xx except 503: {'MET' if not bad else f'NOT MET ({len(bad)})'}; "
              f"private memory after <= 1.1x warm: {'MET' if worst <= 1.1 else 'NOT MET'} (worst {worst:.3f}x; "
              f"RSS worst {worst_rss:.3f}x)")
    finally:
        if started:
            serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
