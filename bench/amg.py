"""segment_anything served vs upstream ``SAM2AutomaticMaskGenerator``: wall time, memory, the same output.

    .venv/bin/python -m bench.amg                                   # base-plus, truck.jpg, three settings
    .venv/bin/python -m bench.amg --settings many --points-per-side 16 --model sam2.1-hiera-tiny

Each setting runs upstream in a child process (``output_mode="coco_rle"``, the cheapest output upstream has, so
the comparison favours upstream) and then the served application over HTTP (``mask_format=rle``) with the image's
embedding evicted first, so both include one encoder pass. Wall time is the ``generate`` call vs the HTTP request.
Memory: resident set sampled every 20 ms, of the upstream process during ``generate`` and of the MaskDecoder
replica(s) during the request; both as the peak and as the peak above the process's size just before.
Output: same number of masks, each matched in order (upstream sorted by predicted IoU) with its mask IoU and score.
With ``--upstream-alone`` upstream also runs as a user runs it, with no Ray on the machine: before the application
starts and again after it stops; the served time against their mean is issue 15's figure (defaults <= 0.25x).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from bench.common import DATA, bench_checkpoint, machine, table

SETTINGS = {
    # The API's defaults: SAM 2's thresholds, one mask per point.
    "defaults": {},
    # Upstream's own defaults (three masks per point): the 198 s figure in MEASUREMENTS.md.
    "upstream-defaults": {"multimask_output": True},
    # Thresholds that keep a mask per grid point with random weights (every mask upsampled and returned).
    "many": {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0},
}


class RssSampler:
    """Peak resident memory of some processes (summed), sampled every ``period`` seconds in a thread."""

    def __init__(self, pids: list[int], period: float = 0.02):
        self.procs = []
        for pid in pids:
            try:
                self.procs.append(psutil.Process(pid))
            except psutil.Error:
                pass
        self.period, self.peak, self._stop = period, 0, threading.Event()
        self.base = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        total = 0
        for p in self.procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.period)

    def __enter__(self):
        self.peak = self.base
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def child_upstream(ckpt: str, model: str, image: str, params_json: str, out: str) -> None:
    """Run upstream once in this (fresh) process and pickle wall time, memory and its records."""
    import warnings

    import torch
    from PIL import Image
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.build_sam import build_sam2

    from sam2_serve.models.registry import get_spec

    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(os.cpu_count() or 1)
    rgb = np.asarray(Image.open(image).convert("RGB"))
    net = build_sam2(get_spec(model).config, ckpt, device="cpu")
    generator = SAM2AutomaticMaskGenerator(net, output_mode="coco_rle", **json.loads(params_json))
    with RssSampler([os.getpid()]) as rss:
        t0 = time.perf_counter()
        records = generator.generate(rgb)
        wall = time.perf_counter() - t0
    records.sort(key=lambda r: -r["predicted_iou"])
    keep = [(r["segmentation"], r["predicted_iou"], r["stability_score"], r["area"]) for r in records]
    with open(out, "wb") as f:
        pickle.dump({"wall": wall, "peak": rss.peak, "base": rss.base, "records": keep}, f)


def upstream(ckpt, model: str, image: Path, params: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "up.pkl"
        subprocess.run([sys.executable, "-m", "bench.amg", "--child", str(ckpt), model, str(image),
                        json.dumps(params), str(out)], check=True)
        return pickle.loads(out.read_bytes())


def compare(served: list[dict], upstream_records: list) -> dict:
    """Masks matched in order: count, min IoU, exact RLE matches, max |score| and |stability| differences."""
    from pycocotools import mask as mask_utils

    out = {"count_served": len(served), "count_upstream": len(upstream_records), "min_iou": 1.0, "exact": 0,
           "max_score_diff": 0.0, "max_stability_diff": 0.0}
    for region, (rle, iou, stability, area) in zip(served, upstream_records):
        ours = {"size": region["mask"]["rle"]["size"], "counts": region["mask"]["rle"]["counts"].encode()}
        ref = {"size": rle["size"], "counts": rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]}
        out["exact"] += ours["counts"] == ref["counts"]
        out["min_iou"] = min(out["min_iou"], float(mask_utils.iou([ours], [ref], [0])[0, 0]))
        out["max_score_diff"] = max(out["max_score_diff"], abs(region["score"] - iou))
        if np.isfinite(stability):
            out["max_stability_diff"] = max(out["max_stability_diff"], abs(region["stability_score"] - stability))
    return out


class Served:
    """The real application on a local Ray cluster, called over HTTP."""

    def __init__(self, ckpt, model: str, decoder_replicas: int, decoder_threads: int | None):
        import ray
        import requests
        from ray import serve

        from sam2_serve.deployments.app import build_app
        from sam2_serve.testing import free_port

        ray.init(num_cpus=4, include_dashboard=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"model": model, "checkpoint": str(ckpt), "device": "cpu",
                             "decoder": {"num_replicas": decoder_replicas, "torch_threads": decoder_threads,
                                         "num_cpus": 0.25},
                             "tracker": {"num_cpus": 0.25}, "request_timeout_s": 7200}),
                  name="sam2", route_prefix="/")
        self.url = f"http://127.0.0.1:{port}/v1/segment_anything"
        self.session = requests.Session()
        self.cache = serve.get_deployment_handle("EmbeddingCache", app_name="sam2")
        self.encoder = serve.get_deployment_handle("ImageEncoder", app_name="sam2")
        decoder = serve.get_deployment_handle("MaskDecoder", app_name="sam2")
        # This application's replicas only (other Serve apps on the machine may have the same names).
        self.decoder_pids = sorted({decoder.stats.remote().result()["pid"] for _ in range(8 * decoder_replicas)})

    def run(self, jpeg: bytes, image_id: str, params: dict) -> dict:
        self.cache.discard.remote(image_id).result()  # cold: the request pays for its encoder pass
        encoded = self.encoder.stats.remote().result()["images_encoded"]
        body = {"image": {"base64": base64.b64encode(jpeg).decode()}, "mask_format": "rle", **params}
        with RssSampler(self.decoder_pids) as rss:
            t0 = time.perf_counter()
            r = self.session.post(self.url, json=body, timeout=3600)
            wall = time.perf_counter() - t0
        r.raise_for_status()
        return {"wall": wall, "peak": rss.peak, "base": rss.base, "regions": r.json()["regions"],
                "encoder_passes": self.encoder.stats.remote().result()["images_encoded"] - encoded}

    def close(self):
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sam2.1-hiera-base-plus")
    ap.add_argument("--image", default=str(DATA / "images" / "truck.jpg"))
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated: {', '.join(SETTINGS)}")
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument("--decoder-replicas", type=int, default=1)
    ap.add_argument("--decoder-threads", type=int, default=None, help="torch threads per decoder replica")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--upstream-alone", action="store_true",
                    help="also run upstream with no Ray running, before and after the served run (issue 15)")
    args = ap.parse_args()

    from sam2_serve.common.images import decode_image, image_id

    ckpt = bench_checkpoint(args.model)
    image = Path(args.image)
    jpeg = image.read_bytes()
    rgb = decode_image(jpeg)
    print(f"# {machine()}\n# {args.model}, {image.name} {rgb.shape[1]}x{rgb.shape[0]}, "
          f"points_per_side={args.points_per_side}, decoder replicas={args.decoder_replicas} "
          f"(torch threads {args.decoder_threads or 'all'}); load average {os.getloadavg()}", flush=True)
    settings = {name: {"points_per_side": args.points_per_side, "multimask_output": False, **SETTINGS[name]}
                for name in args.settings.split(",")}
    alone = {name: [] for name in settings}

    def run_alone():
        for name, params in settings.items():
            alone[name].append(upstream(ckpt, args.model, image, params)["wall"])
            print(f"# upstream alone {name}: {alone[name][-1]:.1f} s", flush=True)

    if args.upstream_alone:
        run_alone()
    served = Served(ckpt, args.model, args.decoder_replicas, args.decoder_threads)
    rows, results = [], {}
    try:
        for name, params in settings.items():
            up = upstream(ckpt, args.model, image, params)
            print(f"# upstream {name}: {up['wall']:.1f} s, {len(up['records'])} masks, peak {up['peak'] / 2**20:.0f} MiB",
                  flush=True)
            ours = served.run(jpeg, image_id(rgb), params)
            same = compare(ours["regions"], up["records"])
            mib = lambda b: b / 2**20
            results[name] = {"params": params, "upstream_s": up["wall"], "served_s": ours["wall"],
                             "upstream_peak_mib": mib(up["peak"]), "upstream_peak_above_start_mib": mib(up["peak"] - up["base"]),
                             "decoder_peak_mib": mib(ours["peak"]), "decoder_peak_above_start_mib": mib(ours["peak"] - ours["base"]),
                             "encoder_passes": ours["encoder_passes"], **same}
            r = results[name]
            rows.append((name, f"{r['upstream_s']:.1f}", f"{r['served_s']:.1f}", f"{r['served_s'] / r['upstream_s']:.2f}x",
                         f"{r['upstream_peak_mib']:.0f} (+{r['upstream_peak_above_start_mib']:.0f})",
                         f"{r['decoder_peak_mib']:.0f} (+{r['decoder_peak_above_start_mib']:.0f})",
                         f"{r['count_served']}/{r['count_upstream']}", f"{r['min_iou']:.4f}", r["exact"],
                         f"{r['max_score_diff']:.1e}"))
            print(json.dumps({name: r}), flush=True)
    finally:
        served.close()
    if args.upstream_alone:
        run_alone()
        alone_rows = []
        for name, walls in alone.items():
            served_s, mean = results[name]["served_s"], float(np.mean(walls))
            results[name]["upstream_alone_s"] = walls
            alone_rows.append((name, " / ".join(f"{w:.1f}" for w in walls), f"{served_s:.1f}",
                               f"{served_s / mean:.2f}x", "<= 0.25x" if name == "defaults" else "(reported)"))
        print(table(alone_rows, ("setting", "upstream alone s (before / after)", "served s", "ratio to their mean",
                                 "target")))
    print(table(rows, ("setting", "upstream s", "served s", "ratio", "upstream MiB (+during)",
                       "decoder MiB (+during)", "masks served/upstream", "min IoU", "identical RLE",
                       "max score diff")))
    print(f"# load average at the end {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_upstream(*sys.argv[2:7])
    else:
        main()
