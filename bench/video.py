"""Video tracking: ``sam2_serve.models.video`` (what the VideoTracker runs) against upstream ``SAM2VideoPredictor``, side by side.

    .venv/bin/python -m bench.video [--model sam2.1-hiera-base-plus] [--frames 6] [--memory-frames 100 1000]
                                    [--encoder-backend auto|openvino|torch]

Targets (issue 4), on bedroom.mp4 (960x540), one click on frame 0:
  speed         frames/s of our stream >= 1.0x upstream ``propagate_in_video`` (its ``init_state`` excluded)
  first frame   our time to the first streamed frame <= 2x the time of tracking one frame, on the whole
                200-frame video (upstream must decode every frame in ``init_state`` first; reported too)
  memory        peak RSS tracking a 1000-frame video <= 1.2x a 100-frame one at the same resolution, clips
                re-encoded from bedroom frames with PyAV; tiny model at ``++model.image_size=256`` (~0.25 s a frame)
                so 1000 frames stay short; each run in its own process; upstream's figures beside ours
Ours runs with the allocator environment of a tracker replica (``sam2_serve.deployments.app.MODEL_MALLOC_ENV``: activations
stay in the heap instead of fresh mmaps); upstream as a user runs it, and for reference with that environment too.
Upstream reads its frames through its JPEG-folder loader (decord is not installed); the frames are the same
PyAV-decoded pixels. Random-weight checkpoints: speed and memory do not depend on the weights' values.
Our frames' backbone runs as a tracker replica's does (``fast_encoder.load_fast_encoder`` with
``--encoder-backend``, default ``auto``: OpenVINO where a race at start finds it faster, else torch); the
export and the race happen before the timing, as in a replica's start.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import DATA, bench_checkpoint, machine, table

CLICK = (np.array([[480.0, 300.0]], np.float32), np.array([1], np.int32))
VIDEO = DATA / "videos" / "bedroom.mp4"


def _frames(count: int) -> list[np.ndarray]:
    from sam2_serve.testing import decode_frames

    return decode_frames(VIDEO, count)


def _load(model: str, checkpoint: Path, overrides: list[str], ours: bool):
    """The video model; ``ours=False``: exactly as sam2 builds it (the upstream side)."""
    import torch

    from sam2_serve.models.loader import load_model
    from sam2_serve.models.video import fix_memory_dtype

    torch.set_num_threads(os.cpu_count() or 1)
    loaded = load_model(model, checkpoint, "cpu", video=True, hydra_overrides=overrides, sam2_exact=not ours)
    fix_memory_dtype(loaded.model)
    return loaded


def ours_run(loaded, video: bytes, frames: int, encoder=None) -> dict:
    """Time to first frame and per-frame times of our stream over the first ``frames`` frames; ``encoder``: the
    backbone's runtime (``fast_encoder.load_fast_encoder``), None for torch."""
    from sam2_serve.common.videos import FrameReader
    from sam2_serve.common.types import VideoObjectPrompt
    from sam2_serve.models.video import VideoModel

    model = VideoModel(loaded, encoder)
    t0 = time.perf_counter()
    stream = model.track(FrameReader(video), [VideoObjectPrompt(0, "1", *CLICK)], 0, frames)
    times = []
    last = t0
    for _ in stream:
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return {"first_s": times[0], "per_frame_s": float(np.mean(times[1:])), "total_s": last - t0,
            "stats": stream.stats()}


def upstream_run(loaded, frames_dir: Path) -> dict:
    import torch

    P = loaded.model
    with torch.inference_mode():
        t0 = time.perf_counter()
        state = P.init_state(str(frames_dir), offload_video_to_cpu=True)
        t_init = time.perf_counter() - t0
        P.add_new_points_or_box(state, 0, 1, points=CLICK[0], labels=CLICK[1])
        times, last = [], time.perf_counter()
        t_first = None
        for _ in P.propagate_in_video(state):
            now = time.perf_counter()
            times.append(now - last)
            last = now
            if t_first is None:
                t_first = now - t0
    return {"init_s": t_init, "first_s": t_first, "per_frame_s": float(np.mean(times[1:])),
            "propagate_s": float(sum(times))}


