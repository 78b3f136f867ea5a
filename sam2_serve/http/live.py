"""``WS /v1/live``: live video tracking over a WebSocket (messages: ``sam2_serve.common.live_schemas``).

One connection is one stream: authenticated (the ``Authorization: Bearer`` header of the upgrade request, or a
first ``{"type": "auth", "api_key": ...}`` message for browsers, which cannot set headers), then held by one tracker
replica until it closes. Two tasks per connection: a reader that only reads and queues (so that newer frames can
replace waiting ones while the tracker works), and a writer that answers the queue in order, the only sender.
Errors become ``{"type": "error", "error": {code, message, request_id}}`` with the codes and messages of the HTTP
API; the stream stays usable, except when the key is refused or the tracker lost the stream (the socket closes
after the error: codes 1008 and 1011).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Optional

from fastapi import FastAPI, WebSocket
from pydantic import TypeAdapter, ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from sam2_serve.common.errors import InvalidRequest, PayloadTooLarge, ServiceError, SessionGone, Unauthorized
from sam2_serve.common.live_schemas import LiveAuth, LiveClientMessage, LiveControl
from sam2_serve.common.schemas import MaskFormat, describe
from sam2_serve.http.guard import as_service_error, error_body
from sam2_serve.deployments.ray_internals import request_id
from sam2_serve.services.live import POLICY, Item, LiveQueue, LiveStream

logger = logging.getLogger("ray.serve")

AUTH_TIMEOUT_S = 10.0  # for the auth message, when the service has keys and the upgrade request had no header
POLICY_VIOLATION, INTERNAL_ERROR = 1008, 1011
_MESSAGES = TypeAdapter(LiveClientMessage)


def add_live_route(app: FastAPI) -> None:
    """Register ``WS /v1/live`` on the ingress's app (``app.state.ingress``)."""

    @app.websocket("/v1/live")
    async def live(websocket: WebSocket):
        await websocket.accept()
        ingress = websocket.app.state.ingress
        try:
            await _serve(websocket, ingress)
        except WebSocketDisconnect:
            pass
        finally:
            logger.info("live %s ended", request_id())


def _error(exc: BaseException, item: Optional[Item] = None) -> dict:
    """An error message (the HTTP API's code and message); internal errors are logged with the request id."""
    mapped = as_service_error(exc)
    body = (error_body(mapped.code, mapped.message) if mapped is not None else
            error_body("internal_error", "internal error; quote the request_id when reporting it"))
    if mapped is None:
        logger.error("live %s: a message failed", request_id(), exc_info=exc)
    return {"type": "error", **body, "index": item.index if item else None, "id": item.id if item else None}


async def _refuse(websocket: WebSocket, exc: ServiceError, code: int) -> None:
    await websocket.send_text(json.dumps(_error(exc)))
    await websocket.close(code, exc.code)


async def _authenticate(websocket: WebSocket, keys) -> bool:
    """The key from the upgrade request's header, or from a first ``auth`` message; False once refused."""
    header = websocket.headers.get("authorization")
    if not keys.enabled or header:
        try:
            keys.check(header)
            return True
        except Unauthorized as exc:
            await _refuse(websocket, exc, POLICY_VIOLATION)
            return False
    how = ("this API needs a key: send the header 'Authorization: Bearer <key>' with the upgrade request, or "
           "{\"type\": \"auth\", \"api_key\": \"<key>\"} as the first message")
    try:
        text = await asyncio.wait_for(websocket.receive_text(), AUTH_TIMEOUT_S)
        msg = _MESSAGES.validate_json(text)
    except (asyncio.TimeoutError, ValidationError, KeyError, RuntimeError):
        await _refuse(websocket, Unauthorized(how), POLICY_VIOLATION)
        return False
    try:
        if not isinstance(msg, LiveAuth):
            raise Unauthorized(how)
        keys.check(f"Bearer {msg.api_key}")
        return True
    except Unauthorized as exc:
        await _refuse(websocket, exc, POLICY_VIOLATION)
        return False


