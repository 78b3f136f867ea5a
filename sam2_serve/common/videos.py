"""Decode user videos with PyAV (FFmpeg): probe, check limits, and read frames by index, lazily.

Nothing is decoded up front: ``probe_video`` demuxes the packets once (no decoding, ~15 ms for 200 frames) to
learn the frame count and each frame's timestamp, and decodes only the first frame to prove the stream is
readable. ``FrameReader`` then decodes frames as they are asked for: sequential reads continue the decoder,
a jump seeks to the nearest keyframe before the target. Frame ``i`` is the ``i``-th frame in presentation order
(what ``decord``/FFmpeg return when upstream sam2 reads an MP4).

Any container and codec FFmpeg reads works (MP4/H.264, WebM/VP9, MKV, ...). Rotation metadata (portrait phone
videos) is applied, so masks come back in the orientation the user sees, as for EXIF-rotated images.
"""

from __future__ import annotations

import bisect
import io
import logging
from fractions import Fraction
from typing import Optional

import numpy as np

from sam2_serve.common.errors import InvalidVideo, LimitExceeded, PayloadTooLarge
from sam2_serve.common.types import VideoInfo

logger = logging.getLogger(__name__)

DEFAULT_MAX_VIDEO_BYTES = 512 * 1024 * 1024
DEFAULT_MAX_VIDEO_FRAMES = 20_000
DEFAULT_MAX_VIDEO_SECONDS = 15 * 60.0
DEFAULT_MAX_FRAME_PIXELS = 4096 * 2304

# FFmpeg demuxers that read still images; a JPEG "video" is an image sent to the wrong endpoint.
_IMAGE_FORMATS = {"image2", "image2pipe", "mjpeg", "ico", "tiff_pipe"}
# Gaps shorter than this are decoded through rather than sought over (a seek costs a keyframe decode).
_SEEK_GAP = 16


def _open(data: bytes):
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.error.FFmpegError as exc:
        raise InvalidVideo("the bytes are not a video FFmpeg can read (MP4, WebM, MKV, MOV, AVI, ...); "
                           f"is the file complete? ({exc.strerror or type(exc).__name__})") from None
    return container


def _is_image_container(container) -> bool:
    names = set(container.format.name.split(","))
    return bool(names & _IMAGE_FORMATS) or any(n.endswith("_pipe") for n in names)


def probe_video(data: bytes, max_bytes: int = DEFAULT_MAX_VIDEO_BYTES, max_frames: int = DEFAULT_MAX_VIDEO_FRAMES,
                max_seconds: float = DEFAULT_MAX_VIDEO_SECONDS,
                max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS) -> VideoInfo:
    """Check an encoded video against the limits and index its frames, decoding only the first one.

    Raises ``InvalidVideo`` (400) for anything that is not a readable video, ``PayloadTooLarge`` (413) over the
    byte, pixel and duration limits and ``LimitExceeded`` (422) over the frame limit.
    """
    import av

    if not data:
        raise InvalidVideo("the video is empty (0 bytes); send the file's contents")
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the video is {len(data)} bytes; the limit is {max_bytes} bytes")
    container = _open(data)
    try:
        if _is_image_container(container):
            raise InvalidVideo(f"this is a still image ({container.format.name}), not a video; "
                               "use /v1/predict for images")
        if not container.streams.video:
            raise InvalidVideo("the file has no video stream (audio only?)")
        stream = container.streams.video[0]
        pts: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None:
                    pts.append(packet.pts)
                    if len(pts) > max_frames:
                        raise LimitExceeded(f"the video has more than {max_frames} frames; the limit is "
                                            f"{max_frames} (send a shorter clip or a lower frame rate)")
        except av.error.FFmpegError as exc:
            raise InvalidVideo(f"the video could not be read to the end; is the file truncated? ({exc.strerror})") from None
        if not pts:
            raise InvalidVideo("the video has no frames; is the file truncated?")
        pts.sort()
        time_base = stream.time_base or Fraction(1, 1)
        times = tuple(float((p - pts[0]) * time_base) for p in pts)
        rate = stream.average_rate
        fps = float(rate) if rate else (len(pts) - 1) / times[-1] if times[-1] > 0 else 0.0
        duration = times[-1] + (1.0 / fps if fps > 0 else 0.0)
        if duration > max_seconds:
            raise PayloadTooLarge(f"the video lasts {duration:.1f} s; the limit is {max_seconds:.0f} s")
        container.seek(0)
        first = None
        try:
            for frame in container.decode(stream):
                first = frame
                break
        except av.error.FFmpegError as exc:
            raise InvalidVideo(f"the first frame could not be decoded ({exc.strerror}); is the file complete?") from None
        if first is None:
            raise InvalidVideo("no frame could be decoded; is the file truncated or the codec unsupported?")
        w, h = first.width, first.height
        if _rotation(first) % 180:
            w, h = h, w
        if w * h > max_frame_pixels:
            raise PayloadTooLarge(f"frames are {w}x{h} = {w * h} pixels; the limit is {max_frame_pixels} pixels")
        return VideoInfo(width=w, height=h, num_frames=len(pts), fps=fps, duration_s=duration,
                         container=container.format.name, codec=stream.codec_context.name, times_s=times)
    finally:
        container.close()


