"""``Model.live``: live tracking over the service's WebSocket (``WS /v1/live``), with the ``websockets`` library.

    with model.live(frames, prompts={0: [Region(point=[0.5, 0.5], track_id="a")]}) as live:
        for frame in live:              # one LiveFrame per tracked frame (and per prompt answered), in order
            frame.index, frame.skipped, frame.regions[0].mask

Frames are images (numpy RGB arrays, PIL images, ``Image``, encoded bytes or paths), sent as binary messages and
numbered by the service 0, 1, 2, ... in the order sent. ``wait=True`` sends a frame once the previous one is
answered: none is skipped, and the masks are those ``generate`` gives on the same frames. ``wait=False`` sends
frames as the source yields them (a camera): the service tracks the newest and reports the others in ``skipped``.
Prompts, removals and resets apply to the latest frame the service has taken, in the order sent.

Frames larger than the tracker's input (``input_size`` of the service's ``ready`` message) are resized here to it,
exactly as the service would (``shrink_to_input``), after a ``frame_size`` message: the masks are the same and a
960x540 frame at input size 256 travels as 89 kB instead of 400 kB (``resize=False`` sends them as they are).
"""

from __future__ import annotations

import io
import json
import threading
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np
from PIL import Image as PILImage

from sam2_serve.client.errors import (AuthenticationError, ClientError, ConnectionFailed, RequestTimeout,
                                      Sam2ServeError, ServerError, ServiceUnavailable, StreamError)
from sam2_serve.client.types import Frame, Region, as_image_bytes, as_regions
from sam2_serve.common.images import shrink_to_input
from sam2_serve.common.png import png_bytes

# Error codes that are the service's trouble, not the request's (the HTTP API answers them 5xx).
_SERVER_CODES = {"internal_error": ServerError, "overloaded": ServiceUnavailable,
                 "replica_unavailable": ServiceUnavailable, "model_unavailable": ServiceUnavailable,
                 "request_timeout": RequestTimeout, "session_gone": StreamError}


class LiveFrame(Frame):
    """A frame's masks from a live stream: ``kind`` ``"frame"`` (a frame sent) or ``"prompt"`` (the answer to a
    prompt: the latest frame again, with it applied); ``skipped``: frames the service dropped before this one;
    ``id``: the prompt's id; ``raw``: the message as received."""

    kind: str = "frame"
    skipped: list[int] = []
    id: Any = None
    raw: Optional[dict] = None

    @classmethod
    def from_json(cls, data: dict) -> "LiveFrame":
        frame = cls(regions=[Region.from_json(r) for r in data.get("regions", [])], time=data.get("time"),
                    index=data["index"])
        frame.kind, frame.skipped = data["type"], list(data.get("skipped", []))
        frame.id, frame.raw = data.get("id"), data
        return frame


