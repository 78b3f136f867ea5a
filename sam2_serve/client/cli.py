"""``sam2-serve``: the command line of the client.

    sam2-serve predict photo.jpg --point 0.5,0.5 --point 0.2,0.3,0 -o mask.png
    sam2-serve segment-anything photo.jpg -o masks/
    sam2-serve track clip.mp4 --point 0.5,0.5 -o overlay.mp4
    sam2-serve live /dev/video0 --input-format v4l2 --point 0.5,0.5 -o overlay.mp4   # or a file, an RTSP URL
    sam2-serve serve serve_config.yaml     # runs the service (needs the server extra: sam2-serve[server])

Coordinates are fractions of the width (x) and height (y) unless ``--pixels``. ``--url`` (default
``$SAM2_SERVE_URL`` or http://127.0.0.1:8000) and ``--api-key`` (default ``$SAM2_SERVE_API_KEY``) pick the service.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from sam2_serve.client import cli_live
from sam2_serve.client.model import Model
from sam2_serve.client.errors import Sam2ServeError
from sam2_serve.client.types import Concept, Region

DEFAULT_URL = "http://127.0.0.1:8000"
SAM2_IMPORT_PATH = "sam2_serve.deployments.app:build_app"


def _numbers(text: str, n: Sequence[int], what: str) -> tuple[list[float], Optional[str]]:
    """'x,y[,label][@track]' -> ([numbers], track or None)."""
    body, _, track = text.partition("@")
    try:
        values = [float(v) for v in body.split(",")]
    except ValueError:
        values = []
    if len(values) not in n:
        raise argparse.ArgumentTypeError(f"{what} {text!r}: expected {' or '.join(map(str, n))} comma-separated "
                                         "numbers, optionally followed by @TRACK_ID")
    return values, (track or None)


def point_arg(text: str) -> Region:
    """``x,y[,label][@track]``: label 1 (default) is a positive click, 0 a negative one."""
    values, track = _numbers(text, (2, 3), "--point")
    label = values[2] if len(values) == 3 else 1.0
    if label not in (0.0, 1.0):
        raise argparse.ArgumentTypeError(f"--point {text!r}: the label is 1 (positive) or 0 (negative)")
    return Region(point=values[:2] + [0.0], concepts=[Concept(name=str(int(label)), value=label)], track_id=track)


def box_arg(text: str) -> Region:
    """``x0,y0,x1,y1[@track]``."""
    values, track = _numbers(text, (4,), "--box")
    return Region(box=values, track_id=track)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("SAM2_SERVE_URL", DEFAULT_URL),
                        help="the service (default $SAM2_SERVE_URL or %(default)s)")
    common.add_argument("--api-key", default=None, help="API key (default $SAM2_SERVE_API_KEY)")
    common.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for an answer")

    prompts = argparse.ArgumentParser(add_help=False)
    prompts.add_argument("--point", type=point_arg, action="append", default=[], metavar="X,Y[,LABEL][@ID]",
                         help="a click (label 1: positive, default; 0: negative); repeatable")
    prompts.add_argument("--box", type=box_arg, action="append", default=[], metavar="X0,Y0,X1,Y1[@ID]",
                         help="a box; repeatable")
    prompts.add_argument("--pixels", action="store_true", help="coordinates are pixels, not fractions of W/H")

    p = argparse.ArgumentParser(prog="sam2-serve", description="Client of a sam2-serve (SAM 2.1) service.")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("predict", parents=[common, prompts], help="masks from clicks and boxes",
                        description="Prompts without @ID are one object (several boxes alone: one object each). "
                                    "Writes one PNG per mask (255 inside) and prints their scores as JSON.")
    sp.add_argument("image", type=Path)
    sp.add_argument("-o", "--output", type=Path, default=Path("mask.png"),
                    help="mask PNG; with several masks: NAME_0.png, NAME_1.png, ...")
    sp.add_argument("--multimask", action="store_true", help="three masks per object (SAM 2's order)")
    sp.add_argument("--overlay", type=Path, help="also write the image with the masks drawn over it")

    sa = sub.add_parser("segment-anything", parents=[common], help="every object in an image",
                        description="Writes DIR/mask_000.png, ... (highest score first), DIR/overlay.png and "
                                    "DIR/regions.json (score, stability_score, area, box of each mask).")
    sa.add_argument("image", type=Path)
    sa.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    sa.add_argument("--points-per-side", type=int)
    sa.add_argument("--pred-iou-thresh", type=float)
    sa.add_argument("--stability-score-thresh", type=float)
    sa.add_argument("--box-nms-thresh", type=float)
    sa.add_argument("--crop-n-layers", type=int)
    sa.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="any other SAM2AutomaticMaskGenerator argument (VALUE as JSON); repeatable")

    tr = sub.add_parser("track", parents=[common, prompts], help="track objects through a video",
                        description="Prompts without @ID are one object (track 1). Renders the tracked masks over "
                                    "the video (H.264 MP4) while the frames stream in.")
    tr.add_argument("video", type=Path)
    tr.add_argument("-o", "--output", type=Path, default=Path("overlay.mp4"))
    tr.add_argument("--frame", type=int, default=None, help="the prompted frame (default: --start-frame)")
    tr.add_argument("--start-frame", type=int, default=0)
    tr.add_argument("--max-frames", type=int, default=None)
    tr.add_argument("--quiet", action="store_true", help="no progress bar")

    cli_live.add_parser(sub, [common, prompts])

    sv = sub.add_parser("serve", help="run the service from a Serve config (needs sam2-serve[server])",
                        description="Validates CONFIG, resolves the checkpoint of every sam2 application in it "
                                    "(downloading it from the Hugging Face Hub when it is not cached, with a "
                                    "progress bar), checks that it loads as that model's weights, then hands over "
                                    "to `serve run CONFIG`. Any problem before that: a message and exit code 1.")
    sv.add_argument("config", nargs="?", type=Path, default=Path("serve_config.yaml"),
                    help="Serve config file (default: %(default)s)")
    sv.add_argument("serve_args", nargs=argparse.REMAINDER, metavar="...",
                    help="more arguments for `serve run` (e.g. --address auto)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    try:
        with Model(args.url, api_key=args.api_key, timeout=args.timeout) as model:
            if args.command == "live":
                return cli_live.run(model, args, _tracked_regions(args))
            return {"predict": _predict, "segment-anything": _segment_anything, "track": _track}[args.command](
                model, args)
    except Sam2ServeError as exc:
        print(f"sam2-serve: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"sam2-serve: error: {exc}", file=sys.stderr)
        return 1


def _need_prompts(args) -> list[Region]:
    regions = args.point + args.box
    if not regions:
        raise ValueError("give at least one --point or --box")
    return regions


def _numbered(path: Path, i: int, n: int) -> Path:
    return path if n == 1 else path.with_name(f"{path.stem}_{i}{path.suffix or '.png'}")


def _predict(model: Model, args) -> int:
    from sam2_serve.client.render import overlay, save_mask

    regions = model.predict(image=args.image, regions=_need_prompts(args), multimask_output=args.multimask,
                            denormalize_coord=not args.pixels)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    summary = []
    for i, region in enumerate(regions):
        path = _numbered(args.output, i, len(regions))
        save_mask(region.mask, path)
        summary.append({"mask": str(path), "score": region.score, "box": region.box, "track_id": region.track_id})
    if args.overlay:
        _save_overlay(args.image, [r.mask for r in regions], args.overlay, overlay)
    print(json.dumps(summary, indent=1))
    return 0


def _segment_anything(model: Model, args) -> int:
    from sam2_serve.client.render import overlay, save_mask

    params = {k: getattr(args, k) for k in ("points_per_side", "pred_iou_thresh", "stability_score_thresh",
                                            "box_nms_thresh", "crop_n_layers") if getattr(args, k) is not None}
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--param {item!r}: expected NAME=VALUE")
        try:
            params[name.strip()] = json.loads(value)
        except ValueError:
            params[name.strip()] = value
    regions = model.segment_anything(image=args.image, **params)
    args.output.mkdir(parents=True, exist_ok=True)
    summary = []
    for i, region in enumerate(regions):
        name = f"mask_{i:03d}.png"
        save_mask(region.mask, args.output / name)
        summary.append({"mask": name, "score": region.score, "stability_score": region.stability_score,
                        "area": region.area, "box": region.box, "point": region.point and list(region.point[:2])})
    (args.output / "regions.json").write_text(json.dumps(summary, indent=1))
    _save_overlay(args.image, [r.mask for r in regions], args.output / "overlay.png", overlay)
    print(f"{len(regions)} masks in {args.output}/ (overlay.png, regions.json)")
    return 0


def _save_overlay(image_path: Path, masks, out: Path, overlay) -> None:
    from PIL import Image as PILImage, ImageOps

    # The service applies EXIF orientation (masks are in the orientation one sees); so does the overlay.
    rgb = ImageOps.exif_transpose(PILImage.open(image_path)).convert("RGB")
    import numpy as np

    PILImage.fromarray(overlay(np.asarray(rgb), masks)).save(out)


def _tracked_regions(args) -> list[Region]:
    """The prompts of ``track`` and ``live``: those without @ID are object 1."""
    regions = _need_prompts(args)
    for region in regions:
        region.track_id = region.track_id or "1"
    return regions


def _track(model: Model, args) -> int:
    from sam2_serve.client.render import video_info, write_overlay_video

    regions = _tracked_regions(args)
    prompt_frame = args.frame if args.frame is not None else args.start_frame
    total, fps = video_info(args.video)
    if total is not None:
        total = max(0, total - args.start_frame)
        if args.max_frames is not None:
            total = min(total, args.max_frames)
    progress = _Progress(total, enabled=not args.quiet)
    frames = model.generate(video=args.video, frames=[{"index": prompt_frame,
                                                       "regions": [r.to_prompt(video=True) for r in regions]}],
                            start_frame=args.start_frame, max_frames=args.max_frames,
                            denormalize_coord=not args.pixels)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with frames:
        n = write_overlay_video(args.video, frames, args.output, fps=fps, on_frame=progress.update)
    progress.done()
    if n == 0:
        raise ValueError("the service returned no frames (is --start-frame past the end of the video?)")
    print(f"{n} frames tracked: {args.output}")
    return 0


class _Unready(Exception):
    """Why ``sam2-serve serve`` will not start the service."""


def _serve(args) -> int:
    """Check CONFIG and every sam2 application's checkpoint here, then ``exec`` Ray's ``serve run CONFIG``."""
    try:
        serve_bin = _preflight(args.config)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 -- whatever it is, nothing has started: say why and stop
        message = str(exc) if isinstance(exc, _Unready) else f"{type(exc).__name__}: {exc}"
        print(f"sam2-serve: error: {message}", file=sys.stderr)
        return 1
    command = [str(serve_bin), "run", str(args.config), *args.serve_args]
    from sam2_serve.deployments.ray_internals import QUIET_IDLE_ENV

    # Ray processes started by `serve run` inherit this environment; a value the user set wins.
    quiet = {k: os.environ.setdefault(k, v) for k, v in QUIET_IDLE_ENV.items()}
    print(f"sam2-serve: starting: {' '.join(command)} (Serve intervals: "
          f"{' '.join(f'{k}={v}' for k, v in quiet.items())})", file=sys.stderr, flush=True)
    sys.stdout.flush()
    try:
        os.execvp(command[0], command)  # replaces this process: Ctrl-C and signals reach `serve run` itself
    except OSError as exc:
        print(f"sam2-serve: error: could not start {command[0]}: {exc}", file=sys.stderr)
    return 1


def _preflight(config: Path) -> Path:
    """Validate ``config``; resolve (download) and check each sam2 application's checkpoint; return ``serve``."""
    if not config.is_file():
        raise _Unready(f"no Serve config at {config}")
    missing = [m for m in ("torch", "sam2", "ray") if importlib.util.find_spec(m) is None]
    if missing:
        raise _Unready(f"`sam2-serve serve` runs the server, which needs {', '.join(missing)}: "
                       "pip install 'sam2-serve[server]' (torch first, see the README)")
    import yaml
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from sam2_serve.common.errors import ModelUnavailable
    from sam2_serve.deployments.app import AppArgs, resolve_app_checkpoint
    from sam2_serve.models.loader import check_checkpoint
    from sam2_serve.models.registry import get_spec

    try:
        schema = ServeDeploySchema.model_validate(yaml.safe_load(config.read_text()))
    except (yaml.YAMLError, ValidationError) as exc:
        raise _Unready(f"{config} is not a valid Serve config: {exc}") from None
    apps = [app for app in schema.applications if app.import_path == SAM2_IMPORT_PATH]
    if not apps:
        found = ", ".join(app.import_path for app in schema.applications) or "none"
        raise _Unready(f"{config} has no application with import_path {SAM2_IMPORT_PATH} (found: {found})")
    for app in apps:
        try:
            a = AppArgs.model_validate(app.args or {})
        except ValidationError as exc:
            raise _Unready(f"{config}: application {app.name!r} has invalid args: {exc}") from None
        print(f"sam2-serve: application {app.name!r}: {a.model}: finding the checkpoint", file=sys.stderr,
              flush=True)
        try:
            path, sha256 = resolve_app_checkpoint(a)
            check_checkpoint(get_spec(a.model), path)
        except ModelUnavailable as exc:
            raise _Unready(str(exc)) from None
        print(f"sam2-serve: application {app.name!r}: {path} (sha256 {sha256}) holds {a.model}'s weights",
              file=sys.stderr, flush=True)
    serve_bin = Path(sys.executable).with_name("serve")
    if not serve_bin.is_file():
        raise _Unready(f"no `serve` command next to {sys.executable}: is ray[serve] installed in this environment?")
    return serve_bin


class _Progress:
    """A one-line progress bar on stderr (frames done / expected, frames per second)."""

    def __init__(self, total: Optional[int], enabled: bool = True, width: int = 30):
        self.total, self.enabled, self.width = total, enabled and sys.stderr is not None, width
        self.start = time.monotonic()

    def update(self, n: int) -> None:
        if not self.enabled:
            return
        rate = n / max(time.monotonic() - self.start, 1e-9)
        if self.total:
            filled = int(self.width * min(n, self.total) / self.total)
            bar = f"[{'#' * filled}{'.' * (self.width - filled)}] {n}/{self.total}"
        else:
            bar = f"{n}"
        sys.stderr.write(f"\rtracking {bar} frames, {rate:.1f} frames/s")
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


if __name__ == "__main__":
    sys.exit(main())