def replica_env() -> dict[str, str]:
    """The allocator environment a VideoTracker replica runs with (``sam2_serve.deployments.app``)."""
    from sam2_serve.deployments.app import MODEL_MALLOC_ENV

    return dict(MODEL_MALLOC_ENV)


def _child(kind: str, video: Path, model: str, frames: int, env: dict[str, str], backend: str = "torch") -> dict:
    """Run one measurement in a fresh process with ``env`` added; its JSON result."""
    cmd = [sys.executable, "-m", "bench.video", "--child", kind, str(video), model, str(bench_checkpoint(model)),
           "--frames", str(frames), "--encoder-backend", backend]
    out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _speed_child(kind: str, video: str, model: str, checkpoint: str, n: int, backend: str) -> None:
    """Child process: time ``n`` frames of ours or of upstream, on a worker thread as in a replica; print JSON."""
    import threading

    from sam2_serve.testing import write_frames_dir

    loaded = _load(model, Path(checkpoint), [], ours=kind == "speed-ours")
    out: dict = {}

    def work() -> None:
        if kind == "speed-ours":
            from sam2_serve.models.fast_encoder import load_fast_encoder

            encoder = load_fast_encoder(loaded, backend)
            r = ours_run(loaded, Path(video).read_bytes(), n, encoder)
            out.update({k: v for k, v in r.items() if k != "stats"})
            out["encoder"] = f"{encoder.backend}: {encoder.reason}"
            return
        with tempfile.TemporaryDirectory() as d:
            out.update(upstream_run(loaded, write_frames_dir(_frames(n), Path(d))))
        with tempfile.TemporaryDirectory() as d:
            frames_dir = write_frames_dir(_frames(200), Path(d))
            import torch

            with torch.inference_mode():
                t0 = time.perf_counter()
                loaded.model.init_state(str(frames_dir), offload_video_to_cpu=True)
                out["init_200_s"] = time.perf_counter() - t0

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    print(json.dumps(out))


def speed(model: str, n: int, backend: str) -> tuple[list[tuple], dict]:
    """Ours with the tracker replica's environment; upstream as a user runs it, and with that environment too.

    Each run is its own process (the allocator is set at process start); the three alternate, twice, and each keeps
    its faster run: the machine is shared, load comes and goes.
    """
    env = replica_env()
    runs: dict[str, list[dict]] = {"ours": [], "upstream": [], "upstream_replica_env": []}
    for _ in range(2):
        runs["upstream"].append(_child("speed-upstream", VIDEO, model, n, {}))
        runs["ours"].append(_child("speed-ours", VIDEO, model, n, env, backend))
        runs["upstream_replica_env"].append(_child("speed-upstream", VIDEO, model, n, env))
    best = {k: min(v, key=lambda r: r["per_frame_s"]) for k, v in runs.items()}
    ours, up, up_env = best["ours"], best["upstream"], best["upstream_replica_env"]
    rows = [
        ("frames/s, propagation", f"{1 / ours['per_frame_s']:.3f}", f"{1 / up['per_frame_s']:.3f}",
         f"{up['per_frame_s'] / ours['per_frame_s']:.2f}x", ">= 1.0x"),
        ("  upstream with the replica's allocator env", "", f"{1 / up_env['per_frame_s']:.3f}",
         f"{up_env['per_frame_s'] / ours['per_frame_s']:.2f}x", "(for reference)"),
        (f"first frame, {n}-frame clip (s)", f"{ours['first_s']:.2f}", f"{up['first_s']:.2f} (init {up['init_s']:.2f})",
         f"{ours['first_s'] / ours['per_frame_s']:.2f}x one frame", "<= 2x one frame"),
        ("first frame, 200-frame video (s)", f"{ours['first_s']:.2f}",
         f">= {up['init_200_s'] + up['first_s'] - up['init_s']:.2f} (init_state alone {up['init_200_s']:.2f})",
         f"{ours['first_s'] / ours['per_frame_s']:.2f}x one frame", "<= 2x one frame"),
    ]
    return rows, {"best": best, "per_frame_s": {k: [r["per_frame_s"] for r in v] for k, v in runs.items()},
                  "replica_env": env}


