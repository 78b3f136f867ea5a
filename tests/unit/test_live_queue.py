"""sam2_serve.services.live: LiveQueue (arrival order, latest frame wins, skipped frames carried, the bound), and the
pixels LiveStream sends the tracker, from whole frames or from frames the client resized (``frame_size``)."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from sam2_serve.client.live import encode_frame, prepare_frame
from sam2_serve.common.errors import PayloadTooLarge
from sam2_serve.common.images import resize_square
from sam2_serve.common.limits import Limits
from sam2_serve.common.live_schemas import LiveFrameSize
from sam2_serve.common.png import png_bytes
from sam2_serve.services.live import Item, LiveQueue, LiveStream


def _drain(q: LiveQueue) -> list[Item]:
    async def go():
        return [await q.get() for _ in range(len(q))]

    return asyncio.run(go())


def test_a_waiting_frame_is_replaced_by_the_next_and_reported():
    q = LiveQueue()
    assert q.put_frame(b"0") is None
    assert q.put_frame(b"1") == 0          # frame 0 had not started: replaced
    assert q.put_frame(b"2") == 1
    assert q.put(Item("message", data="prompt"))
    assert q.put_frame(b"3") is None       # after a message: frame 2 keeps its place, before the message
    assert q.put_frame(b"4") == 3
    items = _drain(q)
    assert [(i.kind, i.index, i.skipped) for i in items] == [
        ("frame", 2, [0, 1]), ("message", None, []), ("frame", 4, [3])]
    assert [i.data for i in items] == [b"2", "prompt", b"4"]
    assert (q.frames_received, q.frames_skipped) == (5, 3)


def test_frames_taken_are_not_replaced_and_refused_frames_count():
    q = LiveQueue()
    q.put_frame(b"0")
    (first,) = _drain(q)                   # the writer took frame 0: it is being tracked
    assert q.put_frame(b"1") is None and first.index == 0
    assert q.new_frame_index() == 2        # a frame refused on arrival still takes its number
    assert q.put_frame(b"3") == 1


def test_bounded_and_get_waits_for_an_item():
    q = LiveQueue(max_waiting=2)
    assert q.put(Item("message", data=1)) and q.put(Item("message", data=2))
    assert not q.put(Item("message", data=3))

    async def later():
        empty = LiveQueue()
        getter = asyncio.ensure_future(empty.get())
        await asyncio.sleep(0)
        assert not getter.done()
        empty.put_frame(b"x")
        return (await getter).data

    assert asyncio.run(later()) == b"x"


def test_frames_larger_than_the_models_input_go_to_the_tracker_resized():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (54, 96, 3), dtype=np.uint8)
    stream = LiveStream(None, Limits(max_frame_pixels=54 * 96))
    stream.image_size = 32  # as the tracker's live_open tells it
    pixels, size = stream._pixels(png_bytes(frame))
    assert size == (96, 54) and np.array_equal(pixels, resize_square(frame, 32))
    stream.image_size = 72  # 72 x 72 > 96 x 54: the frame as it is, fewer bytes
    pixels, size = stream._pixels(png_bytes(frame))
    assert size is None and np.array_equal(pixels, frame)
    with pytest.raises(PayloadTooLarge, match="pixels"):
        LiveStream(None, Limits(max_frame_pixels=54 * 96 - 1))._pixels(png_bytes(frame))


def test_frames_resized_by_the_client_after_frame_size_go_to_the_tracker_as_the_service_resizes():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (54, 96, 3), dtype=np.uint8)
    stream = LiveStream(None, Limits(max_frame_pixels=54 * 96))
    stream.image_size = 32
    data, size = prepare_frame(frame, "png", 32)  # what model.live sends
    assert size == (96, 54)
    declare = LiveFrameSize(type="frame_size", id="s", width=96, height=54)
    answer = asyncio.run(stream.answer(Item("message", data=declare, id="s")))
    assert answer == {"type": "frame_size", "id": "s", "width": 96, "height": 54}
    sent, sent_size = stream._pixels(data)
    served, served_size = stream._pixels(png_bytes(frame))  # the whole frame, resized by the service
    assert sent_size == served_size == (96, 54) and np.array_equal(sent, served)
    other = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)  # neither the declared size nor the input's: as is
    pixels, size = stream._pixels(png_bytes(other))
    assert size is None and np.array_equal(pixels, other)
    with pytest.raises(PayloadTooLarge, match="97x54 = 5238 pixels; the limit is 5184"):
        asyncio.run(stream.answer(Item("message", data=LiveFrameSize(type="frame_size", width=97, height=54))))
    assert stream.frame_size == (96, 54)  # a refused declaration changes nothing


def test_the_client_resizes_only_rgb_frames_larger_than_the_input():
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (54, 96, 3), dtype=np.uint8)
    assert prepare_frame(frame, "png", 72) == (encode_frame(frame), None)  # 72 x 72 > 96 x 54
    assert prepare_frame(frame, "png", None) == (encode_frame(frame), None)  # resize=False
    for fmt in ("png", "jpeg"):  # an RGB PIL image no larger than the input: as encode_frame sends it
        assert prepare_frame(Image.fromarray(frame), fmt, 72) == (encode_frame(Image.fromarray(frame), fmt), None)
    grey = Image.fromarray(frame).convert("L")  # the service converts other modes first: sent as they are
    assert prepare_frame(grey, "png", 32) == (encode_frame(grey), None)
    data, size = prepare_frame(Image.fromarray(frame), "jpeg", 32)
    assert size == (96, 54) and Image.open(io.BytesIO(data)).size == (32, 32)


def test_the_client_encodes_arrays_as_it_encodes_their_pil_images():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (54, 96, 3), dtype=np.uint8)
    for pixels in (rgb, rgb[:, :, 1], np.asfortranarray(rgb), rgb[::2, ::3]):
        data = encode_frame(pixels)
        assert data == encode_frame(Image.fromarray(np.ascontiguousarray(pixels)))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)
