"""``Model``: the HTTP client of a sam2-serve service, with the hosted SAM 2 model's SDK calls.

    from sam2_serve import Model, Image, Region, Concept
    model = Model("http://127.0.0.1:8000")                     # api_key=... or $SAM2_SERVE_API_KEY
    regions = model.predict(image=Image.from_file("photo.jpg"), regions=[Region(point=[0.5, 0.5, 0.0])])
    regions[0].mask                                            # bool numpy (H, W)

Needs only ``requests``, ``numpy`` and ``pillow``. Images and videos are uploaded as multipart files (no base64
overhead). A 503 (backpressure, a replica being replaced: the request was not run) is retried after the server's
``Retry-After`` with capped exponential back-off; a 4xx raises ``ClientError`` with the server's message at once.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import time
from typing import Any, Iterable, Iterator, Optional, Union

import requests

from sam2_serve.client.errors import (AuthenticationError, ClientError, ConnectionFailed, RequestTimeout,
                                      Sam2ServeError, ServerError, ServiceUnavailable, StreamError)
from sam2_serve.client.live import LiveStream
from sam2_serve.client.types import Frame, Region, as_image_bytes, as_regions, as_video_bytes

__version__ = "0.1.0"

# Masks are asked for as COCO RLE, not PNG: SAM 2's masks are smooth blobs, for which RLE is ~4x smaller than
# base64 PNG and ~4-10x cheaper for the server to encode (measured on an 1800x1200 mask: 2 kB / 2.6 ms vs
# 7.8 kB / 11.6 ms); the client decodes it with numpy alone (types.decode_rle), only when ``region.mask`` is read.
MASK_FORMAT = "rle"


class Regions(list):
    """The regions of an image answer (a list, as the SDK returns), plus ``image_id`` (reuse it in a later call to
    skip sending and encoding the image again), ``width`` and ``height`` in pixels."""

    def __init__(self, regions: list[Region], image_id: Optional[str] = None, width: int = 0, height: int = 0):
        super().__init__(regions)
        self.image_id, self.width, self.height = image_id, width, height


class Session(dict):
    """An interactive video session: ``session_id``, ``width``, ``height``, ``num_frames``, ``fps``, ``ttl_s``
    (a dict with attribute access; pass it, or its ``session_id``, to the session calls)."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class FrameStream:
    """Frames as the server streams them (NDJSON, one frame per line). Iterate it; closing it (or leaving a
    ``with`` block, or breaking out of a loop and dropping it) closes the connection, which stops the server's work.
    """

    def __init__(self, response: requests.Response):
        self._response = response
        self._frames = self._read()

    def _read(self) -> Iterator[Frame]:
        try:
            for line in self._response.iter_lines():
                if not line:
                    continue
                try:
                    data = json.loads(line)
                except ValueError:
                    raise ServerError(f"the stream sent a line that is not JSON: {line[:200]!r}") from None
                if "error" in data:
                    err = data["error"] if isinstance(data["error"], dict) else {"message": str(data["error"])}
                    raise StreamError(err.get("message", "the stream failed"), code=err.get("code"),
                                      request_id=err.get("request_id"), retry_after_s=data.get("retry_after_s"))
                yield Frame.from_json(data)
        except requests.exceptions.ChunkedEncodingError as exc:
            raise ConnectionFailed(f"the stream was cut off: {exc}") from exc
        except requests.exceptions.Timeout as exc:
            raise RequestTimeout(f"no frame arrived within the client's timeout: {exc}") from exc
        finally:
            self._response.close()

    def __iter__(self) -> "FrameStream":
        return self

    def __next__(self) -> Frame:
        return next(self._frames)

    def close(self) -> None:
        self._frames.close()
        self._response.close()

    def __enter__(self) -> "FrameStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self._response.close()
        except Exception:
            pass