def encode_frame(image: Any, frame_format: str = "png") -> bytes:
    """A frame as ``LiveStream.send`` sends it: pixels (a numpy array, a PIL image) encoded as ``frame_format``
    (``png``: lossless, every row Up-filtered, ``sam2_serve.common.png``: 3 ms for a 960x540 frame where Pillow takes
    24-29 ms, and half of Pillow's decoding time on the service; ``jpeg``: quality 90); encoded images (bytes, a
    path, ``Image``) as they are."""
    if not isinstance(image, (np.ndarray, PILImage.Image)):
        return as_image_bytes(image)
    if frame_format == "png" and isinstance(image, np.ndarray) and image.dtype == np.uint8 and (
            image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        return png_bytes(image, "up")  # RGB or greyscale pixels as they are: no copy through PIL
    pil = image if isinstance(image, PILImage.Image) else PILImage.fromarray(np.asarray(image))
    if frame_format == "png" and pil.mode in ("RGB", "L"):
        return png_bytes(np.asarray(pil), "up")
    buf = io.BytesIO()  # other modes (alpha, 16-bit, ...) as Pillow writes them: the service converts them
    pil.save(buf, format=frame_format.upper(), **({"quality": 90} if frame_format == "jpeg" else {"compress_level": 1}))
    return buf.getvalue()


def prepare_frame(image: Any, frame_format: str = "png",
                  input_size: Optional[int] = None) -> tuple[bytes, Optional[tuple[int, int]]]:
    """(bytes, size) of a frame as ``LiveStream.send`` sends it: an RGB frame (a uint8 (H, W, 3) array or an RGB PIL
    image) with more pixels than ``input_size`` x ``input_size`` resized to that square first, as the service
    would (``shrink_to_input``: sam2's frame loader's resize), and ``size`` = its own (W, H) to declare in a
    ``frame_size`` message; anything else as ``encode_frame`` sends it, with size None. Resizing a 960x540 frame to
    256 and encoding it costs the client what encoding it whole does (4-6 ms)."""
    if input_size and (isinstance(image, np.ndarray) or (isinstance(image, PILImage.Image) and image.mode == "RGB")):
        rgb = np.asarray(image)
        if rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3:
            pixels, size = shrink_to_input(rgb, input_size)  # the service's own rule and resize
            return encode_frame(pixels, frame_format), size  # pixels: rgb itself when not resized
    return encode_frame(image, frame_format), None


def _error(data: dict) -> Exception:
    err = data.get("error") or {}
    code = err.get("code")
    cls = AuthenticationError if code == "unauthorized" else _SERVER_CODES.get(code, ClientError)
    return cls(err.get("message", "the live stream failed"), code=code, request_id=err.get("request_id"))


class LiveStream:
    """One live stream (a WebSocket). Iterate it for ``LiveFrame``s; ``send``, ``prompt``, ``remove``, ``reset``
    talk to it; ``close`` ends it (``summary``: frames received, tracked, skipped). An error answer raises from the
    iteration (``ClientError`` with the service's message, ...) and the stream goes on: iterate again."""

    def __init__(self, url: str, api_key: Optional[str] = None, frames: Optional[Iterable[Any]] = None,
                 prompts: Optional[Mapping[int, Any]] = None, wait: bool = True, frame_format: str = "png",
                 mask_format: str = "rle", timeout: float = 300.0, connect_timeout: float = 10.0,
                 user_agent: Optional[str] = None, denormalize_coord: bool = True, resize: bool = True):
        from websockets.exceptions import InvalidHandshake, InvalidURI
        from websockets.sync.client import connect

        if frame_format not in ("png", "jpeg"):
            raise ValueError(f"frame_format is 'png' (lossless) or 'jpeg', not {frame_format!r}")
        scheme, sep, rest = url.partition("://")
        ws_url = f"{'wss' if scheme == 'https' else 'ws'}://{rest}/v1/live?mask_format={mask_format}"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        try:
            # compression=None: frames are PNG or JPEG already; permessage-deflate (the library's default) spent
            # 15 ms deflating each 440 kB 960x540 PNG for nothing, on a path where every millisecond is latency.
            self._ws = connect(ws_url, additional_headers=headers, max_size=None, open_timeout=connect_timeout,
                               user_agent_header=user_agent, compression=None)
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            raise ConnectionFailed(f"could not open {ws_url}: {exc}") from exc
        self.timeout, self.frame_format, self.wait = timeout, frame_format, wait
        self.prompts = {int(k): v for k, v in (prompts or {}).items()}
        self.denormalize_coord = denormalize_coord
        self.sent = 0  # frames sent: the next frame's index
        self.track_ids: list[str] = []
        self.summary: Optional[dict] = None
        self._source: Optional[Iterator[Any]] = iter(frames) if frames is not None else None
        self._pending = 0  # messages sent and not yet answered (wait=True counts them)
        self._closing = False
        self._sender_error: Optional[BaseException] = None
        ready = self._recv()
        if ready.get("type") != "ready":
            self._ws.close()
            raise _error(ready) if ready.get("type") == "error" else ConnectionFailed(f"unexpected {ready}")
        self.stream_id, self.limits, self.policy = ready["stream_id"], ready["limits"], ready["policy"]
        # the tracker's input size: frames larger than it are resized here (``prepare_frame``); None: sent whole
        self.input_size: Optional[int] = ready.get("input_size") if resize else None
        self.frame_size: Optional[tuple[int, int]] = None  # the (W, H) declared to the service
        if self._source is not None and not wait:
            threading.Thread(target=self._feed, name="sam2-serve-live", daemon=True).start()

    # ---- sending ------------------------------------------------------------------------------------------

    def send(self, image: Any) -> int:
        """Send one frame; returns the index the service gives it."""
        data, size = prepare_frame(image, self.frame_format, self.input_size)
        if size is not None and size != self.frame_size:
            self._send_json({"type": "frame_size", "width": size[0], "height": size[1]})
            self.frame_size = size
        index = self.sent
        self._send(data)
        self.sent += 1
        if index in self.prompts:  # right after its frame, so it applies to that frame
            self.prompt(self.prompts.pop(index), index=index, denormalize_coord=self.denormalize_coord)
        return index

    def prompt(self, regions: Any, index: Optional[int] = None, clear_old_points: bool = True,
               denormalize_coord: bool = True, id: Any = None) -> None:
        """Points, boxes or masks on the latest frame (``index``: the frame meant, refused if it is no longer the
        latest); a new ``track_id`` starts an object, a known one is corrected. Answered by a ``prompt`` frame."""
        self._send_json({"type": "prompt", "id": id, "index": index, "regions": as_regions(regions, video=True),
                         "clear_old_points": clear_old_points, "denormalize_coord": denormalize_coord})

    def remove(self, track_id: str) -> None:
        self._send_json({"type": "remove", "track_id": str(track_id)})

    def reset(self) -> None:
        """Forget every object and all memory (the next frame may have another size)."""
        self._send_json({"type": "reset"})

    def _send_json(self, message: dict) -> None:
        self._send(json.dumps({k: v for k, v in message.items() if v is not None}))

    def _send(self, message) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            self._ws.send(message)
        except ConnectionClosed as exc:
            raise ConnectionFailed(f"the live stream is closed ({exc})") from exc
        self._pending += 1

    def _feed(self) -> None:
        """wait=False: send the source's frames as it yields them, then close."""
        try:
            for image in self._source:
                if self._closing:
                    return
                self.send(image)
        except BaseException as exc:  # handed to the reader
            self._sender_error = exc
        finally:
            self._request_close()

    def _request_close(self) -> None:
        if not self._closing:
            self._closing = True
            try:
                self._send_json({"type": "close"})
            except ConnectionFailed:
                pass

    # ---- receiving ----------------------------------------------------------------------------------------

    def _recv(self) -> dict:
        from websockets.exceptions import ConnectionClosed

        try:
            text = self._ws.recv(timeout=self.timeout)
        except TimeoutError as exc:
            raise RequestTimeout(f"no answer within {self.timeout} s (Model(timeout=...))") from exc
        except ConnectionClosed as exc:
            raise ConnectionFailed(f"the live stream was closed ({exc})") from exc
        return json.loads(text)

    def __iter__(self) -> "LiveStream":
        return self

    def __next__(self) -> LiveFrame:
        while True:
            if self.summary is not None:
                raise StopIteration
            if self._source is not None and self.wait and self._pending == 0:
                image = next(self._source, _END)
                if image is _END:
                    self._request_close()
                else:
                    self.send(image)
            data = self._recv()
            self._pending = max(0, self._pending - 1)
            kind = data.get("type")
            if kind in ("frame", "prompt"):
                frame = LiveFrame.from_json(data)
                self._pending = max(0, self._pending - len(frame.skipped))
                self.track_ids = [r.track_id for r in frame.regions]
                return frame
            if kind == "removed":
                self.track_ids = data["track_ids"]
            elif kind == "reset":
                self.track_ids = []
            elif kind == "closed":
                self.summary = data
                self._ws.close()
                if self._sender_error is not None:
                    raise self._sender_error
            elif kind == "error":
                raise _error(data)

    def close(self) -> Optional[dict]:
        """End the stream: answers still on their way are read and dropped; returns ``summary``."""
        self._source = None
        try:
            self._request_close()
        except ConnectionFailed:
            pass
        while self.summary is None:
            try:
                for _ in self:
                    pass
            except (ConnectionFailed, RequestTimeout):
                break
            except Sam2ServeError:  # an answer to an earlier message
                continue
        self._ws.close()
        return self.summary

    def __enter__(self) -> "LiveStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_END = object()
