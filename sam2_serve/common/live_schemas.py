"""The messages of the live WebSocket, ``WS /v1/live`` (their own module: ``schemas`` holds the HTTP bodies).

Client -> server: **binary** messages are frames (one encoded image each: JPEG, PNG, WebP, ...; the service numbers
them 0, 1, 2, ... in arrival order, skipped ones included); **text** messages are JSON, one of ``LiveClientMessage``
(``type``: ``auth``, ``prompt``, ``remove``, ``reset``, ``close``, ``frame_size``). Server -> client: JSON text, one
of the ``Live*Out`` schemas below (``type``: ``ready``, ``frame``, ``prompt``, ``removed``, ``reset``, ``frame_size``,
``closed``, ``error``), in the order of the messages they answer.

Backpressure (latest frame wins): while the tracker works on a frame, one more frame may wait; a newer frame
arriving replaces it. A replaced frame is never decoded nor tracked, and the next frame answered lists it in
``skipped``. Control messages are never dropped and keep their place: a frame followed by a control message is
always processed before it (so a prompt sent right after frame ``k`` applies to frame ``k``).

Coordinates as over HTTP: fractions of the frame's width (x) and height (y) unless ``denormalize_coord`` is false.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, Field

from sam2_serve.common.schemas import ErrorBody, FrameOut, MaskFormat, Strict, VideoRegion, WholeInt

MessageId = Optional[Union[Annotated[str, Field(max_length=128)], int]]
_ID = Field(None, description="Any id of the client's; echoed in this message's answer (or error).")


class LiveAuth(Strict):
    """The API key, for clients that cannot set the ``Authorization`` header on the upgrade request (browsers).
    Needed as the first message only when the service has API keys and the header was not sent."""

    type: Literal["auth"]
    api_key: str = Field(max_length=4096)


class LivePrompt(Strict):
    """Prompts on the latest frame answered (or being answered): regions with a new ``track_id`` start objects
    there, a known ``track_id`` is corrected (points add to its points on that frame unless
    ``clear_old_points``; a box replaces them). Answered by a ``prompt`` message with that frame's masks."""

    type: Literal["prompt"]
    id: MessageId = _ID
    regions: list[VideoRegion] = Field(min_length=1)
    index: Optional[WholeInt] = Field(None, ge=0, description="The frame meant; refused when the latest frame is "
                                      "another one (it was skipped, or later frames were tracked meanwhile).")
    clear_old_points: bool = True
    denormalize_coord: bool = True


class LiveRemove(Strict):
    """Stop tracking an object (upstream ``remove_object``). Answered by ``removed``."""

    type: Literal["remove"]
    id: MessageId = _ID
    track_id: str = Field(min_length=1, max_length=128)


class LiveControl(Strict):
    """``reset``: forget every object and all memory; the next frame starts afresh (it may have another size).
    ``close``: end the stream, answered by ``closed`` (with counts), then the socket closes (code 1000)."""

    type: Literal["reset", "close"]
    id: MessageId = _ID


class LiveFrameSize(Strict):
    """The size of the frames that follow, for a client that sends them already resized to the tracker's input
    (``input_size`` x ``input_size`` of ``ready``) by ``sam2_serve.common.images.resize_square``: the resize the
    service would do (sam2's frame loader: PIL's default filter, aspect ratio not kept), so the masks are the same;
    a 960x540 frame at input size 256 travels as 89 kB instead of 400 kB and is not decoded twice. Frames of exactly
    the input size are then taken as resized from ``width`` x ``height`` (masks come back at that size); frames of
    any other size are taken as they are. Holds for the connection, across ``reset``, until another ``frame_size``.
    Answered by ``frame_size``."""

    type: Literal["frame_size"]
    id: MessageId = _ID
    width: WholeInt = Field(ge=1, le=1 << 16, description="The frames' own width, in pixels.")
    height: WholeInt = Field(ge=1, le=1 << 16, description="The frames' own height, in pixels.")


LiveClientMessage = Annotated[Union[LiveAuth, LivePrompt, LiveRemove, LiveControl, LiveFrameSize],
                              Field(discriminator="type")]


# ---- server -> client ------------------------------------------------------------------------------------------

class LiveReadyOut(BaseModel):
    """Sent once authenticated and the tracker holds the stream: send frames from now on."""

    type: Literal["ready"]
    stream_id: str = Field(description="The stream's id (for logs and support; the connection is the stream).")
    mask_format: MaskFormat
    policy: str = Field(description="What happens to frames sent faster than they are tracked.")
    input_size: int = Field(description="The tracker's input size S: frames are resized to S x S for the model "
                            "(a client may send them at that size, after ``frame_size``).")
    limits: dict = Field(description="max_frame_bytes, max_frame_pixels, max_objects, max_points, "
                         "max_message_bytes (text)")


class LiveFrameOut(FrameOut):
    """A frame's masks: ``type`` ``frame`` for a pushed frame, ``prompt`` for the answer to a prompt (the latest
    frame again, with the prompt applied). ``time``: seconds since the stream's first frame arrived."""

    type: Literal["frame", "prompt"]
    skipped: list[int] = Field(default_factory=list, description="Frames dropped (latest frame wins) since the "
                               "previous frame answered.")
    id: MessageId = None


class LiveRemovedOut(BaseModel):
    type: Literal["removed"]
    id: MessageId = None
    track_id: str
    track_ids: list[str] = Field(description="The objects still tracked.")


class LiveResetOut(BaseModel):
    type: Literal["reset"]
    id: MessageId = None


class LiveFrameSizeOut(BaseModel):
    type: Literal["frame_size"]
    id: MessageId = None
    width: int
    height: int


class LiveClosedOut(BaseModel):
    type: Literal["closed"]
    id: MessageId = None
    frames_received: int
    frames_tracked: int
    frames_skipped: int


class LiveErrorOut(BaseModel):
    """A message that could not be served; the stream stays usable (unless the socket is closed right after:
    a refused key, a stream the service lost). ``index``: the frame it was about, ``id``: the message's id."""

    type: Literal["error"]
    error: ErrorBody
    index: Optional[int] = None
    id: MessageId = None