async def _serve(websocket: WebSocket, ingress) -> None:
    if not await _authenticate(websocket, ingress.api_keys):
        return
    fmt = websocket.query_params.get("mask_format", "png")
    if fmt not in {m.value for m in MaskFormat}:
        await _refuse(websocket, InvalidRequest(f"mask_format {fmt!r}: use 'png' or 'rle' (?mask_format=rle)"),
                      POLICY_VIOLATION)
        return
    lim = ingress.limits
    stream = LiveStream(ingress.video, lim, fmt, ingress.request_timeout_s)
    try:
        await stream.open()
    except Exception as exc:  # noqa: BLE001 -- said to the client, then closed
        await websocket.send_text(json.dumps(_error(exc)))
        await websocket.close(INTERNAL_ERROR)
        return
    queue = LiveQueue()
    try:
        await websocket.send_text(json.dumps({
            "type": "ready", "stream_id": stream.live_id, "mask_format": fmt, "policy": POLICY,
            "input_size": stream.image_size, "limits": {
            "max_frame_bytes": lim.max_image_bytes, "max_frame_pixels": lim.max_frame_pixels,
            "max_objects": lim.max_video_objects, "max_points": lim.max_points,
            "max_message_bytes": lim.max_body_bytes}}))
        writer = asyncio.create_task(_write(websocket, stream, queue))
        try:
            await _read(websocket, queue, lim, writer)
        finally:
            if not writer.done():
                writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
    finally:
        await stream.close()


async def _read(websocket: WebSocket, queue: LiveQueue, lim, writer: asyncio.Task) -> None:
    """Read and queue until the client leaves, sends ``close``, or the writer ends the stream."""
    receiving = None
    while True:
        receiving = asyncio.ensure_future(websocket.receive())
        done, _ = await asyncio.wait({receiving, writer}, return_when=asyncio.FIRST_COMPLETED)
        if receiving not in done:  # the writer closed the socket
            receiving.cancel()
            return
        message = receiving.result()
        if message["type"] == "websocket.disconnect":
            return
        data, text = message.get("bytes"), message.get("text")
        if data is not None:
            if len(data) > lim.max_image_bytes:
                index = queue.new_frame_index()
                item = Item("error", index, error=PayloadTooLarge(
                    f"frame {index} is {len(data)} bytes; the limit is {lim.max_image_bytes} bytes"))
            else:
                queue.put_frame(data)
                continue
        else:
            item = _parse(text or "", lim.max_body_bytes)
            if isinstance(item.data, LiveAuth):
                continue  # authenticated already (a browser sends its key whether or not it was needed)
        if not queue.put(item):
            await _refuse(websocket, InvalidRequest(
                f"{queue.max_waiting} messages are waiting for their answers; read the answers before sending more"),
                POLICY_VIOLATION)
            return
        if _is_close(item):
            await writer
            return


def _is_close(item: Item) -> bool:
    return isinstance(item.data, LiveControl) and item.data.type == "close"


def _parse(text: str, max_bytes: int) -> Item:
    if len(text) > max_bytes:
        return Item("error", error=PayloadTooLarge(f"the message is {len(text)} characters; the limit is "
                                                   f"{max_bytes}"))
    try:
        data = json.loads(text)
    except ValueError as exc:
        return Item("error", error=InvalidRequest(f"a text message must be JSON ({exc}); frames are binary messages"))
    msg_id = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), (str, int)) else None
    try:
        return Item("message", data=_MESSAGES.validate_python(data), id=msg_id)
    except ValidationError as exc:
        return Item("error", error=InvalidRequest(describe(exc.errors())), id=msg_id)


async def _write(websocket: WebSocket, stream: LiveStream, queue: LiveQueue) -> None:
    """Answer the queue in order; the only task that sends once the stream is ready."""
    while True:
        item = await queue.get()
        if _is_close(item):
            await websocket.send_text(json.dumps(stream.closed(item.data, queue)))
            await websocket.close(1000)
            return
        try:
            answer = await stream.answer(item)
        except SessionGone as exc:
            await _refuse(websocket, exc, INTERNAL_ERROR)
            return
        except Exception as exc:  # noqa: BLE001 -- one message failed; the stream goes on
            answer = _error(exc, item)
        if websocket.client_state != WebSocketState.CONNECTED:
            return
        await websocket.send_text(json.dumps(answer))
