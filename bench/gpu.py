"""GPU check: the model layer the deployments run (Ray-free), every model size on one CUDA GPU, one table.

    python -m bench.gpu [--out DIR] [--budget-s 450] [--sizes ...]   # a GPU machine: about 7.5 minutes
    python -m bench.gpu --smoke [--out DIR]                          # CPU, tiny model, small sizes: what CI runs

On the device machine (one H200; torch is there, not sam2 and the rest; no network; 8 minutes a run):

    bash scripts/gpu_wheels.sh          # here, once: the missing wheels into .whl/ (git-ignored; size printed)
    device run, carry [".whl"], timeout_s 540:
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 && python3 -m bench.gpu --out $OUT

then copy the table from $OUT/gpu.md into BENCHMARKS.md. What it measures, per model size (one child process each,
so that one failure or a stage past the budget costs only its own cells; the table is rewritten after each):

* encoder images/s, batch 1 and 8, float32 and bfloat16 autocast: ``ImageModel.encode`` of truck.jpg (1800x1200),
  preprocessing and features back to host memory included (what an ImageEncoder replica does per batch);
* click latency: ``ImageModel.decode`` of one point on a cached embedding (a MaskDecoder call), p50;
* automatic masks on truck.jpg: ``amg.generate`` against upstream ``SAM2AutomaticMaskGenerator``, with SAM 2's
  default thresholds and with thresholds that keep every candidate (random weights keep almost no mask at the
  defaults, so less upsampling than real weights would need; keep-all is the other bound);
* video frames/s on bedroom.mp4 (200 frames, 960x540), one click at (210, 350) on frame 0 as sam2's own benchmark,
  bfloat16: our stream (``VideoModel.track``, PyAV decoding and preprocessing of every frame included) and
  upstream ``propagate_in_video`` (its ``init_state`` excluded, as in sam2's benchmark);
* IoU with upstream on the same device and checkpoint: the click's mask, the keep-all automatic masks (same count,
  order, worst IoU), and the first video frames' masks (worst IoU);
* compiled (``--compiled``, default base-plus, if at least ``compile_min_s`` of the budget is left): video with
  ``vos_optimized`` (sam2's ``SAM2VideoPredictorVOS``, torch.compile max-autotune; sam2 publishes 64.1 FPS for
  base-plus so compiled on an A100), then the encoder with sam2's ``compile_image_encoder``.

Checkpoints are seeded random weights (``sam2_serve.testing.write_checkpoint``): real ones cannot be fetched there.
Speed does not depend on the weights' values, except where thresholds act on scores (automatic masks, above).
``--smoke`` runs every stage on the CPU in seconds with compilation forced off (``torch.compiler.set_stance``),
so that tests/unit/test_gpu_bench.py keeps this script working without a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from bench.common import DATA, bench_checkpoint, p50, table

SIZES = ("sam2.1-hiera-tiny", "sam2.1-hiera-small", "sam2.1-hiera-base-plus", "sam2.1-hiera-large")
# What build_sam2_video_predictor(vos_optimized=True) sets, as overrides our loader passes on.
VOS = ("++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictorVOS", "++model.compile_image_encoder=True")
COMPILE_ENCODER = ("++model.compile_image_encoder=True",)
IMAGE, VIDEO = DATA / "images" / "truck.jpg", DATA / "videos" / "bedroom.mp4"
CLICK = (0.45, 0.55)                   # fractions of the image's width and height
VIDEO_CLICK = (210.0, 350.0)           # pixels (x, y), sam2's benchmark click on bedroom frame 0


@dataclasses.dataclass(frozen=True)
class Plan:
    device: str = "cuda"
    sizes: tuple = SIZES
    compiled: tuple = ("sam2.1-hiera-base-plus",)
    batches: tuple = (1, 8)
    dtypes: tuple = ("float32", "bfloat16")
    warmup: int = 2                    # untimed runs before each timed measurement
    iters: int = 5
    clicks: int = 20
    amg_points: int = 32               # points per side (SAM 2's default)
    amg_defaults: bool = True          # also time SAM 2's default thresholds (besides keep-all)
    video_frames: int = 200
    video_warmup: int = 16             # frames tracked before the timed run (compiled: every shape seen)
    video_dtype: str = "bfloat16"
    video_overrides: tuple = ()
    iou_frames: int = 20
    force_eager: bool = False          # torch.compile'd code runs eagerly (smoke: no compiler on CI's CPU)
    budget_s: float = 450.0
    compile_min_s: float = 150.0


FULL = Plan()
SMOKE = Plan(device="cpu", sizes=(SIZES[0],), compiled=(SIZES[0],), batches=(1,), dtypes=("float32",), warmup=0,
             iters=1, clicks=2, amg_points=2, amg_defaults=False, video_frames=3, video_warmup=1,
             video_dtype="float32", video_overrides=("++model.image_size=256",), iou_frames=3, force_eager=True,
             budget_s=float("inf"), compile_min_s=0.0)


# ---- child processes: one model size, one variant; results as "RESULT {json}" lines on stdout ------------------

def emit(**values) -> None:
    print("RESULT " + json.dumps(values), flush=True)


def log(msg: str) -> None:
    print(f"[bench.gpu] {msg}", file=sys.stderr, flush=True)


def stage(name: str, fn, *args) -> None:
    """Run one measurement; a failure becomes an ``errors`` entry and the next stage runs."""
    log(name)
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001: reported in the table, traceback on stderr
        traceback.print_exc()
        emit(errors=[f"{name}: {type(exc).__name__}: {str(exc)[:120]}"])


def sync(plan: Plan) -> None:
    import torch

    if plan.device == "cuda":
        torch.cuda.synchronize()


def per_second(plan: Plan, fn, items: int) -> float:
    for _ in range(plan.warmup):
        fn()
    sync(plan)
    t0 = time.perf_counter()
    for _ in range(plan.iters):
        fn()
    sync(plan)
    return items * plan.iters / (time.perf_counter() - t0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    from sam2_serve.testing import iou as _iou

    return _iou(np.asarray(a, bool), np.asarray(b, bool))


def encoder_rates(plan: Plan, loaded, rgb, dtypes, prefix: str = "enc") -> None:
    from sam2_serve.models.image import ImageModel

    for dtype in dtypes:
        model = ImageModel(dataclasses.replace(loaded, dtype=dtype))
        for b in plan.batches:
            emit(**{f"{prefix}_b{b}_{dtype}": per_second(plan, lambda: model.encode([rgb] * b, ["x"] * b), b)})


def click_and_amg(plan: Plan, name: str, ckpt: str, rgb) -> None:
    """Click latency and automatic masks, ours against upstream (float32), with their IoUs."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from sam2_serve.common.types import AmgParams, ObjectPrompt
    from sam2_serve.models.amg import generate
    from sam2_serve.models.image import ImageModel
    from sam2_serve.models.loader import load_model
    from sam2_serve.testing import KEEP_ALL

    model = ImageModel(load_model(name, ckpt, plan.device))
    upstream = load_model(name, ckpt, plan.device, sam2_exact=True).model
    h, w = rgb.shape[:2]
    prompt = ObjectPrompt(np.array([[CLICK[0] * w, CLICK[1] * h]], np.float32), np.array([1], np.int32))
    (emb,) = model.encode([rgb], ["truck"])
    times = []
    for _ in range(plan.warmup + plan.clicks):
        t0 = time.perf_counter()
        (pred,) = model.decode(emb, [prompt], with_logits=False)  # masks come back to host: synchronised
        times.append(time.perf_counter() - t0)
    reference = SAM2ImagePredictor(upstream)
    reference.set_image(rgb)
    ref_masks, _, _ = reference.predict(prompt.point_coords, prompt.point_labels, multimask_output=False)
    ref = ref_masks[0] > 0
    emit(click_ms=1000 * p50(times[plan.warmup:]), iou_click=iou(pred.masks[0].unpack(), ref),
         area_click=float(ref.mean()))

    modes = ([("defaults", AmgParams(points_per_side=plan.amg_points))] if plan.amg_defaults else []) + [
        ("keepall", AmgParams(points_per_side=plan.amg_points, **KEEP_ALL))]
    if plan.warmup:
        generate(model, rgb, AmgParams(points_per_side=4))
        SAM2AutomaticMaskGenerator(upstream, points_per_side=4).generate(rgb)
    for mode, params in modes:
        t0 = time.perf_counter()
        ours = generate(model, rgb, params).masks
        t1 = time.perf_counter()
        ref = sorted(SAM2AutomaticMaskGenerator(upstream, **params.upstream_kwargs()).generate(rgb),
                     key=lambda r: -r["predicted_iou"])
        emit(**{f"amg_{mode}_s": t1 - t0, f"amg_{mode}_up_s": time.perf_counter() - t1,
                f"amg_{mode}_masks": len(ours), f"amg_{mode}_up_masks": len(ref)})
        if mode == "keepall" and ours and len(ours) == len(ref):
            emit(iou_amg=min(iou(m.mask, r["segmentation"]) for m, r in zip(ours, ref)))
        elif mode == "keepall":
            emit(errors=[f"automatic masks: {len(ours)} ours, {len(ref)} upstream's"])