class Model:
    """A sam2-serve service at ``url``.

    ``api_key``: sent as ``Authorization: Bearer`` (default ``$SAM2_SERVE_API_KEY``). ``timeout``: seconds to wait
    for an answer (for streams: between two frames). ``max_retries``: retries of a 503, each after the server's
    ``Retry-After`` or ``backoff_s * 2**attempt`` (whichever is longer; the latter capped at ``max_backoff_s``).
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: Optional[str] = None, timeout: float = 300.0,
                 max_retries: int = 5, backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 connect_timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("SAM2_SERVE_API_KEY") or None
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self._http = requests.Session()
        self._http.headers["User-Agent"] = f"sam2-serve-client/{__version__}"
        if self.api_key:
            self._http.headers["Authorization"] = f"Bearer {self.api_key}"

    # ---- images ----------------------------------------------------------------------------------------------

    def predict(self, image: Any = None, regions: Any = None, dict_inputs: Optional[dict] = None,
                multimask_output: bool = False, denormalize_coord: bool = True,
                image_id: Optional[str] = None) -> Regions:
        """Masks from point and box prompts: one region per object (three with ``multimask_output``).

        ``image``: an ``Image``, PIL image, numpy RGB array, encoded bytes or a path; or ``image_id`` of an image
        sent before. ``regions``: ``Region`` prompts (or their dicts); ``dict_inputs``: ``{"points", "labels",
        "box"}`` like ``SAM2ImagePredictor.predict``. Each result has ``mask`` (bool (H, W)), ``score``, ``box``.
        """
        options = {"regions": as_regions(regions), "dict_inputs": dict_inputs, "multimask_output": multimask_output,
                   "denormalize_coord": denormalize_coord, "mask_format": MASK_FORMAT}
        return self._image_call("/v1/predict", image, image_id, _drop_none(options))

    def segment_anything(self, image: Any = None, image_id: Optional[str] = None, **params: Any) -> Regions:
        """Every object in the image (``SAM2AutomaticMaskGenerator``); ``params`` are its arguments
        (``points_per_side``, ``pred_iou_thresh``, ...). Regions come sorted by score, highest first, each with
        ``mask``, ``score``, ``stability_score``, ``area`` (pixels), ``box`` and the grid ``point``."""
        return self._image_call("/v1/segment_anything", image, image_id, {"mask_format": MASK_FORMAT, **params})

    def embed(self, image: Any) -> dict:
        """Encode only: ``{"image_id", "width", "height"}``; later calls with ``image_id=`` cost a decoder pass."""
        return self._request("POST", "/v1/embed", files={"image": ("image", as_image_bytes(image))}).json()

    def models(self) -> list[dict]:
        """The served model: name, checkpoint sha256, device, dtype, input size."""
        return self._request("GET", "/v1/models").json()

    def health(self) -> bool:
        try:
            return self._request("GET", "/healthz", retry=False).status_code == 200
        except Sam2ServeError:
            return False

    def _image_call(self, path: str, image: Any, image_id: Optional[str], options: dict) -> Regions:
        if (image is None) == (image_id is None):
            raise ValueError("give exactly one of image or image_id")
        if image is None:
            r = self._request("POST", path, json={"image": {"image_id": image_id}, **options})
        else:
            r = self._request("POST", path, files={"image": ("image", as_image_bytes(image))},
                              data={"options": json.dumps(options)})
        body = r.json()
        return Regions([Region.from_json(g) for g in body["regions"]], body.get("image_id"), body.get("width", 0),
                       body.get("height", 0))

    # ---- video -----------------------------------------------------------------------------------------------

    def generate(self, video: Any, frames: Optional[list[Any]] = None, list_dict_inputs: Optional[list[dict]] = None,
                 start_frame: int = 0, max_frames: Optional[int] = None,
                 denormalize_coord: bool = True) -> FrameStream:
        """Track prompted objects through ``video`` (a ``Video``, bytes or a path); frames are yielded as the
        server streams them, from ``start_frame`` on (at most ``max_frames``).

        ``frames``: ``Frame`` objects (their ``index`` and prompt ``regions``; regions sharing a ``track_id`` are
        one object, a region without one starts a new object) or their dicts. ``list_dict_inputs``:
        ``SAM2VideoPredictor.add_new_points_or_box`` arguments (``points``, ``labels``, ``box``, ``obj_id``,
        ``frame_idx``). Each yielded ``Frame`` has ``index``, ``time`` and ``regions`` (``mask``, ``track_id``,
        ``box``, ``score``: the object score logit, > 0 when the object is seen). Errors in the request raise here,
        before the first frame.
        """
        options = _drop_none({"frames": _frames(frames), "list_dict_inputs": list_dict_inputs,
                              "start_frame": start_frame, "max_frames": max_frames,
                              "denormalize_coord": denormalize_coord, "mask_format": MASK_FORMAT})
        return self._stream("/v1/generate", files={"video": ("video", as_video_bytes(video))},
                            data={"options": json.dumps(options)})

    def create_session(self, video: Any, ttl_s: Optional[float] = None) -> Session:
        """Open an interactive session on ``video``: the frames are decoded once, then prompts and propagation
        reuse them. Delete it when done (it expires after ``ttl_s`` idle seconds otherwise)."""
        data = {"options": json.dumps({"ttl_s": ttl_s})} if ttl_s is not None else None
        r = self._request("POST", "/v1/sessions", files={"video": ("video", as_video_bytes(video))}, data=data,
                          idempotent=False)
        return Session(r.json())

    def session_info(self, session_id: Union[str, Session]) -> dict:
        return self._request("GET", f"/v1/sessions/{_sid(session_id)}").json()

    def add_prompts(self, session_id: Union[str, Session], index: int, regions: Any,
                    clear_old_points: bool = True, denormalize_coord: bool = True) -> Frame:
        """Prompts on frame ``index``; returns that frame's masks for every object of the session."""
        body = {"index": index, "regions": as_regions(regions, video=True), "clear_old_points": clear_old_points,
                "denormalize_coord": denormalize_coord, "mask_format": MASK_FORMAT}
        return Frame.from_json(self._request("POST", f"/v1/sessions/{_sid(session_id)}/prompts", json=body,
                                             idempotent=False).json())

    def propagate(self, session_id: Union[str, Session], start_frame: Optional[int] = None,
                  max_frames: Optional[int] = None, reverse: bool = False) -> FrameStream:
        """Track the session's objects from ``start_frame`` (default: the first prompted frame), forward or
        ``reverse``; frames are yielded as they stream."""
        body = _drop_none({"start_frame": start_frame, "max_frames": max_frames, "reverse": reverse,
                           "mask_format": MASK_FORMAT})
        return self._stream(f"/v1/sessions/{_sid(session_id)}/propagate", json=body)

    def remove_object(self, session_id: Union[str, Session], track_id: str) -> dict:
        return self._request("DELETE", f"/v1/sessions/{_sid(session_id)}/objects/{track_id}").json()

    def delete_session(self, session_id: Union[str, Session]) -> dict:
        return self._request("DELETE", f"/v1/sessions/{_sid(session_id)}").json()

    def live(self, frames: Optional[Iterable[Any]] = None, prompts: Optional[dict] = None, wait: bool = True,
             frame_format: str = "png", denormalize_coord: bool = True, resize: bool = True) -> LiveStream:
        """Track objects in frames sent one by one over a WebSocket (a camera, a stream, a file read frame by
        frame): ``sam2_serve.client.live``. ``frames``: an iterable of images (numpy RGB, PIL, ``Image``, bytes,
        paths), sent as you iterate (``wait=True``: each once the previous is answered, none skipped) or as the
        source yields them (``wait=False``: the service tracks the newest, skipped ones are reported);
        ``prompts``: {frame index: regions}, sent right after that frame (``denormalize_coord``: their
        coordinates are fractions of W/H, else pixels). Without ``frames``, call ``send``. ``frame_format``: how
        arrays and PIL images travel, ``png`` (lossless) or ``jpeg`` (smaller); ``resize``: arrays and RGB images
        larger than the tracker's input are resized to it here, as the service would (same masks, fewer bytes)."""
        return LiveStream(self.url, self.api_key, frames, prompts, wait, frame_format, MASK_FORMAT, self.timeout,
                          self.connect_timeout, f"sam2-serve-client/{__version__}", denormalize_coord, resize)

    # ---- HTTP ------------------------------------------------------------------------------------------------

    def _stream(self, path: str, **kwargs: Any) -> FrameStream:
        return FrameStream(self._request("POST", path, stream=True, **kwargs))

    def _request(self, method: str, path: str, *, stream: bool = False, idempotent: bool = True,
                 retry: bool = True, **kwargs: Any) -> requests.Response:
        """One call with retries: a 503 always (the server ran nothing), a connection failure only when
        ``idempotent`` (a dropped connection may have run a non-idempotent call, e.g. created a session)."""
        retries = self.max_retries if retry else 0
        for attempt in range(retries + 1):
            last = attempt == retries
            try:
                r = self._http.request(method, self.url + path, stream=stream,
                                       timeout=(self.connect_timeout, self.timeout), **kwargs)
            except requests.exceptions.ConnectTimeout as exc:
                if last:
                    raise ConnectionFailed(f"could not connect to {self.url}: {exc}") from exc
                self._sleep(attempt, None)
                continue
            except requests.exceptions.Timeout as exc:
                raise RequestTimeout(f"{method} {path}: no answer within {self.timeout} s (Model(timeout=...)); "
                                     "the server may still have run it") from exc
            except requests.exceptions.ConnectionError as exc:
                if last or not idempotent:
                    raise ConnectionFailed(f"{method} {path}: could not reach {self.url}: {exc}") from exc
                self._sleep(attempt, None)
                continue
            if r.status_code in (429, 503) and not last:
                retry_after = _retry_after(r)
                r.close()
                self._sleep(attempt, retry_after)
                continue
            if r.status_code >= 400:
                raise _error(r)
            return r
        raise AssertionError("unreachable")

    def _sleep(self, attempt: int, retry_after: Optional[float]) -> None:
        backoff = min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)
        time.sleep(max(backoff, retry_after or 0.0))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Model({self.url!r}{', api_key=***' if self.api_key else ''})"