def _clip(count: int, path: Path) -> Path:
    """``count`` frames at 960x540: bedroom's 200 frames, forward then backward, re-encoded with PyAV (H.264)."""
    from sam2_serve.common.videos import encode_video

    base = _frames(200)
    cycle = base + base[::-1]
    encode_video((cycle[i % len(cycle)] for i in range(count)), str(path))
    return path


def _hwm_mib() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_child(kind: str, video: str, model: str, checkpoint: str) -> None:
    """Child process: track the whole video with one click; print peak RSS (MiB) and state size as JSON."""
    overrides = ["++model.image_size=256"]
    loaded = _load(model, Path(checkpoint), overrides, ours=kind == "ours")
    base_rss = _hwm_mib()
    t0 = time.perf_counter()
    if kind == "ours":
        data = Path(video).read_bytes()
        out = ours_run(loaded, data, 10**9)
        extra = {"state_bytes": out["stats"]["state_bytes"], "frames": out["stats"]["frames_done"]}
    else:
        import torch

        from sam2_serve.testing import decode_frames, write_frames_dir

        with tempfile.TemporaryDirectory() as d:
            frames = decode_frames(video, 10**9)
            write_frames_dir(frames, Path(d))
            n = len(frames)
            del frames
            P = loaded.model
            with torch.inference_mode():
                state = P.init_state(d, offload_video_to_cpu=True)
                P.add_new_points_or_box(state, 0, 1, points=CLICK[0], labels=CLICK[1])
                for _ in P.propagate_in_video(state):
                    pass
        extra = {"frames": n}
    print(json.dumps({"peak_rss_mib": _hwm_mib(),
                      "model_rss_mib": base_rss, "seconds": time.perf_counter() - t0, **extra}))


def memory(counts: list[int], upstream_counts: list[int]) -> list[tuple]:
    model = "sam2.1-hiera-tiny"
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as d:
        for n in sorted(set(counts) | set(upstream_counts)):
            clip = _clip(n, Path(d) / f"clip{n}.mp4")
            kinds = (["ours"] if n in counts else []) + (["upstream"] if n in upstream_counts else [])
            for kind in kinds:
                results[(kind, n)] = _child(kind, clip, model, n, replica_env() if kind == "ours" else {})
                print(kind, n, results[(kind, n)], flush=True)
    for (kind, n), r in sorted(results.items()):
        rows.append((kind, n, f"{r['peak_rss_mib']:.0f}", f"{r['model_rss_mib']:.0f}", f"{r['seconds']:.0f}",
                     r.get("state_bytes", "")))
    lo, hi = min(counts), max(counts)
    if ("ours", lo) in results and ("ours", hi) in results:
        ratio = results[("ours", hi)]["peak_rss_mib"] / results[("ours", lo)]["peak_rss_mib"]
        rows.append(("ours ratio", f"{hi}/{lo}", f"{ratio:.3f}x", "", "", "target <= 1.2x"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sam2.1-hiera-base-plus")
    ap.add_argument("--frames", type=int, default=6, help="frames for the speed comparison (~7 s each upstream)")
    ap.add_argument("--memory-frames", type=int, nargs="*", default=[100, 1000])
    ap.add_argument("--upstream-memory-frames", type=int, nargs="*", default=[100])
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--encoder-backend", default="auto", choices=("auto", "openvino", "torch"),
                    help="our frames' backbone, as the tracker's encoder_backend (speed only)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.child[0].startswith("speed-"):
            _speed_child(*args.child, args.frames, args.encoder_backend)
        else:
            _memory_child(*args.child)
        return
    print(f"machine: {machine()} (shared with other developers: figures are noisy)")
    if not args.skip_speed:
        rows, raw = speed(args.model, args.frames, args.encoder_backend)
        print(f"\n{args.model}, bedroom.mp4 960x540, one click on frame 0, {args.frames} frames; our backbone: "
              f"{raw['best']['ours']['encoder']}")
        print(table(rows, ("measure", "ours", "upstream", "ratio", "target")))
        print(json.dumps(raw))
    if not args.skip_memory:
        rows = memory(args.memory_frames, args.upstream_memory_frames)
        print("\nsam2.1-hiera-tiny at 256, peak RSS per process (model included)")
        print(table(rows, ("tracker", "frames", "peak RSS MiB", "after model load MiB", "seconds", "state bytes")))


if __name__ == "__main__":
    main()