def video_pair(plan: Plan, name: str, ckpt: str, frames_dir: str, overrides: tuple) -> None:
    """Frames/s of upstream ``propagate_in_video`` and of our stream on the same clip, and their masks' IoU."""
    import torch

    from sam2_serve.common.types import VideoObjectPrompt
    from sam2_serve.common.videos import FrameReader
    from sam2_serve.models.loader import load_model
    from sam2_serve.models.video import VideoModel, fix_memory_dtype

    points, labels = np.array([VIDEO_CLICK], np.float32), np.array([1], np.int32)
    kwargs = dict(dtype=plan.video_dtype, video=True, hydra_overrides=list(plan.video_overrides + overrides))
    upstream = load_model(name, ckpt, plan.device, sam2_exact=True, **kwargs)
    fix_memory_dtype(upstream.model)  # a no-op under CUDA autocast; the CPU fix MEASUREMENTS.md describes
    P = upstream.model
    if overrides == VOS and type(P).__name__ != "SAM2VideoPredictorVOS":
        raise RuntimeError(f"vos_optimized asked for, but sam2 built {type(P).__name__}")
    with torch.inference_mode(), upstream.autocast():
        state = P.init_state(frames_dir)  # not timed, as in sam2's benchmark
        P.add_new_points_or_box(state, 0, 1, points=points, labels=labels)
        for _ in P.propagate_in_video(state, max_frame_num_to_track=plan.video_warmup):
            pass
        sync(plan)
        t0, ref = time.perf_counter(), []
        for index, _, logits in P.propagate_in_video(state):
            if index < plan.iou_frames:
                ref.append((logits[0, 0] > 0).cpu().numpy())
        sync(plan)
        emit(video_fps_up=state["num_frames"] / (time.perf_counter() - t0))
    del P, upstream, state
    model = VideoModel(load_model(name, ckpt, plan.device, **kwargs))
    clip = VIDEO.read_bytes()
    prompt = VideoObjectPrompt(0, "1", points, labels)
    for _ in model.track(FrameReader(clip), [prompt], 0, plan.video_warmup):
        pass
    t0, ours = time.perf_counter(), []
    for frame in model.track(FrameReader(clip), [prompt], 0, plan.video_frames):
        if frame.index < plan.iou_frames:
            ours.append(frame.objects[0].mask)
    sync(plan)
    emit(video_fps=plan.video_frames / (time.perf_counter() - t0),
         iou_video=min(iou(a, b) for a, b in zip(ours, ref)), area_video=float(np.mean([r.mean() for r in ref])))