def _error(r: requests.Response) -> Sam2ServeError:
    """An error response -> the exception carrying the server's code, message and request id."""
    try:
        body = r.json().get("error") or {}
        if not isinstance(body, dict):
            body = {"message": str(body)}
    except (ValueError, AttributeError):
        body = {}
    finally:
        r.close()
    message = body.get("message") or (r.text[:500] if r.text else r.reason) or f"HTTP {r.status_code}"
    cls = (AuthenticationError if r.status_code in (401, 403) else ClientError if r.status_code < 500
           else ServiceUnavailable if r.status_code in (429, 503) else ServerError)
    if cls is ServiceUnavailable:
        message = f"{message} (still unavailable after retries; Model(max_retries=...))"
    return cls(message, status=r.status_code, code=body.get("code"), request_id=body.get("request_id"),
               retry_after_s=_retry_after(r))


def _retry_after(r: requests.Response) -> Optional[float]:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    value = r.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _frames(frames: Optional[list[Any]]) -> Optional[list[dict]]:
    if frames is None:
        return None
    if isinstance(frames, (Frame, dict)):
        frames = [frames]
    return [f.to_prompt() if isinstance(f, Frame) else dict(f) for f in frames]


def _sid(session: Union[str, Session]) -> str:
    sid = session.get("session_id") if isinstance(session, dict) else session
    if not isinstance(sid, str) or not sid:
        raise ValueError(f"not a session or session id: {session!r}")
    return sid


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}
