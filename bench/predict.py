"""predict: served latency and throughput against upstream SAM2ImagePredictor, side by side in one run.

    .venv/bin/python -m bench.predict [--model sam2.1-hiera-base-plus] [--clicks 20]

Targets (issue 2), on truck.jpg:
  cached click p50            <= 1.5x upstream predict on an image already set
  first request, new image    <= 1.1x upstream set_image + predict
  8 clients, 8 images          >= 0.9x upstream images/s in a sequential loop
  bfloat16 encoder             speed-up over float32 and mask IoU between the two (reported)
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
from common.images import decode_image


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


def upstream(ckpt, model: str, images: list[np.ndarray], point, clicks: int, dtype: str = "float32"):
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from models.loader import autocast
    from models.registry import get_spec

    predictor = SAM2ImagePredictor(build_sam2(get_spec(model).config, str(ckpt), device="cpu"))
    ctx = lambda: autocast(torch.device("cpu"), dtype)
    h, w = images[0].shape[:2]
    coords, labels = np.array([[point[0] * w, point[1] * h]]), np.array([1])

    def first(img):
        with ctx():
            predictor.set_image(img)
            return predictor.predict(coords, labels, multimask_output=False)

    first(images[0])  # warm-up
    firsts = [timed(first, img)[0] for img in images]
    with ctx():
        click_times = [timed(predictor.predict, coords, labels, multimask_output=False)[0] for _ in range(clicks)]
    with ctx():
        masks = predictor.predict(coords, labels, multimask_output=False)[0]
    return firsts, click_times, masks > 0


def served(ckpt, model: str, jpegs: list[bytes], point, clicks: int, clients: int):
    import ray
    from ray import serve

    from deployments.app import build_app
    from tests.integration.conftest import free_port

    ray.init(num_cpus=4, include_dashboard=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"model": model, "checkpoint": str(ckpt), "device": "cpu",
                         "encoder": {"max_batch_size": clients}}), name="sam2", route_prefix="/")
    url = f"http://127.0.0.1:{port}/v1/predict"
    session = requests.Session()
    body = lambda data: {"image": {"base64": base64.b64encode(data).decode()}, "regions": [{"point": list(point)}]}

    def post(data, s=session):
        r = s.post(url, json=body(data), timeout=600)
        r.raise_for_status()
        return r.json()

    time.sleep(2)
    rss_rest = replica_rss_mib()
    encoder = serve.get_deployment_handle("ImageEncoder", app_name="sam2")
    forward_s = lambda: encoder.stats.remote().result()["forward_s"]  # noqa: E731
    post(jpegs[0])  # warm-up (and the cached image for the click test)
    f0 = forward_s()
    firsts = [timed(post, data)[0] for data in jpegs[1:4]]
    f1 = forward_s()
    image_id = post(jpegs[0])["image_id"]
    click_body = {"image": {"image_id": image_id}, "regions": [{"point": list(point)}]}
    click_times = [timed(session.post, url, json=click_body, timeout=60)[0] for _ in range(clicks)]

    batch = jpegs[4:4 + clients]
    sessions = [requests.Session() for _ in batch]
    f2 = forward_s()
    with ThreadPoolExecutor(clients) as pool:
        wall, _ = timed(lambda: list(pool.map(post, batch, sessions)))
    f3 = forward_s()
    rss_after = replica_rss_mib()
    serve.shutdown()
    ray.shutdown()
    # Seconds per image inside the encoder replica's forward passes: what the served path adds is the rest.
    forward = {"first": (f1 - f0) / len(firsts), "clients": (f3 - f2) / len(batch)}
    return firsts, click_times, len(batch) / wall, rss_rest, rss_after, forward


def bf16_encoder(ckpt, model: str, rgb: np.ndarray, point):
    """Encoder seconds in float32 and bfloat16 (best of 2), and the IoU of the masks they lead to."""
    from common.types import ObjectPrompt
    from models.image import ImageModel
    from models.loader import load_model

    h, w = rgb.shape[:2]
    prompt = ObjectPrompt(np.array([[point[0] * w, point[1] * h]], np.float32), np.array([1], np.int32))
    out = {}
    for dtype in ("float32", "bfloat16"):
        m = ImageModel(load_model(model, ckpt, "cpu", dtype))
        m.encode([rgb], ["x"])
        secs = min(timed(m.encode, [rgb], ["x"])[0] for _ in range(2))
        emb = m.encode([rgb], ["x"])[0]
        out[dtype] = (secs, m.decode(emb, [prompt])[0].masks[0])
    a, b = out["float32"][1], out["bfloat16"][1]
    return out["float32"][0], out["bfloat16"][0], float((a & b).sum() / max((a | b).sum(), 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sam2.1-hiera-base-plus")
    ap.add_argument("--image", default=str(DATA / "images" / "truck.jpg"))
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    point = (0.45, 0.55)
    ckpt = bench_checkpoint(args.model)
    rgb = decode_image(open(args.image, "rb").read())
    jpegs = variants(rgb, 4 + args.clients)
    print(f"machine: {machine()}; model {args.model}; image {args.image} {rgb.shape[1]}x{rgb.shape[0]}", flush=True)

    up_first, up_click, up_mask = upstream(ckpt, args.model, [decode_image(j) for j in jpegs[1:4]], point, args.clicks)
    up_seq = [decode_image(j) for j in jpegs[4:4 + args.clients]]
    up_loop, _ = timed(lambda: upstream_loop(ckpt, args.model, up_seq, point))
    print("upstream done", flush=True)
    sv_first, sv_click, sv_ips, rss_rest, rss_after, forward = served(ckpt, args.model, jpegs, point, args.clicks, args.clients)
    print("served done", flush=True)
    f32, bf16, iou = bf16_encoder(ckpt, args.model, rgb, point)

    up_ips = args.clients / up_loop
    rows = [
        ("cached click p50 (s)", f"{p50(up_click):.3f}", f"{p50(sv_click):.3f}", f"{p50(sv_click) / p50(up_click):.2f}x",
         "<= 1.5x", p50(sv_click) / p50(up_click) <= 1.5),
        ("first request, new image p50 (s)", f"{p50(up_first):.2f}", f"{p50(sv_first):.2f}",
         f"{p50(sv_first) / p50(up_first):.2f}x", "<= 1.1x", p50(sv_first) / p50(up_first) <= 1.1),
        (f"{args.clients} clients, {args.clients} images (images/s)", f"{up_ips:.3f}", f"{sv_ips:.3f}",
         f"{sv_ips / up_ips:.2f}x", ">= 0.9x", sv_ips / up_ips >= 0.9),
        ("encoder float32 -> bfloat16 (s)", f"{f32:.2f}", f"{bf16:.2f}", f"{f32 / bf16:.2f}x speed-up",
         f"mask IoU {iou:.3f}", "reported"),
    ]
    print(table(rows, ("measure", "upstream", "served", "ratio", "target", "met")))
    print(f"encoder forward in the replica, s per image: first requests {forward['first']:.2f} (upstream set_image + "
          f"predict {p50(up_first):.2f}), {args.clients} clients {forward['clients']:.2f} (upstream loop "
          f"{up_loop / args.clients:.2f})")
    print("replica RSS at rest (MiB):", {k: round(v) for k, v in rss_rest.items()})
    print("replica RSS after the run (MiB):", {k: round(v) for k, v in rss_after.items()})
    if args.json:
        json.dump({"rows": rows, "encoder_forward_s": forward, "rss_rest": rss_rest, "rss_after": rss_after, "machine": machine()},
                  open(args.json, "w"), indent=1, default=str)


def upstream_loop(ckpt, model, images, point):
    """A sequential loop over new images in one process: set_image + predict each."""
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from models.registry import get_spec

    predictor = SAM2ImagePredictor(build_sam2(get_spec(model).config, str(ckpt), device="cpu"))
    h, w = images[0].shape[:2]
    coords = np.array([[point[0] * w, point[1] * h]])
    t0 = time.perf_counter()
    for img in images:
        predictor.set_image(img)
        predictor.predict(coords, np.array([1]), multimask_output=False)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
