"""Request bodies: a JSON object, or a multipart form with the image/video as a file (``curl -F image=@x.jpg``).

Bodies are read once, refused with 413 as soon as they pass the limit (declared or streamed), and turned into the
request schema (``sam2_serve.common.schemas``) plus the uploaded bytes; every mistake is a 4xx naming the field.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Optional

from starlette.requests import Request

from sam2_serve.common.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from sam2_serve.common.images import b64decode
from sam2_serve.common.schemas import parse
from sam2_serve.common.videos import b64decode_video


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it is over ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is {declared} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # lets request.form() parse what was already read
    request.state.body_bytes = size
    return body


async def body_fields(request: Request, file_field: str, max_fields: int, max_body_bytes: int):
    """A JSON object or a multipart form -> (fields or None for an empty body, uploaded file bytes, multipart?).

    Multipart text fields are JSON-decoded where they parse (``regions``, booleans); ``options`` may carry the
    other fields as one JSON object; the file comes from the ``file_field`` part.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, max_body_bytes)
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=max_fields)
        fields: dict[str, Any] = {}
        upload = None
        for key, value in form.multi_items():
            if key == file_field and hasattr(value, "read"):
                upload = await value.read()
            elif key == "options":
                fields.update(json_field(key, value, dict))
            elif key == "image_id" and file_field == "image":
                fields["image"] = {"image_id": value}
            else:
                fields[key] = value if key == "mask_format" else json_field(key, value)
        return fields, upload, True
    if ctype not in ("application/json", ""):
        raise UnsupportedMediaType(f"content-type {ctype!r} is not accepted; send application/json "
                                   "or multipart/form-data")
    if not body:
        return None, None, False
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"the body is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object with the fields of the request")
    return data, None, False


def json_field(key: str, value: Any, expect: type | None = None):
    """A multipart text field: JSON when it parses (``regions``, booleans), else the string itself."""
    if hasattr(value, "read"):
        raise InvalidRequest(f"form field {key!r} must be text, not a file")
    try:
        parsed = json.loads(value)
    except ValueError:
        if expect is not None:
            raise InvalidRequest(f"form field {key!r} must be a JSON object") from None
        return value
    if expect is not None and not isinstance(parsed, expect):
        raise InvalidRequest(f"form field {key!r} must be a JSON object")
    return parsed


async def image_request(request: Request, model: type, max_body_bytes: int):
    """An image request -> (validated ``model``, image bytes or None, image_id or None): exactly one of the two."""
    fields, upload, multipart = await body_fields(request, "image", 16, max_body_bytes)
    if fields is None:
        raise InvalidRequest("the request body is empty; send a JSON object")
    if multipart:
        if upload is None and "image" not in fields:
            raise InvalidRequest("multipart requests need an 'image' file field (curl -F image=@photo.jpg)")
        if upload is not None:
            fields["image"] = {"image_id": "upload"}  # placeholder satisfying the schema; the file wins
    req = parse(model, fields)
    if upload is not None:
        return req, upload, None
    if req.image.base64 is not None:
        return req, b64decode(req.image.base64), None
    return req, None, req.image.image_id


async def video_request(request: Request, model: type, max_body_bytes: int, need_video: bool = True):
    """JSON (``video.base64``) or multipart (a ``video`` file plus JSON-valued fields) -> (request, bytes or None)."""
    fields, upload, multipart = await body_fields(request, "video", 32, max_body_bytes)
    if fields is None:
        if not need_video:
            return parse(model, {}), None
        raise InvalidRequest("the request body is empty; send a JSON object")
    if multipart:
        if upload is None and need_video:
            raise InvalidRequest("multipart requests need a 'video' file field (curl -F video=@clip.mp4)")
        if upload is not None:
            fields["video"] = {"base64": ""}  # placeholder satisfying the schema; the file wins
        return parse(model, fields), upload
    req = parse(model, fields)
    video: Optional[Any] = getattr(req, "video", None)
    return req, (await asyncio.to_thread(b64decode_video, video.base64) if video is not None else None)
