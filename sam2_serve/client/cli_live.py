"""``sam2-serve live SOURCE``: read any source PyAV (FFmpeg) opens, push its frames to ``WS /v1/live``, and write
what comes back: an overlay video and/or the answers as JSON lines.

    sam2-serve live clip.mp4 --point 0.5,0.5 -o overlay.mp4                    # a file: every frame tracked
    sam2-serve live rtsp://camera.local/stream --point 0.5,0.5 --jsonl masks.jsonl
    sam2-serve live /dev/video0 --input-format v4l2 --input-option video_size=640x480 --point 0.5,0.5 -o out.mp4

A file is sent frame by frame, each once the previous one is answered (no frame skipped: the masks of
``sam2-serve track``). A camera or a network stream (a URL, or ``--input-format``) is sent as it runs: the
service tracks the newest frame and skips those it cannot keep up with (``--wait`` / ``--no-wait`` to choose).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator, Optional

import numpy as np


def add_parser(sub, parents) -> None:
    lv = sub.add_parser("live", parents=parents, help="track objects in a camera, stream or file, frame by frame",
                        description="Reads any source FFmpeg opens (a file, an RTSP/HTTP URL, a camera), sends its "
                                    "frames to the service's live WebSocket and writes what comes back. Files: every "
                                    "frame tracked; cameras and URLs: sent as they run, frames the service cannot "
                                    "keep up with are skipped. Prompts without @ID are one object (track 1), on "
                                    "--frame.")
    lv.add_argument("source", help="a file, a URL (rtsp://, http://, ...) or a device (/dev/video0, with "
                    "--input-format)")
    lv.add_argument("--input-format", help="FFmpeg input format, e.g. v4l2 (Linux cameras), avfoundation (macOS)")
    lv.add_argument("--input-option", action="append", default=[], metavar="KEY=VALUE",
                    help="FFmpeg input option, e.g. video_size=640x480 or rtsp_transport=tcp; repeatable")
    lv.add_argument("--frame", type=int, default=0, help="the frame the prompts are on (default: the first)")
    lv.add_argument("--max-frames", type=int, default=None, help="stop after sending this many frames")
    lv.add_argument("--wait", dest="wait", action="store_true", default=None,
                    help="send each frame once the previous one is answered (default for files)")
    lv.add_argument("--no-wait", dest="wait", action="store_false",
                    help="send frames as the source runs; the service skips what it cannot keep up with "
                         "(default for cameras and URLs)")
    lv.add_argument("--frame-format", choices=("png", "jpeg"), default="png",
                    help="how frames travel: png (lossless, default) or jpeg (smaller)")
    lv.add_argument("-o", "--output", type=Path, help="overlay video (H.264 MP4) of the tracked frames")
    lv.add_argument("--jsonl", type=Path, help="the service's answers, one JSON line per tracked frame")
    lv.add_argument("--quiet", action="store_true", help="no progress line")


def _options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--input-option {pair!r}: expected KEY=VALUE")
        options[key] = value
    return options


def _is_file(args) -> bool:
    return args.input_format is None and "://" not in args.source and Path(args.source).is_file()


def read_source(source: str, input_format: Optional[str], options: dict, max_frames: Optional[int],
                sent: dict) -> Iterator[np.ndarray]:
    """RGB frames of any PyAV source, at most ``max_frames``; each is also kept in ``sent`` (index -> RGB) until
    its answer comes (for the overlay)."""
    import av

    try:
        container = av.open(source, format=input_format, options=options)
    except (av.error.FFmpegError, OSError) as exc:
        raise ValueError(f"cannot open {source!r}: {exc}") from None
    with container:
        for i, frame in enumerate(container.decode(video=0)):
            if max_frames is not None and i >= max_frames:
                return
            rgb = frame.to_ndarray(format="rgb24")
            sent[i] = rgb
            yield rgb


def run(model, args, regions) -> int:
    """The ``live`` command; ``regions``: the prompts (``--point``/``--box``), sent right after frame ``--frame``."""
    from sam2_serve.client.render import OverlayVideo

    wait = _is_file(args) if args.wait is None else args.wait
    sent: dict[int, np.ndarray] = {}
    frames = read_source(args.source, args.input_format, _options(args.input_option), args.max_frames, sent)
    fps = 30.0
    if _is_file(args):
        from sam2_serve.client.render import video_info

        fps = video_info(args.source)[1]
    out = OverlayVideo(args.output, fps) if args.output else None
    jsonl = args.jsonl.open("w") if args.jsonl else None
    tracked = skipped = 0
    shown = None  # (rgb, frame): the latest answer, drawn once the next frame's comes (a prompt may redo it)
    try:
        with model.live(frames, prompts={args.frame: regions}, wait=wait, frame_format=args.frame_format,
                        denormalize_coord=not args.pixels) as live:
            for frame in live:
                if out is not None and shown is not None and shown[1].index != frame.index:
                    out.write(*shown)
                shown = (sent.get(frame.index), frame)
                for k in [k for k in list(sent) if k < frame.index]:
                    del sent[k]
                if frame.kind == "frame":
                    tracked += 1
                    skipped += len(frame.skipped)
                if jsonl is not None:
                    jsonl.write(json.dumps(frame.raw) + "\n")
                if not args.quiet:
                    sys.stderr.write(f"\rlive: frame {frame.index}, {tracked} tracked, {skipped} skipped")
                    sys.stderr.flush()
            summary = live.close()
        if out is not None and shown is not None:
            out.write(*shown)
    finally:
        if out is not None:
            out.close()
        if jsonl is not None:
            jsonl.close()
    if not args.quiet:
        sys.stderr.write("\n")
    print(f"{summary['frames_received']} frames sent, {summary['frames_tracked']} tracked, "
          f"{summary['frames_skipped']} skipped" + (f": {args.output}" if args.output else ""))
    return 0
