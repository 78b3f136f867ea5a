"""The HTTP routes: thin. Each parses its body, calls a service of the ingress it was built for, writes the answer.

``build_http_app(ingress)`` is called once per ingress replica (``SAM2Ingress.__serve_build_asgi_app__``), so the
app is built where it serves and nothing is changed at import. Bodies: ``bodies``; auth, timeouts, errors:
``guard``; JSON answers: ``sam2_serve.common.wire``; OpenAPI: ``openapi``; the page at ``/``: ``web``; the live
WebSocket: ``live``.
"""

from __future__ import annotations

import asyncio
import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from sam2_serve import __version__
from sam2_serve.common import schemas
from sam2_serve.common.wire import encode_inline, frame_json, predict_json, segment_json
from sam2_serve.deployments.metrics import RequestMetrics
from sam2_serve.http.bodies import image_request, video_request
from sam2_serve.http.guard import GuardedRoute, install_error_handlers, stream_error_line
from sam2_serve.http.live import add_live_route
from sam2_serve.http.openapi import body_doc, docs_app, install_openapi
from sam2_serve.http.web import add_web_routes

def build_http_app(ingress) -> FastAPI:
    """The FastAPI app of one ``SAM2Ingress`` replica."""
    app = docs_app(  # FastAPI, with /docs and /redoc served from local files (no CDN)
        title="sam2-serve", version=__version__,
        description="SAM 2.1 served: prompted masks (predict), automatic masks (segment_anything), video tracking.",
        responses={code: {"model": schemas.ErrorResponse} for code in (400, 404, 413, 422)})
    app.state.ingress = ingress
    app.state.request_metrics = RequestMetrics()  # counted by GuardedRoute
    app.router.route_class = GuardedRoute
    install_error_handlers(app)
    install_openapi(app)
    max_body = ingress.limits.max_body_bytes

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models", response_model=list[schemas.ModelInfo])
    async def models():
        return await ingress.models()

    @app.post("/v1/predict", response_model=schemas.PredictResponse, openapi_extra=body_doc(schemas.PredictRequest))
    async def predict(request: Request):
        req, image, image_id = await image_request(request, schemas.PredictRequest, max_body)
        out = await ingress.images.predict(image, image_id, req, with_logits=False)
        args = (out.image_id, out.width, out.height, out.predictions, req.mask_format.value)
        if encode_inline(out.width * out.height * sum(len(p.masks) for p in out.predictions)):
            return JSONResponse(predict_json(*args))
        return JSONResponse(await asyncio.to_thread(predict_json, *args))

    @app.post("/v1/segment_anything", response_model=schemas.SegmentAnythingResponse,
              openapi_extra=body_doc(schemas.SegmentAnythingRequest))
    async def segment_anything(request: Request):
        req, image, image_id = await image_request(request, schemas.SegmentAnythingRequest, max_body)
        result = await ingress.segmenter.segment(image, image_id, req)
        return JSONResponse(await asyncio.to_thread(segment_json, result, req.mask_format.value))

    @app.post("/v1/embed", response_model=schemas.EmbedResponse, openapi_extra=body_doc(schemas.EmbedRequest))
    async def embed(request: Request):
        _, image, image_id = await image_request(request, schemas.EmbedRequest, max_body)
        return await ingress.images.embed(image, image_id)

    @app.post("/v1/generate", response_class=StreamingResponse,
              openapi_extra=body_doc(schemas.GenerateRequest, "video"),
              responses={200: {"content": {"application/x-ndjson": {"schema": {
                  "$ref": "#/components/schemas/FrameOut"}}},  # a $ref: inline $defs would dangle in the document
                               "description": "One JSON object per tracked frame, in order."}})
    async def generate(request: Request):
        req, video = await video_request(request, schemas.GenerateRequest, max_body)
        return await ndjson_response(await ingress.video.generate(video, req), req.mask_format.value)

    @app.post("/v1/sessions", response_model=schemas.SessionOut,
              openapi_extra=body_doc(schemas.SessionCreateRequest, "video"))
    async def create_session(request: Request):
        req, video = await video_request(request, schemas.SessionCreateRequest, max_body)
        return await ingress.video.create_session(video, req.ttl_s)

    @app.get("/v1/sessions/{session_id}")
    async def session_info(session_id: str):
        return await ingress.video.call(session_id, "session_info")

    @app.post("/v1/sessions/{session_id}/prompts", response_model=schemas.FrameOut,
              openapi_extra=body_doc(schemas.SessionPromptRequest, None))
    async def session_prompts(session_id: str, request: Request):
        req, _ = await video_request(request, schemas.SessionPromptRequest, max_body)
        frame = await ingress.video.add_prompts(session_id, req)
        return JSONResponse(await asyncio.to_thread(frame_json, frame, req.mask_format.value))

    @app.post("/v1/sessions/{session_id}/propagate", response_class=StreamingResponse,
              openapi_extra=body_doc(schemas.PropagateRequest, None))
    async def session_propagate(session_id: str, request: Request):
        req, _ = await video_request(request, schemas.PropagateRequest, max_body, need_video=False)
        frames = ingress.video.propagate(session_id, req.start_frame, req.max_frames, req.reverse)
        return await ndjson_response(frames, req.mask_format.value)

    @app.delete("/v1/sessions/{session_id}/objects/{track_id}")
    async def remove_object(session_id: str, track_id: str):
        return await ingress.video.call(session_id, "remove_object", track_id)

    @app.delete("/v1/sessions/{session_id}")
    async def delete_session(session_id: str):
        return await ingress.video.call(session_id, "delete_session")

    add_live_route(app)  # WS /v1/live: its own auth (header or first message), errors as messages
    add_web_routes(app)  # public; the /v1 API it calls keeps its auth
    return app


async def ndjson_response(frames, mask_format: str) -> StreamingResponse:
    """A tracker stream as NDJSON, one frame a line. Errors before the first frame keep their HTTP status; after
    it, the stream ends with an ``{"error": ...}`` line. The tracker's work stops when the client goes away."""
    try:
        first = await frames.__anext__()
    except StopAsyncIteration:
        return StreamingResponse(iter(()), media_type="application/x-ndjson")
    except BaseException:
        frames.cancel()
        raise

    async def lines():
        try:
            yield json.dumps(await asyncio.to_thread(frame_json, first, mask_format)) + "\n"
            async for frame in frames:
                yield json.dumps(await asyncio.to_thread(frame_json, frame, mask_format)) + "\n"
        except Exception as exc:
            yield json.dumps(stream_error_line(exc)) + "\n"
        finally:
            frames.cancel()

    return StreamingResponse(lines(), media_type="application/x-ndjson")