def _rotation(frame) -> int:
    try:
        return int(getattr(frame, "rotation", 0) or 0)
    except Exception:
        return 0


def frame_to_rgb(frame) -> np.ndarray:
    """A decoded ``av.VideoFrame`` -> RGB uint8 (H, W, 3) as displayed (rotation metadata applied)."""
    rgb = frame.to_ndarray(format="rgb24")
    rot = _rotation(frame) % 360
    if rot:
        # FFmpeg's display matrix angle is counter-clockwise; np.rot90 with k>0 rotates counter-clockwise.
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rot // 90))
    return rgb


class FrameReader:
    """Random access to a video's frames by index; each call decodes as little as it can.

    Not thread-safe: one reader serves one stream or session at a time. ``frames_decoded`` counts decoder
    outputs (including frames decoded through to reach a seek target).
    """

    def __init__(self, data: bytes, info: Optional[VideoInfo] = None):
        self.info = info or probe_video(data)
        self._data = data
        self._container = None
        self._iter = None
        self._next = 0  # index of the frame the running decoder yields next
        self._pts: Optional[list[int]] = None
        self.frames_decoded = 0

    def __len__(self) -> int:
        return self.info.num_frames

    def _restart(self, target_pts: Optional[int] = None) -> None:
        self.close()
        self._container = _open(self._data)
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        if target_pts is not None:
            self._container.seek(target_pts, stream=stream, backward=True, any_frame=False)
        self._iter = self._container.decode(stream)

    def _index_pts(self) -> list[int]:
        if self._pts is None:
            container = _open(self._data)
            try:
                stream = container.streams.video[0]
                self._pts = sorted(p.pts for p in container.demux(stream) if p.size and p.pts is not None)
            finally:
                container.close()
        return self._pts

    def _decode_next(self, index: int):
        import av

        try:
            frame = next(self._iter)
        except StopIteration:
            raise InvalidVideo(f"frame {index} could not be decoded: the stream ended after "
                               f"{self.frames_decoded} frames; is the file truncated?") from None
        except av.error.FFmpegError as exc:
            raise InvalidVideo(f"frame {index} could not be decoded ({exc.strerror}); is the file corrupt?") from None
        self.frames_decoded += 1
        return frame

    def get(self, index: int) -> np.ndarray:
        """Frame ``index`` (0-based, presentation order) as RGB uint8 (H, W, 3)."""
        if not 0 <= index < self.info.num_frames:
            raise InvalidVideo(f"frame {index} is outside the video (frames 0..{self.info.num_frames - 1})")
        if self._iter is None or index < self._next or index > self._next + _SEEK_GAP:
            if index == 0 or self._iter is None and index <= _SEEK_GAP:
                self._restart()
                self._next = 0
            else:
                pts = self._index_pts()
                self._restart(pts[index])
                self._next = None  # unknown until the first decoded frame's pts says where we landed
        while True:
            frame = self._decode_next(index)
            if self._next is None:
                pts = self._index_pts()
                if frame.pts is None:
                    raise InvalidVideo("the video has frames without timestamps and cannot be read out of order")
                # The landing frame: the keyframe at or before the target.
                self._next = bisect.bisect_left(pts, frame.pts)
            current = self._next
            self._next += 1
            if current == index:
                return frame_to_rgb(frame)
            if current > index:
                raise InvalidVideo(f"frame {index} could not be located in the stream")

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = None
        self._iter = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def encode_video(frames, path_or_buffer, fps: int = 30, codec: str = "libx264", container: str = "mp4",
                 pix_fmt: str = "yuv420p", options: Optional[dict] = None) -> None:
    """Write RGB uint8 frames (each H x W x 3) as a video; used by tests and benchmarks to make clips."""
    import av

    out = av.open(path_or_buffer, mode="w", format=container)
    try:
        stream = None
        for rgb in frames:
            if stream is None:
                stream = out.add_stream(codec, rate=fps)
                stream.width, stream.height = rgb.shape[1], rgb.shape[0]
                stream.pix_fmt = pix_fmt
                if options:
                    stream.options = options
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                out.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                out.mux(packet)
    finally:
        out.close()


def b64decode_video(data: str, what: str = "video.base64") -> bytes:
    """Strict base64 for videos (data URLs and the URL-safe alphabet accepted), ``InvalidVideo`` otherwise."""
    from sam2_serve.common.errors import InvalidImage
    from sam2_serve.common.images import b64decode

    try:
        return b64decode(data, what)
    except InvalidImage as exc:
        raise InvalidVideo(exc.message) from None