def child(plan: Plan, kind: str, name: str, ckpt: str, frames_dir: str) -> None:
    import torch
    from PIL import Image

    from sam2_serve.models.loader import load_model

    rgb = np.asarray(Image.open(IMAGE).convert("RGB"))
    if kind == "eager":
        stage("encoder", lambda: encoder_rates(plan, load_model(name, ckpt, plan.device), rgb, plan.dtypes))
        stage("click and automatic masks", click_and_amg, plan, name, ckpt, rgb)
        stage("video", video_pair, plan, name, ckpt, frames_dir, ())
    else:
        with torch.compiler.set_stance("force_eager" if plan.force_eager else "default"):
            stage("video, vos_optimized", video_pair, plan, name, ckpt, frames_dir, VOS)
            stage("encoder, compile_image_encoder", lambda: encoder_rates(
                plan, load_model(name, ckpt, plan.device, hydra_overrides=COMPILE_ENCODER), rgb, plan.dtypes[-1:]))
    # What the GPU machine must have (tests/unit/test_gpu_bench.py checks it against scripts/gpu_wheels.sh).
    emit(modules=sorted({m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names)))


# ---- the parent: budget, children, the table -----------------------------------------------------------------

def run_child(plan: Plan, smoke: bool, kind: str, name: str, frames_dir: str, timeout_s: float) -> dict:
    import subprocess

    env = {**os.environ, "TQDM_DISABLE": "1"}  # sam2's per-frame progress bars would bury the log
    cmd = [sys.executable, "-m", "bench.gpu", "--child", kind, "--model", name, "--frames-dir", frames_dir,
           "--checkpoint", str(bench_checkpoint(name))] + (["--smoke"] if smoke else [])
    note = ""
    try:
        limit = None if timeout_s == float("inf") else max(1.0, timeout_s)
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=limit, env=env)
        out = done.stdout
        if done.returncode:
            note = f"exit code {done.returncode} (traceback above)"
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        note = "stopped at the time budget"
    row: dict = {"errors": []}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            values = json.loads(line[len("RESULT "):])
            row["errors"] += values.pop("errors", [])
            row.setdefault("modules", []).extend(values.pop("modules", []))
            row.update(values)
    row["errors"] += [note] if note else []
    return row


