"""predict: served latency and throughput against upstream SAM2ImagePredictor, side by side in one run.

    .venv/bin/python -m bench.predict [--model sam2.1-hiera-base-plus] [--clicks 20]

Targets (issue 2), on truck.jpg:
  cached click p50            <= 1.5x upstream predict on an image already set
  first request, new image    <= 1.1x upstream set_image + predict
  8 clients, 8 images          >= 0.9x upstream images/s in a sequential loop
  bfloat16 encoder             speed-up over float32 and mask IoU between the two (reported)
Upstream runs in this process beside the served application, measurements interleaved (upstream, served, upstream,
...), so both sides see the same machine: the same idle Ray processes, the same drift of a shared host's speed.
With ``--upstream-alone`` upstream is also measured as a user runs it, with no Ray on the machine: before the
application starts and again after it stops (their mean against the served figures, both shown, so drift shows);
issue 15's targets read those: first request <= 0.6x, cached click over HTTP <= 1.2x.
Random-weight checkpoint (real weights cannot be downloaded here): speed does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
import torch
from PIL import Image

from bench.common import DATA, bench_checkpoint, machine, p50, replica_rss_mib, table, timed
from sam2_serve.common.images import decode_image


def variants(rgb: np.ndarray, n: int) -> list[bytes]:
    """n JPEGs of the same picture with one pixel changed each: new content hashes, same work."""
    out = []
    for i in range(n):
        a = rgb.copy()
        a[0, i] = (a[0, i].astype(int) + 128) % 256
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=95)
        out.append(buf.getvalue())
    return out


def upstream_predictor(ckpt, model: str):
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from sam2_serve.models.registry import get_spec

    return SAM2ImagePredictor(build_sam2(get_spec(model).config, str(ckpt), device="cpu"))


def start_app(ckpt, model: str):
    import ray
    from ray import serve

    from sam2_serve.deployments.app import build_app
    from sam2_serve.testing import free_port

    ray.init(num_cpus=4, include_dashboard=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    handle = serve.run(build_app({"model": model, "checkpoint": str(ckpt), "device": "cpu"}), name="sam2",
                       route_prefix="/")
    return f"http://127.0.0.1:{port}/v1/predict", handle


def upstream_alone(ckpt, model: str, jpegs: list[bytes], point, clicks: int) -> dict:
    """Upstream with nothing else running: first request (set_image + predict) on 3 new images, then the click."""
    predictor = upstream_predictor(ckpt, model)
    images = [decode_image(j) for j in jpegs[:4]]
    h, w = images[0].shape[:2]
    coords, labels = np.array([[point[0] * w, point[1] * h]]), np.array([1])

    def first(img):
        predictor.set_image(img)
        return predictor.predict(coords, labels, multimask_output=False)

    first(images[0])  # warm-up, and the image the clicks use
    out = {"first": [timed(first, images[i])[0] for i in (1, 2, 3)]}
    predictor.set_image(images[0])
    out["click"] = [timed(predictor.predict, coords, labels, multimask_output=False)[0] for _ in range(clicks)]
    return out  # the predictor goes with this frame: its memory is free before the app starts


def measure(ckpt, model: str, jpegs: list[bytes], point, clicks: int, clients: int) -> dict:
    """Every figure of the table, upstream and served interleaved. ``jpegs``: 4 + clients new images."""
    from ray import serve

    url, handle = start_app(ckpt, model)
    predictor = upstream_predictor(ckpt, model)
    images = [decode_image(j) for j in jpegs]
    h, w = images[0].shape[:2]
    coords, labels = np.array([[point[0] * w, point[1] * h]]), np.array([1])
    session = requests.Session()
    body = lambda data: {"image": {"base64": base64.b64encode(data).decode()}, "regions": [{"point": list(point)}]}

    def post(data, s=session):
        r = s.post(url, json=body(data), timeout=600)
        r.raise_for_status()
        return r.json()

    def up_first(img):
        predictor.set_image(img)
        return predictor.predict(coords, labels, multimask_output=False)

    encoder = serve.get_deployment_handle("ImageEncoder", app_name="sam2")
    forward_s = lambda: encoder.stats.remote().result()["forward_s"]  # noqa: E731
    time.sleep(2)
    out = {"rss_rest": replica_rss_mib()}
    image_id = post(jpegs[0])["image_id"]  # warm-up; also the cached image of the click test
    up_first(images[0])

    # First request on a new image: upstream set_image + predict, then a served request, three times.
    f0 = forward_s()
    out["up_first"], out["sv_first"] = [], []
    for i in (1, 2, 3):
        out["up_first"].append(timed(up_first, images[i])[0])
        out["sv_first"].append(timed(post, jpegs[i])[0])
    out["forward_first"] = (forward_s() - f0) / 3

    # Cached click, in rounds of 5: upstream predict on the image already set, served over HTTP, served by handle.
    predictor.set_image(images[0])
    click_body = {"image": {"image_id": image_id}, "regions": [{"point": list(point)}]}
    http_click = lambda: session.post(url, json=click_body, timeout=60).raise_for_status()  # noqa: E731
    handle_click = lambda: handle.predict.remote(image_id=image_id,  # noqa: E731
                                                 regions=[{"point": list(point)}]).result()
    out["up_click"], out["sv_click"], out["sv_click_handle"] = [], [], []
    for _ in range(max(1, clicks // 5)):
        out["up_click"] += [timed(predictor.predict, coords, labels, multimask_output=False)[0] for _ in range(5)]
        out["sv_click"] += [timed(http_click)[0] for _ in range(5)]
        out["sv_click_handle"] += [timed(handle_click)[0] for _ in range(5)]

    # Throughput: upstream's sequential loop over the batch's images, then the batch from concurrent clients.
    batch = jpegs[4:4 + clients]
    out["up_loop"] = timed(lambda: [up_first(img) for img in images[4:4 + clients]])[0]
    sessions = [requests.Session() for _ in batch]
    f2 = forward_s()
    with ThreadPoolExecutor(clients) as pool:
        wall, _ = timed(lambda: list(pool.map(post, batch, sessions)))
    out["forward_clients"] = (forward_s() - f2) / len(batch)
    out["sv_ips"] = len(batch) / wall
    out["rss_after"] = replica_rss_mib()
    import ray

    serve.shutdown()
    ray.shutdown()
    return out


ENCODER_PRECISIONS = (("torch float32", "float32", "torch"), ("torch bfloat16", "bfloat16", "torch"),
                      ("OpenVINO float32", "float32", "openvino"), ("OpenVINO bfloat16", "bfloat16", "openvino"))


def encoder_precisions(ckpt, model: str, rgb: np.ndarray, point) -> dict[str, tuple]:
    """The encoder in each of ``ENCODER_PRECISIONS`` (name, ``dtype``, ``encoder_backend``; OpenVINO's bfloat16
    uses bf16 units where the CPU has them): {name: (seconds a pass (best of 2), the click's mask (H, W) bool, its
    low-resolution logits (256x256), what ran)}."""
    from sam2_serve.common.types import ObjectPrompt
    from sam2_serve.models.fast_encoder import load_fast_encoder
    from sam2_serve.models.image import ImageModel
    from sam2_serve.models.loader import load_model

    h, w = rgb.shape[:2]
    prompt = ObjectPrompt(np.array([[point[0] * w, point[1] * h]], np.float32), np.array([1], np.int32))
    runs = {}
    for name, dtype, backend in ENCODER_PRECISIONS:
        loaded = load_model(model, ckpt, "cpu", dtype)
        enc = load_fast_encoder(loaded, backend)
        m = ImageModel(loaded, enc)
        m.encode([rgb], ["x"])
        secs = min(timed(m.encode, [rgb], ["x"])[0] for _ in range(2))
        (out,) = m.decode(m.encode([rgb], ["x"])[0], [prompt])
        runs[name] = (secs, out.masks[0].unpack(), out.low_res_logits[0], f"{enc.backend}: {enc.reason}")
    return runs


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sam2.1-hiera-base-plus")
    ap.add_argument("--image", default=str(DATA / "images" / "truck.jpg"))
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--upstream-alone", action="store_true",
                    help="also measure upstream with no Ray running, before and after the served run (issue 15)")
    ap.add_argument("--no-bf16", action="store_true",
                    help="skip the bfloat16 encoder row (minutes on CPUs without avx512_bf16, where it is slower)")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    point = (0.45, 0.55)
    ckpt = bench_checkpoint(args.model)
    rgb = decode_image(open(args.image, "rb").read())
    jpegs = variants(rgb, 4 + args.clients)
    print(f"machine: {machine()}; model {args.model}; image {args.image} {rgb.shape[1]}x{rgb.shape[0]}", flush=True)

    alone = [upstream_alone(ckpt, args.model, jpegs, point, args.clicks)] if args.upstream_alone else []
    m = measure(ckpt, args.model, jpegs, point, args.clicks, args.clients)
    if args.upstream_alone:
        alone.append(upstream_alone(ckpt, args.model, jpegs, point, args.clicks))
    precisions = {} if args.no_bf16 else encoder_precisions(ckpt, args.model, rgb, point)

    up_click, up_first = p50(m["up_click"]), p50(m["up_first"])
    up_ips = args.clients / m["up_loop"]
    ratio = lambda served, up: served / up  # noqa: E731
    rows = [
        ("cached click p50, HTTP (s)", f"{up_click:.3f}", f"{p50(m['sv_click']):.3f}",
         f"{ratio(p50(m['sv_click']), up_click):.2f}x", "<= 1.5x", ratio(p50(m["sv_click"]), up_click) <= 1.5),
        ("cached click p50, handle (s)", f"{up_click:.3f}", f"{p50(m['sv_click_handle']):.3f}",
         f"{ratio(p50(m['sv_click_handle']), up_click):.2f}x", "(reported)", ""),
        ("first request, new image p50 (s)", f"{up_first:.2f}", f"{p50(m['sv_first']):.2f}",
         f"{ratio(p50(m['sv_first']), up_first):.2f}x", "<= 1.1x", ratio(p50(m["sv_first"]), up_first) <= 1.1),
        (f"{args.clients} clients, {args.clients} images (images/s)", f"{up_ips:.3f}", f"{m['sv_ips']:.3f}",
         f"{m['sv_ips'] / up_ips:.2f}x", ">= 0.9x", m["sv_ips"] / up_ips >= 0.9),
    ]
    if precisions:
        f32, f32_mask, f32_logits, _ = precisions["torch float32"]
        bf16, bf16_mask, _, _ = precisions["torch bfloat16"]
        rows.append(("encoder float32 -> bfloat16 (s)", f"{f32:.2f}", f"{bf16:.2f}", f"{f32 / bf16:.2f}x speed-up",
                     f"mask IoU {mask_iou(f32_mask, bf16_mask):.3f}", "reported"))
    for a in alone:
        print(f"upstream alone: first request p50 {p50(a['first']):.2f} s, click p50 {p50(a['click']):.3f} s")
    if alone:
        a_first = float(np.mean([p50(a["first"]) for a in alone]))
        a_click = float(np.mean([p50(a["click"]) for a in alone]))
        sv_first, sv_click = p50(m["sv_first"]), p50(m["sv_click"])
        rows += [("first request vs upstream alone (s)", f"{a_first:.2f}", f"{sv_first:.2f}",
                  f"{sv_first / a_first:.2f}x", "<= 0.6x", sv_first / a_first <= 0.6),
                 ("cached click HTTP vs upstream alone (s)", f"{a_click:.3f}", f"{sv_click:.3f}",
                  f"{sv_click / a_click:.2f}x", "<= 1.2x", sv_click / a_click <= 1.2)]
    print(table(rows, ("measure", "upstream", "served", "ratio", "target", "met")))
    print(f"encoder forward in the replica, s per image: first requests {m['forward_first']:.2f} (upstream "
          f"set_image + predict {up_first:.2f}), {args.clients} clients {m['forward_clients']:.2f} (upstream loop "
          f"{m['up_loop'] / args.clients:.2f})")
    if precisions:
        print(table([(name, f"{secs:.2f}", f"{f32 / secs:.2f}x", f"{mask_iou(mask, f32_mask):.4f}",
                      f"{float(np.abs(logits - f32_logits).max()):.2e}", what[:90])
                     for name, (secs, mask, logits, what) in precisions.items()],
                    ("encoder", "s a pass", "speed-up", "mask IoU vs torch f32", "max |logit diff|", "ran")))
    print("replica RSS at rest (MiB):", {k: round(v) for k, v in m["rss_rest"].items()})
    print("replica RSS after the run (MiB):", {k: round(v) for k, v in m["rss_after"].items()})
    if args.json:
        json.dump({"rows": rows, "figures": m, "upstream_alone": alone, "machine": machine()},
                  open(args.json, "w"), indent=1, default=str)


if __name__ == "__main__":
    main()
