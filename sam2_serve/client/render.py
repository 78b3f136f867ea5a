"""Drawing masks: colour overlays of images (numpy + PIL) and of videos (PyAV, imported only when needed)."""

from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image as PILImage

# Well separated colours (RGB), then golden-ratio hues for more objects.
_BASE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48), (145, 30, 180),
         (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def color(i: int) -> tuple[int, int, int]:
    """The colour of object ``i`` (stable across frames, so a track keeps its colour)."""
    if i < len(_BASE):
        return _BASE[i]
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def overlay(rgb: np.ndarray, masks: Sequence[np.ndarray], colors: Optional[Sequence[tuple[int, int, int]]] = None,
            alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 (H, W, 3) with each bool (H, W) mask blended in its colour (later masks on top) and its outline
    drawn opaque. Returns a new array."""
    out = np.asarray(rgb, dtype=np.float32)[..., :3].copy()
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != out.shape[:2]:
            raise ValueError(f"mask {i} is {mask.shape}, the image {out.shape[:2]}")
        c = np.asarray(colors[i] if colors is not None else color(i), dtype=np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * c
        out[_outline(mask)] = c
    return out.round().clip(0, 255).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside it."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def save_mask(mask: np.ndarray, path: Union[str, os.PathLike]) -> None:
    """A bool mask as an 8-bit greyscale PNG, 255 inside, 0 outside."""
    PILImage.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L").save(path)


def read_frames(path: Union[str, os.PathLike]) -> Iterator[np.ndarray]:
    """RGB uint8 frames of a video, in the order the service numbers them (decode order, from 0)."""
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def video_info(path: Union[str, os.PathLike]) -> tuple[Optional[int], float]:
    """(frame count or None when the container does not say, frames per second) of a video file."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or 30
        return (int(stream.frames) or None), float(rate)


class OverlayVideo:
    """An H.264 MP4 written one frame at a time: each RGB frame with a frame's masks drawn over it, one colour per
    ``track_id`` for the whole video. Use as a context manager (``close`` finishes the file)."""

    def __init__(self, out_path: Union[str, os.PathLike], fps: float):
        import av

        self._av, self.fps = av, fps
        self._out = av.open(str(out_path), mode="w", format="mp4")
        self._stream = None
        self.palette: dict[str, int] = {}
        self.written = 0

    def write(self, rgb: np.ndarray, frame) -> None:
        """``rgb`` (H, W, 3) with the masks of ``frame`` (a ``sam2_serve.Frame``) drawn over it."""
        masks, colors = [], []
        for region in frame.regions:
            if region.mask is None:
                continue
            masks.append(region.mask)
            colors.append(color(self.palette.setdefault(region.track_id or str(len(self.palette)),
                                                        len(self.palette))))
        rgb = overlay(rgb, masks, colors)
        if self._stream is None:
            stream = self._stream = self._out.add_stream("libx264", rate=_rate(self.fps))
            # yuv420p (what players expect) needs even sizes: drop an odd last row/column.
            stream.height, stream.width = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18"}  # visually lossless: thin outlines and saturated fills stay sharp
        rgb = np.ascontiguousarray(rgb[:self._stream.height, :self._stream.width])
        for packet in self._stream.encode(self._av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            self._out.mux(packet)
        self.written += 1

    def close(self) -> None:
        try:
            if self._stream is not None:
                for packet in self._stream.encode():
                    self._out.mux(packet)
        finally:
            self._out.close()

    def __enter__(self) -> "OverlayVideo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_overlay_video(video_path: Union[str, os.PathLike], frames: Iterable, out_path: Union[str, os.PathLike],
                        fps: Optional[float] = None, on_frame: Optional[Callable[[int], None]] = None) -> int:
    """Render tracked ``frames`` (``sam2_serve.Frame``, in increasing ``index``) over the video's own frames and
    write an H.264 MP4 with one output frame per tracked frame. Objects keep one colour per ``track_id``.

    Frames are decoded and encoded as the stream arrives, so memory stays at a few frames. ``on_frame(n)`` is
    called after each written frame. Returns the number of frames written.
    """
    source = enumerate(read_frames(video_path))
    if fps is None:
        fps = video_info(video_path)[1]
    with OverlayVideo(out_path, fps) as out:
        for frame in frames:
            for i, rgb in source:
                if i == frame.index:
                    break
            else:
                raise ValueError(f"the video has no frame {frame.index}")
            out.write(rgb, frame)
            if on_frame is not None:
                on_frame(out.written)
    return out.written


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)
