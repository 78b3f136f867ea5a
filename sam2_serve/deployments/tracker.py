"""VideoTracker: stateful video tracking. Streams ``generate`` frames and holds interactive sessions.

Each stream and each session owns its own tracking state; the model weights are shared and hold none, so
concurrent streams take turns frame by frame on the replica's torch thread, with no lock held across a stream.
A session's calls are serialized by that session's own lock.

Sessions live on the replica that created them. Their ids carry that replica's id, and ``SessionRouter`` (set as
this deployment's request router in ``sam2_serve.deployments.app``) sends every call with ``session_id`` to that replica, so
replicas can be added or replaced without remapping live sessions. A session whose replica is gone therefore
reaches another replica, which answers 410 (gone) because the id names a replica other than itself; an expired
session answers 410 too; an id that never existed answers 404.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import AsyncIterator, List, Optional, Sequence

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from sam2_serve.common.errors import InvalidRequest, LimitExceeded, NotFound, SessionGone, SessionNotFound
from sam2_serve.common.limits import Limits
from sam2_serve.common.live_schemas import LivePrompt
from sam2_serve.common.schemas import SessionPromptRequest
from sam2_serve.common.types import TrackedFrame, VideoInfo, VideoObjectPrompt
from sam2_serve.common.video_prompts import check_limits, regions_to_prompts
from sam2_serve.common.videos import FrameReader
from sam2_serve.deployments.metrics import TrackerMetrics
from sam2_serve.deployments.ray_internals import replica_tag, replica_tag_of, session_id_of
from sam2_serve.deployments.replica import TorchThread, load_for_replica

logger = logging.getLogger("ray.serve")

_SEP = "."


def session_owner(session_id: str) -> Optional[str]:
    """The replica id a session id was minted by (``<replica>.<token>``), or None for a malformed id."""
    owner, sep, token = session_id.rpartition(_SEP)
    return owner if sep and owner and token else None


class SessionRouter(FIFOMixin, RequestRouter):
    """Power of two choices (two random replicas; Serve's router takes the one with the shorter queue), except
    that a request with a session id goes to the replica that minted it.

    If that replica is not among the running ones (it died or was scaled down), the request goes to any replica,
    which answers ``SessionGone``: never another session's state, never a silent re-creation.
    """

    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> List[List[RunningReplica]]:
        session_id = session_id_of(pending_request)
        owner = session_owner(session_id) if session_id else None
        if owner is not None:
            for replica in candidate_replicas:
                if replica_tag_of(replica) == owner:
                    return [[replica]]
        return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]


@dataclass
class _Session:
    session: object  # sam2_serve.models.video.VideoSession
    info: VideoInfo
    last_used: float
    ttl_s: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class _Live:
    """A live stream: ``track`` (``sam2_serve.models.live.LiveTrack``) is made by the first frame."""

    last_used: float
    track: Optional[object] = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _next(iterator):
    return next(iterator, None)


class VideoTracker:
    """Video tracking replica: ``generate`` streams, sessions (TTL, per-replica cap)."""

    def __init__(self, model: str, checkpoint: str | None = None, device: str = "auto", dtype: str = "float32",
                 torch_threads: int | None = None, hydra_overrides: Sequence[str] = (),
                 session_ttl_s: float = 600.0, max_sessions: int = 8, checkpoint_sha256: str | None = None,
                 stuck_after_s: float | None = None, max_live_streams: int = 8,
                 session_keep_frames: int | None = None, encoder_backend: str = "auto"):
        from sam2_serve.models.fast_encoder import load_fast_encoder
        from sam2_serve.models.video import VideoModel

        self.torch = TorchThread()
        self.stuck_after_s = stuck_after_s
        loaded = self.torch.call(load_for_replica, model, checkpoint, device, dtype, torch_threads, video=True,
                                 hydra_overrides=list(hydra_overrides), expected_sha256=checkpoint_sha256)
        # Each frame's backbone pass as the ImageEncoder's (an entry of its own where the input size differs).
        encoder = self.torch.call(load_fast_encoder, loaded, encoder_backend)
        logger.info("VideoTracker: frame backbone on %s: %s", encoder.backend, encoder.reason)
        self.model = VideoModel(loaded, encoder)
        self.session_ttl_s = float(session_ttl_s)
        self.max_sessions = int(max_sessions)
        self.session_keep_frames = session_keep_frames  # sessions on longer videos keep bounded state
        self.tag = replica_tag() or "local" + secrets.token_hex(4)  # "local...": built without Ray
        self._sessions: dict[str, _Session] = {}
        self._gone: OrderedDict[str, str] = OrderedDict()  # recently ended session id -> why
        self.metrics = TrackerMetrics()
        self.max_live_streams = int(max_live_streams)
        self._live: dict[str, _Live] = {}  # live streams (WS /v1/live), by id
        self._background: set[asyncio.Task] = set()  # held until done (the loop keeps only weak references)

    # ---- generate ---------------------------------------------------------------------------------------------

    async def _stream(self, iterator, on_close) -> AsyncIterator[TrackedFrame]:
        """Drive a blocking frame iterator one step per torch-thread job; stop at once when the caller goes away.

        On cancellation (client disconnected) the frame in flight finishes in its thread and nothing further is
        computed; resources are released after that step, never under it.
        """
        m = self.metrics
        m.streams_started.inc()
        m.streams.set(m.streams.value + 1)
        step = m.frame.timed(_next, counts=lambda frame: frame is not None)  # the stream's end is no frame
        pending = None
        try:
            while True:
                pending = self.torch.submit(step, iterator, priority=TorchThread.BULK)
                frame = await asyncio.shield(pending)
                pending = None
                if frame is None:
                    return
                m.frames.inc()
                yield frame
        except (GeneratorExit, asyncio.CancelledError):  # the caller went away before the last frame
            m.streams_cancelled.inc()
            raise
        finally:
            m.streams.set(m.streams.value - 1)
            if pending is not None and not pending.done():
                pending.add_done_callback(lambda _: on_close())
            else:
                on_close()

    async def generate(self, video: bytes, info: VideoInfo, prompts: Sequence[VideoObjectPrompt],
                       start_frame: int = 0, max_frames: Optional[int] = None,
                       with_logits: bool = False) -> AsyncIterator[TrackedFrame]:
        """Stream ``TrackedFrame``s for frames ``start_frame ..`` (prompts validated by the caller, in pixels)."""
        reader = FrameReader(video, info)
        stream = self.model.track(reader, prompts, start_frame, max_frames, with_logits)
        frames = self._stream(stream, stream.close)
        try:
            async for frame in frames:
                yield frame
        finally:
            await frames.aclose()  # not left to the garbage collector: release the stream now

    # ---- sessions ---------------------------------------------------------------------------------------------

    def _expire(self) -> None:
        now = time.monotonic()
        for sid, s in list(self._sessions.items()):
            if not s.lock.locked() and now - s.last_used > s.ttl_s:
                self._end(sid, f"expired after {s.ttl_s:g} s without requests")
        for live_id, s in list(self._live.items()):
            if not s.lock.locked() and now - s.last_used > self.session_ttl_s:
                self._end_live(live_id, f"expired after {self.session_ttl_s:g} s without messages")

    def _end(self, session_id: str, why: str) -> None:
        s = self._sessions.pop(session_id, None)
        if s is not None:
            s.session.close()
            self.metrics.sessions.set(len(self._sessions))
        self._forget(session_id, why)

    def _forget(self, session_id: str, why: str) -> None:
        self._gone[session_id] = why
        while len(self._gone) > 10_000:
            self._gone.popitem(last=False)

    def _get(self, session_id: str) -> _Session:
        self._expire()
        s = self._sessions.get(session_id)
        if s is not None:
            return s
        if session_id in self._gone:
            raise SessionGone(f"session {session_id!r} {self._gone[session_id]}; create a new session")
        owner = session_owner(session_id)
        if owner is not None and owner != self.tag:
            raise SessionGone(f"session {session_id!r} was lost: the tracker replica that held it is gone "
                              "(restarted or scaled down); create a new session")
        raise SessionNotFound(f"no session {session_id!r}; create one with POST /v1/sessions")

    async def create_session(self, video: bytes, info: VideoInfo, ttl_s: Optional[float] = None) -> dict:
        """Open a session (no frame decoded yet); ``ttl_s`` may shorten this replica's idle TTL."""
        self._expire()
        if len(self._sessions) >= self.max_sessions:
            raise LimitExceeded(f"this tracker replica already holds {self.max_sessions} sessions, its limit; "
                                "DELETE sessions you no longer use or retry when idle ones expire "
                                f"({self.session_ttl_s:.0f} s)")
        session_id = f"{self.tag}{_SEP}{secrets.token_urlsafe(12)}"
        session = self.model.open_session(FrameReader(video, info), self.session_keep_frames)
        now = time.monotonic()
        ttl = min(ttl_s or self.session_ttl_s, self.session_ttl_s)
        self._sessions[session_id] = _Session(session, info, now, ttl)
        self.metrics.sessions.set(len(self._sessions))
        return {"session_id": session_id, "width": info.width, "height": info.height,
                "num_frames": info.num_frames, "fps": info.fps, "ttl_s": ttl}

    async def _in_thread(self, fn, *args):
        """Run a session step on the torch thread; if the caller is cancelled, the step still completes before the
        session's lock is released, so the next call never runs beside it."""
        fut = self.torch.submit(fn, *args)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            await asyncio.wait([fut])
            raise

    async def add_prompts(self, session_id: str, req: SessionPromptRequest, limits: Limits) -> TrackedFrame:
        """Each object's prompts on frame ``req.index``, checked against this session's video and ``limits``;
        that frame's masks for every object of the session."""
        s = self._get(session_id)
        async with s.lock:
            prompts = regions_to_prompts(req.index, req.regions, s.info, req.denormalize_coord, req.clear_old_points,
                                         set(s.session.track_ids))
            check_limits(prompts, limits.max_video_objects, limits.max_points, limits.max_prompted_frames,
                         existing_ids=s.session.track_ids)
            for p in prompts:  # all or none: a prompt that needs dropped state (long videos) applies none
                s.session.check_prompt(p)
            try:
                result = None
                for p in prompts:
                    result = await self._in_thread(s.session.add_prompt, p)
                return result
            finally:
                s.last_used = time.monotonic()

    async def propagate(self, session_id: str, start_frame: Optional[int] = None, max_frames: Optional[int] = None,
                        reverse: bool = False) -> AsyncIterator[TrackedFrame]:
        s = self._get(session_id)
        if not s.session.track_ids:
            raise InvalidRequest("the session has no objects yet; add prompts (POST .../prompts) first")
        if start_frame is not None and start_frame >= s.info.num_frames:
            raise InvalidRequest(f"start_frame {start_frame} is past the end of the video "
                                 f"(frames 0..{s.info.num_frames - 1})")
        await s.lock.acquire()

        def release():  # after the last step has finished, even when the caller went away mid-step
            s.last_used = time.monotonic()
            if s.lock.locked():
                s.lock.release()

        steps = s.session.propagate(start_frame, max_frames, reverse)
        frames = self._stream(steps, lambda: (steps.close(), release()))
        try:
            async for frame in frames:
                yield frame
        finally:
            await frames.aclose()

    async def remove_object(self, session_id: str, track_id: str) -> dict:
        s = self._get(session_id)
        async with s.lock:
            if track_id not in s.session.track_ids:
                raise NotFound(f"track_id {track_id!r} is not in session {session_id!r}; its objects are "
                               f"{s.session.track_ids}")
            await self._in_thread(s.session.remove_object, track_id)
            s.last_used = time.monotonic()
            return {"session_id": session_id, "track_ids": s.session.track_ids}

    async def delete_session(self, session_id: str) -> dict:
        s = self._get(session_id)
        async with s.lock:
            self._end(session_id, "was deleted")
        return {"session_id": session_id, "deleted": True}

    async def session_info(self, session_id: str) -> dict:
        s = self._get(session_id)
        return {"session_id": session_id, "width": s.info.width, "height": s.info.height,
                "num_frames": s.info.num_frames, "fps": s.info.fps, "ttl_s": s.ttl_s,
                "track_ids": s.session.track_ids}

    # ---- live streams (WS /v1/live): frames pushed one by one; the ingress calls with the stream's id ----------

    async def live_open(self) -> dict:
        """Hold a new live stream on this replica (its tracking state is made with the first frame)."""
        self._expire()
        if len(self._live) >= self.max_live_streams:
            raise LimitExceeded(f"this tracker replica already tracks {self.max_live_streams} live streams, its "
                                "limit; retry later or close streams you no longer use")
        live_id = f"{self.tag}{_SEP}{secrets.token_urlsafe(12)}"
        self._live[live_id] = _Live(time.monotonic())
        self.metrics.live_streams.set(len(self._live))
        return {"live_id": live_id, "ttl_s": self.session_ttl_s, "image_size": self.model.image_size}

    def _end_live(self, live_id: str, why: str) -> None:
        s = self._live.pop(live_id, None)
        if s is not None and s.track is not None:
            s.track.close()
        self.metrics.live_streams.set(len(self._live))
        self._forget(live_id, why)

    async def _live_step(self, live_id: str, fn, *args):
        """Run ``fn(stream, *args)`` on the torch thread, one step of a stream at a time."""
        self._expire()
        s = self._live.get(live_id)
        if s is None:
            why = self._gone.get(live_id, "is unknown here: the tracker replica that held it is gone")
            raise SessionGone(f"live stream {why}; open a new connection")
        async with s.lock:
            try:
                return await self._in_thread(fn, s, *args)
            finally:
                s.last_used = time.monotonic()

    async def live_frame(self, live_id: str, rgb, index: int, time_s: float,
                         size: Optional[tuple[int, int]] = None) -> TrackedFrame:
        """Track the stream's objects on its next frame, RGB uint8 (H, W, 3), or resized to the model's input size
        (``image_size`` of ``live_open``) with ``size`` = the frame's (W, H) (``LiveTrack.push``); ``index``/``time_s``
        label it."""
        def step(s: _Live):
            if s.track is None:
                s.track = self.model.live(*(size or (rgb.shape[1], rgb.shape[0])))
            return s.track.push(rgb, index, time_s, size)

        frame = await self._live_step(live_id, self.metrics.frame.timed(step))
        self.metrics.frames.inc()
        self._finish_later(live_id)
        return frame

    def _finish_later(self, live_id: str) -> None:
        """Run the memory encoder's pass on the frame just tracked (``LiveTrack.finish``) while its answer travels
        back and the client sends the next frame, instead of before the answer; the next step waits for it (the
        stream's lock), and would run it itself if this had not."""
        async def finish():
            try:
                await self._live_step(live_id, lambda s: s.track.finish() if s.track is not None else None)
            except SessionGone:
                pass  # closed meanwhile: nothing left to finish
            except Exception:  # noqa: BLE001 -- the next step runs it again and answers its error to the client
                logger.exception("live %s: the memory encoder pass after a frame failed", live_id)

        task = asyncio.get_running_loop().create_task(finish())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def live_prompt(self, live_id: str, req: LivePrompt, limits: Limits) -> TrackedFrame:
        """Prompts on the stream's latest frame, checked against it and ``limits``; its masks for every object."""
        def step(s: _Live):
            track = s.track
            if track is None or track.current is None:
                raise InvalidRequest("no frame yet: prompts apply to the latest frame; send a frame first")
            if req.index is not None and req.index != track.index:
                raise InvalidRequest(f"the prompt is for frame {req.index}, but the latest frame is {track.index}: "
                                     "prompts apply to the latest frame (send the prompt right after its frame)")
            info = VideoInfo(track.width, track.height, track.current + 1, 0.0, 0.0, "live", "", ())
            prompts = regions_to_prompts(track.current, req.regions, info, req.denormalize_coord,
                                         req.clear_old_points, set(track.track_ids))
            check_limits(prompts, limits.max_video_objects, limits.max_points, limits.max_prompted_frames,
                         existing_ids=track.track_ids)
            return track.add(prompts)

        return await self._live_step(live_id, step)

    async def live_remove(self, live_id: str, track_id: str) -> list[str]:
        """Stop tracking ``track_id``; the ids still tracked."""
        def step(s: _Live):
            ids = s.track.track_ids if s.track is not None else []
            if track_id not in ids:
                raise NotFound(f"track_id {track_id!r} is not in this live stream; its objects are {ids}")
            s.track.remove(track_id)
            return s.track.track_ids

        return await self._live_step(live_id, step)

    async def live_reset(self, live_id: str) -> None:
        """Forget the stream's objects and memory; the next frame starts afresh (at any size)."""
        def step(s: _Live):
            if s.track is not None:
                s.track.close()
            s.track = None

        await self._live_step(live_id, step)

    async def live_close(self, live_id: str) -> None:
        s = self._live.get(live_id)
        if s is not None:
            async with s.lock:
                self._end_live(live_id, "was closed")

    async def live_stats(self, live_id: str) -> dict:
        """What the stream holds (``LiveTrack.stats``), for tests and monitoring."""
        return await self._live_step(live_id, lambda s: s.track.stats() if s.track is not None else {})

    def check_health(self) -> None:
        """Serve's periodic health check: fails when the torch thread is dead or stuck (``TorchThread``). Also
        ends expired sessions, so that they free their memory on time, and re-reports the gauges."""
        self.torch.check_health(self.stuck_after_s)
        self._expire()
        self.metrics.refresh()

    def stats(self) -> dict:
        """Counters for tests and benchmarks (the exported metrics' values); ``frame_steps`` / ``frame_step_s``: the
        frames stepped and the seconds of model work in them (``sam2_tracker_frame_seconds``' count and sum)."""
        self._expire()
        m = self.metrics
        return {"replica": self.tag, "sessions": len(self._sessions), "streams_active": m.streams.value,
                "streams_started": m.streams_started.value, "frames_tracked": m.frames.value,
                "streams_cancelled": m.streams_cancelled.value, "session_ids": list(self._sessions),
                "live_streams": len(self._live), "encoder_backend": self.model.encoder.backend,
                "frame_steps": m.frame.count, "frame_step_s": m.frame.sum}
