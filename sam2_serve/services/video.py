"""Video as the ingress sees it: probe and validate uploads, then hand streams and session calls to the tracker.

Everything a client can get wrong about a ``generate`` request (the file, the prompts against its frames, the
limits) is checked here before the tracker starts. Sessions live on one ``VideoTracker`` replica: calls carry the
session id, which the tracker's request router follows, and the tracker checks a session's prompts itself against
the video it holds.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

import ray

from sam2_serve.common.errors import InvalidVideo, LimitExceeded, ServiceError, SessionGone
from sam2_serve.common.limits import Limits
from sam2_serve.common.schemas import GenerateRequest, SessionPromptRequest
from sam2_serve.common.types import TrackedFrame, VideoInfo
from sam2_serve.common.video_prompts import generate_prompts
from sam2_serve.common.videos import probe_video

# Session creation lands on a random replica; a full one may have a free neighbour: this many tries in all.
CREATE_TRIES = 3


class VideoService:
    """``tracker``: the ``VideoTracker`` deployment handle (None when the app has no video tracking)."""

    def __init__(self, tracker, limits: Limits):
        self.tracker, self.limits = tracker, limits

    def _handle(self, session_id: Optional[str] = None, stream: bool = False):
        if self.tracker is None:
            raise ServiceError("video tracking is not deployed in this application")
        options = {"session_id": session_id} if session_id else {}
        return self.tracker.options(stream=stream, **options) if options or stream else self.tracker

    async def probe(self, video: Any) -> tuple[VideoInfo, bytes]:
        """(what the file holds, its bytes); ``InvalidVideo``/``PayloadTooLarge``/``LimitExceeded`` otherwise."""
        if isinstance(video, (bytearray, memoryview)):
            video = bytes(video)
        if not isinstance(video, bytes):
            raise InvalidVideo(f"video must be the encoded file's bytes, not {type(video).__name__}")
        lim = self.limits
        info = await asyncio.to_thread(probe_video, video, lim.max_video_bytes, lim.max_video_frames,
                                       lim.max_video_seconds, lim.max_frame_pixels)
        return info, video

    async def generate(self, video: Any, req: GenerateRequest, with_logits: bool = False):
        """Validate everything a client can get wrong, then the tracker's frame stream (a ``DeploymentResponse``
        generator of ``TrackedFrame``s, not yet started)."""
        info, video = await self.probe(video)
        lim = self.limits
        prompts = generate_prompts(req.frames, req.list_dict_inputs, info, req.start_frame, req.max_frames,
                                   req.denormalize_coord, lim.max_video_objects, lim.max_points,
                                   lim.max_prompted_frames)
        return self._handle(stream=True).generate.remote(video, info, prompts, req.start_frame, req.max_frames,
                                                         with_logits)

    async def create_session(self, video: Any, ttl_s: Optional[float] = None) -> dict:
        """Open an interactive session; ``{"session_id", "width", "height", "num_frames", "fps", "ttl_s"}``."""
        info, video = await self.probe(video)
        ref = await asyncio.to_thread(ray.put, video)  # one copy in the object store, even if a retry is needed
        for attempt in range(CREATE_TRIES):
            try:
                return await self._handle().create_session.remote(ref, info, ttl_s)
            except LimitExceeded:
                if attempt == CREATE_TRIES - 1:
                    raise

    async def call(self, session_id: str, method: str, *args):
        """A unary session call; a replica that died under it means the session is gone (410), not a 500."""
        try:
            return await getattr(self._handle(session_id), method).remote(session_id, *args)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            raise SessionGone(f"session {session_id!r} was lost with the tracker replica that held it; "
                              "create a new session") from None

    async def add_prompts(self, session_id: str, req: SessionPromptRequest) -> TrackedFrame:
        """Prompts on one frame (checked by the tracker against the session's video); that frame's masks."""
        return await self.call(session_id, "add_prompts", req, self.limits)

    def propagate(self, session_id: str, start_frame: Optional[int] = None, max_frames: Optional[int] = None,
                  reverse: bool = False):
        """The session's tracked frames, streamed (a ``DeploymentResponse`` generator, not yet started)."""
        return self._handle(session_id, stream=True).propagate.remote(session_id, start_frame, max_frames, reverse)
