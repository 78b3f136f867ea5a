"""Live video as the ingress sees it: one connection's messages in order (latest frame wins), each served by the
tracker replica that holds the stream.

``LiveQueue`` orders what the client sent (``sam2_serve.common.live_schemas`` states the policy); ``LiveStream``
turns each item into its answer: frames are decoded here (limits checked before the pixels are) and pushed to the
tracker, control messages go to it with the stream's id, which the tracker's request router follows to the
replica holding the stream (as for sessions). The WebSocket itself is ``sam2_serve.http.live``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import ray

from sam2_serve.common.errors import LimitExceeded, PayloadTooLarge, SessionGone
from sam2_serve.common.images import decode_image, shrink_to_input
from sam2_serve.common.limits import Limits
from sam2_serve.common.live_schemas import LiveControl, LiveFrameSize, LivePrompt, LiveRemove
from sam2_serve.common.types import TrackedFrame
from sam2_serve.common.wire import encode_inline, live_frame_json
from sam2_serve.services.video import CREATE_TRIES, VideoService

POLICY = ("latest frame wins: while a frame is tracked, one more may wait; a newer one replaces it, and the next "
          "frame answered lists the replaced ones in 'skipped'. Other messages are never dropped and keep their place.")


@dataclass
class Item:
    """One thing to answer, in arrival order: a frame (``data``: its bytes), a parsed message, or an error found
    on arrival (``error``). ``skipped``: indexes of the frames this frame replaced (latest wins)."""

    kind: str  # "frame" | "message" | "error"
    index: Optional[int] = None
    data: Any = None
    received: float = 0.0  # time.monotonic() on arrival
    skipped: list[int] = field(default_factory=list)
    error: Optional[Exception] = None
    id: Any = None


class LiveQueue:
    """A connection's items in arrival order, except that a frame still waiting is replaced by a newer frame
    arriving right after it (latest wins). At most ``max_waiting`` items wait (``put`` refuses more)."""

    def __init__(self, max_waiting: int = 64):
        self.max_waiting = max_waiting
        self._items: deque[Item] = deque()
        self._arrived = asyncio.Event()
        self.frames_received = 0
        self.frames_skipped = 0

    def put_frame(self, data: bytes) -> Optional[int]:
        """Queue frame bytes; returns the index of the frame it replaced, if any."""
        index, replaced = self.frames_received, None
        self.frames_received += 1
        skipped: list[int] = []
        if self._items and self._items[-1].kind == "frame":
            old = self._items.pop()
            skipped, replaced = old.skipped + [old.index], old.index
            self.frames_skipped += 1
        self._push(Item("frame", index, data, time.monotonic(), skipped))
        return replaced

    def put(self, item: Item) -> bool:
        """Queue a message or an error; False when ``max_waiting`` items already wait (the client sends faster
        than it reads its answers)."""
        if len(self._items) >= self.max_waiting:
            return False
        self._push(item)
        return True

    def new_frame_index(self) -> int:
        """An index for a frame refused on arrival (it counts as received, is never tracked)."""
        self.frames_received += 1
        return self.frames_received - 1

    def _push(self, item: Item) -> None:
        self._items.append(item)
        self._arrived.set()

    def __len__(self) -> int:
        return len(self._items)

    async def get(self) -> Item:
        while not self._items:
            self._arrived.clear()
            await self._arrived.wait()
        return self._items.popleft()


class LiveStream:
    """One live stream held by a tracker replica: ``open``, then ``answer`` each item (a JSON-ready dict), then
    ``close``. ``mask_format``: ``png`` | ``rle`` for the masks of every answer."""

    def __init__(self, video: VideoService, limits: Limits, mask_format: str = "png",
                 timeout_s: Optional[float] = None):
        self.video, self.limits, self.mask_format, self.timeout_s = video, limits, mask_format, timeout_s
        self.live_id: Optional[str] = None
        self.image_size: Optional[int] = None  # the tracker model's input size S (frames go to it as S x S)
        self.started: Optional[float] = None  # arrival of the first frame
        self.frames_tracked = 0
        self.frame_size: Optional[tuple[int, int]] = None  # (W, H) declared by ``frame_size``
        self._carry: list[int] = []  # skipped frames not yet reported (their reporting frame failed)

    async def open(self) -> dict:
        """Hold a stream on some tracker replica (another one when it is full); ``{"live_id", "ttl_s"}``."""
        for attempt in range(CREATE_TRIES):
            try:
                opened = await self._call(None, "live_open")
                self.live_id, self.image_size = opened["live_id"], opened.get("image_size")
                return opened
            except LimitExceeded:
                if attempt == CREATE_TRIES - 1:
                    raise

    async def _call(self, live_id: Optional[str], method: str, *args):
        """A tracker call routed to the stream's replica; the replica lost under it means the stream is gone."""
        try:
            call = getattr(self.video._handle(live_id), method).remote(*((live_id,) if live_id else ()), *args)
            return await asyncio.wait_for(call, self.timeout_s)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            raise SessionGone("the tracker replica holding this live stream was lost; open a new connection "
                              "(its objects must be prompted again)") from None

    async def answer(self, item: Item) -> dict:
        """The answer to one item; raises a ``ServiceError`` (or a Ray error) when it cannot be served."""
        if item.kind == "error":
            raise item.error
        if item.kind == "frame":
            return await self._frame(item)
        msg = item.data
        if isinstance(msg, LivePrompt):
            frame = await self._call(self.live_id, "live_prompt", msg, self.limits)
            return await self._json(frame, "prompt", [], msg.id)
        if isinstance(msg, LiveRemove):
            ids = await self._call(self.live_id, "live_remove", msg.track_id)
            return {"type": "removed", "id": msg.id, "track_id": msg.track_id, "track_ids": ids}
        if isinstance(msg, LiveFrameSize):
            pixels = msg.width * msg.height
            if pixels > self.limits.max_frame_pixels:
                raise PayloadTooLarge(f"frames of {msg.width}x{msg.height} = {pixels} pixels; the limit is "
                                      f"{self.limits.max_frame_pixels} pixels")
            self.frame_size = (msg.width, msg.height)
            return {"type": "frame_size", "id": msg.id, "width": msg.width, "height": msg.height}
        if isinstance(msg, LiveControl) and msg.type == "reset":
            await self._call(self.live_id, "live_reset")
            return {"type": "reset", "id": msg.id}
        raise TypeError(f"no answer for {msg!r}")  # auth and close are the connection's

    async def _frame(self, item: Item) -> dict:
        skipped, self._carry = self._carry + item.skipped, []
        try:
            rgb, size = await asyncio.to_thread(self._pixels, item.data)
            if self.started is None:
                self.started = item.received
            frame = await self._call(self.live_id, "live_frame", rgb, item.index, item.received - self.started, size)
        except BaseException:
            self._carry = skipped
            raise
        self.frames_tracked += 1
        return await self._json(frame, "frame", skipped)

    async def _json(self, frame: TrackedFrame, kind: str, skipped: list[int], message_id=None) -> dict:
        """``live_frame_json``, on the event loop when the masks are small (``encode_inline``; ~0.5 ms a 960x540
        mask, RLE or PNG)."""
        if encode_inline(frame.width * frame.height * len(frame.objects)):
            return live_frame_json(frame, self.mask_format, kind, skipped, message_id)
        return await asyncio.to_thread(live_frame_json, frame, self.mask_format, kind, skipped, message_id)

    def _pixels(self, data: bytes) -> tuple[np.ndarray, Optional[tuple[int, int]]]:
        """A frame's pixels for the tracker, and the frame's (W, H) when they were resized: a frame larger than the
        model's input is resized here as the tracker would (``shrink_to_input``), so that 196 kB instead of 1.5 MB
        (960x540 at 256) go to the tracker, and the resize is done while the tracker finishes the previous frame; a
        frame at the input size after ``frame_size`` was resized so by the client."""
        rgb = decode_image(data, self.limits.max_image_bytes, self.limits.max_frame_pixels)
        side = self.image_size
        if side is None:
            return rgb, None
        if self.frame_size is not None and rgb.shape[:2] == (side, side):
            return rgb, self.frame_size
        return shrink_to_input(rgb, side)

    def closed(self, msg: Optional[LiveControl], queue: LiveQueue) -> dict:
        return {"type": "closed", "id": msg.id if msg else None, "frames_received": queue.frames_received,
                "frames_tracked": self.frames_tracked, "frames_skipped": queue.frames_skipped}

    async def close(self) -> None:
        """Release the tracker's state (best effort: an unreachable replica drops it when its TTL ends)."""
        if self.live_id is not None:
            live_id, self.live_id = self.live_id, None
            try:
                await self._call(live_id, "live_close")
            except Exception:  # noqa: BLE001 -- nothing to tell a client that is gone
                pass