def _num(v) -> str:
    return "—" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}")


def _amg(row: dict, mode: str) -> str:
    if f"amg_{mode}_s" not in row:
        return "—"
    return (f"{_num(row[f'amg_{mode}_s'])} / {_num(row[f'amg_{mode}_up_s'])} "
            f"({row[f'amg_{mode}_masks']}/{row[f'amg_{mode}_up_masks']})")


COLUMNS = ("model", "variant", "enc b1 fp32", "enc b8 fp32", "enc b1 bf16", "enc b8 bf16", "click ms",
           "AMG s defaults, ours / upstream (masks)", "AMG s keep-all, ours / upstream (masks)", "video FPS",
           "video FPS upstream", "IoU click / AMG / video", "notes")


def table_rows(rows: dict) -> list[tuple]:
    out = []
    for (name, kind), r in rows.items():
        enc = [_num(r.get(f"enc_b{b}_{d}")) for d in ("float32", "bfloat16") for b in (1, 8)]
        ious = " / ".join(_num(r.get(k)) for k in ("iou_click", "iou_amg", "iou_video"))
        out.append((name.replace("sam2.1-hiera-", ""), kind, *enc, _num(r.get("click_ms")), _amg(r, "defaults"),
                    _amg(r, "keepall"), _num(r.get("video_fps")), _num(r.get("video_fps_up")), ious,
                    "; ".join(r.get("errors", [])) or ""))
    return out


def machine(plan: Plan) -> str:
    import torch

    import sam2_serve
    from importlib.metadata import version

    where = (f"{torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}" if plan.device == "cuda"
             else "CPU (smoke mode: tiny sizes, compilation forced off; figures mean nothing)")
    return (f"{where}; torch {torch.__version__}, sam2 {version('sam2')}, sam2-serve {sam2_serve.__version__}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def report(plan: Plan, head: str, rows: dict) -> str:
    return "\n".join([
        f"GPU check (bench/gpu.py): {head}",
        "Seeded random checkpoints (real weights cannot be fetched there): speed does not depend on the weights'",
        "values, except automatic masks (random weights keep almost none at the default thresholds; keep-all keeps",
        "every candidate: real weights fall between). enc: images/s; video: bedroom.mp4, "
        f"{plan.video_frames} frames, {plan.video_dtype}; compiled: vos_optimized / compile_image_encoder.",
        "", table(table_rows(rows), COLUMNS)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, small sizes (CI)")
    parser.add_argument("--out", type=Path, help="write gpu.md and gpu.json there after every model size")
    parser.add_argument("--budget-s", type=float, help="stop starting work after this many seconds")
    parser.add_argument("--sizes", nargs="+", choices=SIZES, help="model sizes (default: all)")
    parser.add_argument("--compiled", nargs="*", choices=SIZES, help="sizes measured compiled (default: base-plus)")
    parser.add_argument("--child", choices=("eager", "compiled"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--frames-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    changes = {"sizes": args.sizes and tuple(args.sizes), "budget_s": args.budget_s,
               "compiled": None if args.compiled is None else tuple(args.compiled)}
    plan = dataclasses.replace(plan, **{k: v for k, v in changes.items() if v is not None})
    if args.child:
        child(plan, args.child, args.model, args.checkpoint, args.frames_dir)
        return 0
    start = time.monotonic()
    head = machine(plan)
    rows: dict = {}
    text = report(plan, head, rows)
    with tempfile.TemporaryDirectory() as tmp:
        from sam2_serve.testing import decode_frames, write_frames_dir

        frames_dir = str(write_frames_dir(decode_frames(VIDEO, plan.video_frames), Path(tmp) / "frames"))
        for kind, name in [("eager", s) for s in plan.sizes] + [("compiled", s) for s in plan.compiled]:
            left = plan.budget_s - (time.monotonic() - start)
            if left < (plan.compile_min_s if kind == "compiled" else 10.0):
                rows[(name, kind)] = {"errors": [f"skipped: {left:.0f} s of the budget left"]}
            else:
                log(f"{name}, {kind} ({left:.0f} s of the budget left)")
                rows[(name, kind)] = run_child(plan, args.smoke, kind, name, frames_dir, left)
            text = report(plan, head, rows)
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / "gpu.md").write_text(text + "\n")
                (args.out / "gpu.json").write_text(json.dumps({f"{n} {k}": r for (n, k), r in rows.items()}))
    print(text)
    log(f"done in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
