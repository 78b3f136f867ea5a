"""The OpenAPI document at ``/docs`` and ``/openapi.json``: FastAPI's, plus the request bodies that routes parse
themselves (JSON or multipart, see ``sam2_serve.http.bodies``), which FastAPI cannot see."""

from __future__ import annotations

from fastapi import FastAPI

from sam2_serve.common import schemas

BODY_MODELS: list[type] = [schemas.PredictRequest, schemas.EmbedRequest, schemas.SegmentAnythingRequest,
                           schemas.GenerateRequest, schemas.SessionCreateRequest, schemas.SessionPromptRequest,
                           schemas.PropagateRequest]


def body_doc(model: type, file_field: str | None = "image") -> dict:
    """OpenAPI of a route's body: ``model`` as JSON or, for a route taking a file, a multipart form with the file
    (``file_field``) and the other fields."""
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    if file_field is not None:
        content["multipart/form-data"] = {"schema": {"type": "object", "required": [file_field], "properties": {
            file_field: {"type": "string", "format": "binary"},
            "options": {"type": "string", "description": f"the other fields of {model.__name__} as a JSON object; "
                                                          "or send them as separate form fields"}}}}
    return {"requestBody": {"required": True, "content": content}}


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` add ``BODY_MODELS`` to FastAPI's components (computed once, on first request)."""
    fastapi_openapi = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = fastapi_openapi()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in BODY_MODELS:
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(js.pop("$defs", {}))
                components[model.__name__] = js
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
